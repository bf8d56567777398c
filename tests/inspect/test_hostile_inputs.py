"""Inputs never stop a run: odd pixel types, huge or cut files, links and folders, a busy or impossible --out, Ctrl-C.

Every hostile file is made here from raw bytes or with OpenCV, and goes through the real batch run, hot folder or
video source with the brightness model (a real ONNX file that runs in milliseconds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.cli import main
from crackscope.inspect.batch import BatchConfig, find_inputs, run_batch
from crackscope.inspect.daemon import DaemonConfig, run_daemon
from crackscope.inspect.headers import read_header
from crackscope.inspect.images import ImageReadError, load_frame
from crackscope.inspect.runs import LOCK_NAME, OutputError, OutputLock
from crackscope.inspect.sinks import ResultStore
from crackscope.inspect.sources import Backoff, HotFolderConfig, HotFolderSource, SourceOptions, open_source
from crackscope.training.synthetic import make_frame, write_video

SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def _tiff(pixels: np.ndarray, *, size: tuple[int, int] | None = None, compression: int = 1) -> bytes:
    """A little-endian grey TIFF of ``pixels`` in one strip, built by hand (any numpy type, as scientific software
    writes them); ``size`` overrides the width and height the header claims."""
    height, width = pixels.shape
    width, height = size or (width, height)
    strip = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    bits, sample_format = pixels.dtype.itemsize * 8, SAMPLE_FORMAT[pixels.dtype.kind]
    tags = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, compression),
        (262, 3, 1),  # min-is-black
        (273, 4, 0),  # strip offset, filled in below
        (277, 3, 1),
        (278, 4, height),
        (279, 4, len(strip)),
        (339, 3, sample_format),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_at = 8 + ifd_size
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = data_at if tag == 273 else value
        field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)  # a SHORT fills half of it
        ifd += struct.pack("<HHI", tag, kind, 1) + field
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def _grey_png(path: Path, level: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), level, np.uint8))
    return path


def _records(out: Path) -> dict[str, object]:
    with ResultStore(out) as store:
        assert store.integrity() == "ok"
        return {Path(r.source).name: r for r in store.records()}


def _config(inputs: Path, model: Path, out: Path, **overrides) -> BatchConfig:
    return BatchConfig(inputs=(str(inputs),), model=str(model), out=str(out), progress=False, **overrides)


# --- pixel types ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.array([[0.0, 0.5], [1.0, 0.2]], np.float32), np.array([[0, 128], [255, 51]], np.uint8)),  # [0, 1]: x255
        (np.array([[-5.0, 0.0], [295.0, 45.0]], np.float64), np.array([[0, 4], [255, 43]], np.uint8)),  # min-max
        (np.array([[-300, 0], [1000, 65]], np.int16), np.array([[0, 0], [1000, 65]], np.uint16)),  # clip below 0
        (np.array([[-100, 0], [127, 5]], np.int8), np.array([[0, 0], [127, 5]], np.uint8)),
        (np.array([[7, 7], [7, 7]], np.float32) * 100, np.zeros((2, 2), np.uint8)),  # flat, outside [0, 1]: black
    ],
)
def test_float_and_signed_pixels_are_converted_by_the_documented_rule(pixels, expected, tmp_path):
    path = tmp_path / f"{pixels.dtype}.tif"
    path.write_bytes(_tiff(pixels))
    image = load_frame(path).image
    assert image.dtype == expected.dtype and np.array_equal(image, expected)


def test_opencv_written_float_and_signed_tiffs_load_as_8_or_16_bit(tmp_path):
    for dtype in (np.float32, np.float64, np.int16, np.int8):
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        assert cv2.imwrite(str(path), (np.arange(64 * 48).reshape(48, 64) % 100).astype(dtype))
        assert load_frame(path).image.dtype in (np.uint8, np.uint16)


def test_nan_pixels_and_unsupported_types_are_refused_with_the_reason(tmp_path):
    nan = np.ones((4, 4), np.float32)
    nan[1, 2] = np.nan
    (tmp_path / "nan.tif").write_bytes(_tiff(nan))
    with pytest.raises(ImageReadError, match="1 float32 pixel\\(s\\) are NaN or infinite"):
        load_frame(tmp_path / "nan.tif")


# --- headers, sizes, completeness -----------------------------------------------------------------------------------

FORMATS = [".jpg", ".png", ".tif", ".bmp", ".webp", ".ppm", ".pgm", ".pam", ".pfm", ".ras", ".hdr", ".jp2", ".avif"]


@pytest.mark.parametrize("ext", FORMATS)
def test_the_header_gives_the_size_of_every_format_opencv_reads(ext):
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    image = image.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else image
    try:
        ok, data = cv2.imencode(ext, image[:, :, 0] if ext == ".pgm" else image)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV build writes no {ext}")
    header = read_header(data.tobytes())
    assert header is not None and header.size == (53, 37) and header.incomplete is None


def test_a_small_tiff_claiming_20000_px_square_is_refused_from_its_header_before_decoding(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(_tiff(np.zeros((64, 64), np.uint8), size=(20000, 20000), compression=5))  # LZW, as in the issue
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="20000x20000 px, over the limit of 100,000,000 pixels"):
        load_frame(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 100  # decoding would have taken 400 MB before failing


@pytest.mark.parametrize("ext", [".tif", ".webp", ".bmp", ".jpg", ".png"])
def test_files_cut_short_are_refused_as_incomplete(ext, tmp_path):
    _, data = cv2.imencode(ext, np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data.tobytes()[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated") as caught:
        load_frame(path)
    assert caught.value.incomplete


def test_a_jpeg_with_bytes_after_its_end_marker_is_read_but_a_cut_one_with_a_thumbnail_is_not(tmp_path):
    _, data = cv2.imencode(".jpg", make_frame(96, 128, 1, n_cracks=1)[0])
    raw = data.tobytes()
    (tmp_path / "tail.jpg").write_bytes(raw + bytes(range(70)))
    assert load_frame(tmp_path / "tail.jpg").image.shape == (96, 128, 3)
    _, thumb = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))  # an EXIF-style thumbnail has its own end marker
    app1 = b"Exif\x00\x00" + thumb.tobytes()
    with_thumb = raw[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + raw[2:]
    (tmp_path / "cut.jpg").write_bytes(with_thumb[: len(with_thumb) - len(raw) // 3])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        load_frame(tmp_path / "cut.jpg")


# --- batch runs -----------------------------------------------------------------------------------------------------


def test_a_batch_of_hostile_files_records_each_and_inspects_its_neighbours(brightness_model, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        _grey_png(folder / f"good{i}.png", 100, size=300)  # 300 px: each input is a model batch of its own
    rng = np.random.default_rng(2)
    (folder / "float32.tif").write_bytes(_tiff(rng.random((300, 300)).astype(np.float32)))
    (folder / "float64.tif").write_bytes(_tiff(rng.normal(0, 50, (300, 300))))
    (folder / "int16.tif").write_bytes(_tiff(rng.integers(-100, 4000, (300, 300)).astype(np.int16)))
    (folder / "int8.tif").write_bytes(_tiff(rng.integers(-100, 100, (300, 300)).astype(np.int8)))
    (folder / "nan.tif").write_bytes(_tiff(np.full((300, 300), np.nan, np.float32)))
    (folder / "huge.tif").write_bytes(_tiff(np.zeros((8, 8), np.uint8), size=(20000, 20000), compression=5))
    _, jpeg = cv2.imencode(".jpg", np.full((300, 300, 3), 90, np.uint8))
    (folder / "tail.jpg").write_bytes(jpeg.tobytes() + b"x" * 70)
    summary = run_batch(_config(folder, brightness_model, tmp_path / "out", save_overlays="all"))
    assert summary.exit_code == 0 and summary.inspected == 10 and summary.report.is_file()
    records = _records(tmp_path / "out")
    errors = {name: r.error for name, r in records.items() if r.verdict.value == "ERROR"}
    assert set(errors) == {"nan.tif", "huge.tif"}
    assert "NaN" in errors["nan.tif"] and "20000x20000" in errors["huge.tif"]
    assert all(records[f"good{i}.png"].verdict.value == "OK" for i in range(3))


def test_the_results_folder_inside_an_input_folder_is_not_inspected_on_the_next_run(brightness_model, tmp_path):
    folder = tmp_path / "in"
    for i in range(3):
        _grey_png(folder / f"part{i}.png", 150 + i)  # DEFECT under the brightness model: overlays are saved
    out = folder / "results"
    run_batch(_config(folder, brightness_model, out))
    again = run_batch(_config(folder, brightness_model, out))
    assert len(_records(out)) == 3 and list((out / "review").glob("*.overlay.jpg"))
    assert (again.inspected, again.skipped) == (0, 3)
    assert [(e.path.name, e.reason) for e in again.skipped_entries] == [
        ("results", "the results folder (--out) is not an input")
    ]
    _grey_png(out / "extra.png", 100)
    inside = run_batch(_config(out, brightness_model, out))  # inspecting the results folder itself: not its review/
    assert inside.inspected == 1 and [e.path.name for e in inside.skipped_entries] == ["review"]


def test_broken_links_loops_and_a_folder_named_like_an_image_are_counted_and_listed(brightness_model, tmp_path, caplog):
    folder = tmp_path / "in"
    _grey_png(folder / "x.jpg" / "inside.png", 100)  # a folder named like an image: listed, and still searched
    _grey_png(folder / "real.png", 100)
    (folder / "gone.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "parent").symlink_to(folder)
    (folder / "alias.png").symlink_to(folder / "real.png")  # a link to a file is an input (the same one, once)
    os.mkfifo(folder / "pipe.png")  # reading it would block the run forever
    found = find_inputs([str(folder)])
    assert [p.name for p in found.files] == ["real.png", "inside.png"]
    reasons = {e.path.name: e.reason for e in found.skipped}
    assert reasons == {
        "x.jpg": "a folder with an image's name (its contents are searched)",
        "gone.jpg": "dangling symbolic link (its target does not exist)",
        "loop.jpg": "symbolic link loop",
        "parent": "symbolic link to a folder (not followed)",
        "pipe.png": "not a regular file (a pipe, socket or device)",
    }
    with caplog.at_level(logging.WARNING, logger="crackscope"):
        summary = run_batch(_config(folder, brightness_model, tmp_path / "out"))
    assert summary.inspected == 2 and len(summary.skipped_entries) == 5
    assert "skipped 5 entr(ies) that are not inputs:" in summary.describe()
    assert all(name in summary.describe() for name in reasons)
    logged = [r.getMessage() for r in caplog.records if "not inspected" in r.getMessage()]
    assert len(logged) == 5


def test_fail_on_error_exits_3_when_an_input_is_only_an_error_record(brightness_model, tmp_path, capsys):
    folder = tmp_path / "in"
    _grey_png(folder / "good.png", 100)
    (folder / "empty.jpg").write_bytes(b"")
    base = ["inspect", str(folder), "--model", str(brightness_model), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--fail-on", "defect"]) == 0
    assert main([*base, "--fail-on", "error"]) == 3
    assert main([*base, "--fail-on", "defect,error"]) == 3
    assert "an input has a verdict of --fail-on error" in capsys.readouterr().out
    assert main([*base, "--fail-on", "sometimes"]) == 2
    err = capsys.readouterr().err
    assert "fail_on must be defect, review, error or several joined by commas" in err and "Traceback" not in err


# --- the output folder ----------------------------------------------------------------------------------------------


def test_an_out_under_a_regular_file_is_one_line_and_exit_2_for_inspect_and_daemon(brightness_model, tmp_path, capsys):
    _grey_png(tmp_path / "in" / "a.png", 100)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    for out in (blocker / "run", blocker):
        inspect = ["inspect", str(tmp_path / "in"), "--model", str(brightness_model), "--out", str(out)]
        daemon = ["daemon", "--source", str(tmp_path / "in"), "--model", str(brightness_model), "--out", str(out)]
        for args in (inspect, daemon):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert "is a file, so no folder can be made under it" in err or "exists and is not a folder" in err
    assert blocker.read_text() == "a file, not a folder"


def test_a_second_writer_is_refused_with_one_line_and_the_lock_goes_with_the_run(brightness_model, tmp_path, capsys):
    _grey_png(tmp_path / "in" / "a.png", 100)
    out = tmp_path / "out"
    inspect = ["inspect", str(tmp_path / "in"), "--model", str(brightness_model), "--out", str(out), "--no-progress"]
    daemon = ["daemon", "--source", str(tmp_path / "in"), "--model", str(brightness_model), "--out", str(out)]
    with OutputLock(out):
        for args in (inspect, daemon):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
            assert f"is in use by another crackscope run (pid {os.getpid()} on " in err
        assert not (out / "results.sqlite").exists()
    assert not (out / LOCK_NAME).exists()
    assert main(inspect) == 0 and not (out / LOCK_NAME).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom crackscope.inspect.runs import OutputLock\n"
            f"OutputLock({str(out)!r}).__enter__()\nprint('locked', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"pid {holder.pid} on "):
            OutputLock(out).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid} " in (out / LOCK_NAME).read_text()  # left behind by kill -9
    with caplog.at_level(logging.WARNING, logger="crackscope"), OutputLock(out):
        assert f"pid {os.getpid()} " in (out / LOCK_NAME).read_text()
    assert any(f"taking over the lock left by pid {holder.pid}" in r.getMessage() for r in caplog.records)


# --- Ctrl-C ---------------------------------------------------------------------------------------------------------


def _row_count(out: Path) -> int:
    try:
        with sqlite3.connect(out / "results.sqlite", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_ctrl_c_finishes_the_batch_in_flight_and_exits_130_without_a_traceback(brightness_model, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    for i in range(400):
        _grey_png(folder / f"p{i:03d}.png", i % 200, size=32)
    command = [sys.executable, "-m", "crackscope.cli", "inspect", str(folder), "--model", str(brightness_model)]
    command += ["--out", str(out), "--no-progress", "--batch-size", "1", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while process.poll() is None and _row_count(out) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "SIGINT: finishing the batch in flight" in stderr
    assert "stopped by SIGINT" in stdout
    stored = _row_count(out)
    assert 5 <= stored < 400 and len((out / "results.jsonl").read_text().splitlines()) == stored
    assert (out / "report.html").is_file() and not (out / LOCK_NAME).exists()
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    assert _row_count(out) == 400


# --- hot folders ----------------------------------------------------------------------------------------------------


def _jpeg_bytes(seed: int) -> bytes:
    _, data = cv2.imencode(".jpg", make_frame(96, 128, seed, n_cracks=1)[0])
    return data.tobytes()


def test_a_hot_folder_writer_that_pauses_2_s_mid_file_gets_the_finished_file_inspected(tmp_path):
    data = _jpeg_bytes(5)
    target = tmp_path / "paused.jpg"

    def write_with_a_pause() -> None:
        with target.open("wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(2.0)
            handle.write(data[len(data) // 2 :])

    writer = threading.Thread(target=write_with_a_pause)
    stop, frames = threading.Event(), []
    with HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.2, poll_s=0.05)) as source:
        writer.start()
        for batch in source.batches(stop):
            for frame in batch:
                frames.append(frame)
                source.ack(frame)
            stop.set()
        writer.join()
    assert len(frames) == 1 and frames[0].error is None, frames[0].error
    assert frames[0].sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "processed" / "paused.jpg").read_bytes() == data


def test_a_zero_byte_file_gets_an_error_frame_after_settling_and_the_queue_drains(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    stop, frames = threading.Event(), []
    config = HotFolderConfig(settle_s=0.05, incomplete_s=0.3, poll_s=0.05)
    with HotFolderSource(tmp_path, config) as source:
        for batch in source.batches(stop):
            for frame in batch:
                frames.append(frame)
                source.ack(frame)
            stop.set()
        assert source.status().queue_depth == 0
    assert len(frames) == 1 and frames[0].image is None and "file is empty" in frames[0].error
    assert (tmp_path / "processed" / "empty.jpg").exists()


def test_hostile_files_in_a_hot_folder_do_not_spoil_the_good_frames_of_their_batch(brightness_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    for i in range(3):
        _grey_png(inbox / f"good{i}.png", 100)
    (inbox / "float.tif").write_bytes(_tiff(np.full((64, 64), 0.4, np.float32)))
    (inbox / "nan.tif").write_bytes(_tiff(np.full((64, 64), np.nan, np.float32)))
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "folder.jpg").mkdir()
    config = DaemonConfig(
        source=str(inbox),
        model=str(brightness_model),
        out=str(out),
        batch_frames=8,
        hot_folder=HotFolderConfig(settle_s=0.05, incomplete_s=0.3, poll_s=0.05),
    )
    stop, result = threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop=stop)))
    thread.start()
    deadline = time.monotonic() + 30
    while _row_count(out) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    records = _records(out)
    assert {name: r.verdict.value for name, r in records.items()} == {
        "good0.png": "OK",
        "good1.png": "OK",
        "good2.png": "OK",
        "float.tif": "OK",  # 0.4 -> grey 102
        "nan.tif": "ERROR",
        "empty.png": "ERROR",
    }
    assert result[0].source.queue_depth == 0 and (inbox / "folder.jpg").is_dir()


# --- video files ----------------------------------------------------------------------------------------------------


def test_the_last_frame_of_a_video_cut_mid_frame_is_an_error_not_an_ok_frame(brightness_model, tmp_path):
    originals = [make_frame(96, 128, 300 + i, n_cracks=0)[0] for i in range(10)]
    video = write_video(tmp_path / "cut.avi", originals)
    raw = video.read_bytes()
    chunks = [i for i in range(raw.index(b"movi"), len(raw)) if raw.startswith(b"00dc", i)]  # one per frame
    video.write_bytes(raw[: (chunks[4] + chunks[5]) // 2])  # in the middle of the fifth frame's data
    fast = Backoff(initial_s=0.05, max_s=0.1)
    with open_source(str(video), SourceOptions(backoff=fast)) as source:
        frames = [frame for batch in source.batches(threading.Event()) for frame in batch]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert all(np.abs(f.image.astype(int) - o).mean() < 5 for f, o in zip(frames[:4], originals, strict=False))
    assert frames[4].image is None and "cut mid-frame" in frames[4].error
    summary = run_daemon(
        DaemonConfig(source=str(video), model=str(brightness_model), out=str(tmp_path / "out"), reconnect=fast)
    )
    assert summary.inspected["ERROR"] == 1 and summary.frames == 5
