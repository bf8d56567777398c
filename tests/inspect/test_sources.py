"""Frame sources on real files: generated MJPG videos (cut, removed, late) and real hot folders."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.inspect.sources import (
    Backoff,
    CaptureSource,
    HotFolderConfig,
    HotFolderSource,
    Policy,
    SourceError,
    SourceOptions,
    SourceState,
    is_candidate,
    open_source,
    parse_source,
    redact_url,
)
from crackscope.training.synthetic import make_frame, write_video

FAST = Backoff(initial_s=0.05, max_s=0.2)


def _frames(count: int, height: int = 96, width: int = 128, seed: int = 0) -> list[np.ndarray]:
    return [make_frame(height, width, seed + i, n_cracks=i % 2)[0] for i in range(count)]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "line.avi", _frames(24))


def _collect(source, stop: threading.Event | None = None, *, max_frames: int = 1, delay_s: float = 0.0) -> list:
    frames = []
    for batch in source.batches(stop or threading.Event(), max_frames):
        frames.extend(batch)
        time.sleep(delay_s)
    return frames


def _jpeg_bytes(seed: int) -> bytes:
    ok, data = cv2.imencode(".jpg", make_frame(96, 128, seed, n_cracks=1)[0])
    assert ok
    return data.tobytes()


def _jpeg(path: Path, seed: int) -> bytes:
    data = _jpeg_bytes(seed)
    path.write_bytes(data)
    return data


# --- choosing a source ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [("0", "camera"), (2, "camera"), ("rtsp://cam.local/stream", "stream"), ("http://10.0.0.5/mjpg", "stream")],
)
def test_digits_are_cameras_and_urls_are_streams(value, kind):
    assert parse_source(value).kind == kind


def test_a_folder_is_a_hot_folder_and_a_missing_video_file_is_waited_for(tmp_path):
    assert parse_source(tmp_path).kind == "folder"
    later = parse_source(tmp_path / "later.avi")
    assert later.kind == "video" and later.name == str((tmp_path / "later.avi").resolve())


@pytest.mark.parametrize("value", ["", "ftp://host/video", "no-such-folder"])
def test_values_that_cannot_be_a_source_are_refused_with_a_reason(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError):
        parse_source(value)


def test_an_existing_file_that_is_not_a_video_is_refused_at_start(tmp_path):
    bogus = tmp_path / "notes.avi"
    bogus.write_text("not a video")
    with pytest.raises(SourceError, match="not a video"):
        open_source(str(bogus), SourceOptions())


def test_stream_passwords_never_reach_records_or_logs():
    assert redact_url("rtsp://admin:secret@10.0.0.7:554/live") == "rtsp://admin:***@10.0.0.7:554/live"
    assert parse_source("rtsp://admin:secret@10.0.0.7/live").name == "rtsp://admin:***@10.0.0.7/live"
    assert redact_url("rtsp://10.0.0.7/live") == "rtsp://10.0.0.7/live"
    assert redact_url("rtsp://u:p@[fe80::1]:8554/x") == "rtsp://u:***@[fe80::1]:8554/x"


@pytest.mark.parametrize(("failures", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (20, 30.0)])
def test_backoff_doubles_from_its_first_delay_up_to_its_cap(failures, delay):
    assert Backoff(initial_s=0.5, max_s=30.0).delay(failures) == delay


# --- video files ----------------------------------------------------------------------------------------------------


def test_every_policy_yields_every_frame_of_a_video_file_in_order(video):
    with open_source(str(video), SourceOptions(queue_size=2)) as source:
        frames = _collect(source, max_frames=3)
        status = source.status()
    assert [f.index for f in frames] == list(range(24))
    assert frames[5].source == f"{video.resolve()}#000005"
    assert frames[5].sha256 == hashlib.sha256(frames[5].image.tobytes()).hexdigest()
    assert frames[0].image.shape == (96, 128, 3) and frames[0].error is None
    assert status.state is SourceState.ENDED and status.frames_read == 24 and status.dropped == 0


def test_latest_policy_drops_stale_frames_and_counts_them(video):
    with open_source(str(video), SourceOptions(policy=Policy.LATEST)) as source:
        frames = _collect(source, delay_s=0.05)
        status = source.status()
    assert status.dropped > 0
    assert len(frames) + status.dropped == 24 == status.frames_read
    assert frames[-1].index == 23  # the newest frame is never the one dropped
    assert [f.index for f in frames] == sorted(f.index for f in frames)


def test_a_video_absent_at_start_is_opened_when_it_appears_and_the_reconnects_are_counted(video, tmp_path):
    late = tmp_path / "late.avi"
    with open_source(str(late), SourceOptions(backoff=FAST)) as source:
        time.sleep(0.3)
        assert source.status().state is SourceState.CONNECTING and "does not exist" in source.status().last_error
        staged = tmp_path / "late.avi.part"
        staged.write_bytes(video.read_bytes())
        os.replace(staged, late)  # appears complete, as a camera comes back
        frames = _collect(source)
        status = source.status()
    assert len(frames) == 24 and status.reconnects >= 2 and status.state is SourceState.ENDED


def test_a_video_cut_short_while_it_is_read_ends_at_the_cut_without_an_error(tmp_path):
    path = write_video(tmp_path / "cut.avi", _frames(120, seed=50))
    stop = threading.Event()
    with open_source(str(path), SourceOptions(queue_size=1, backoff=FAST)) as source:
        batches = source.batches(stop)
        first = [next(batches)[0] for _ in range(5)]
        os.truncate(path, path.stat().st_size // 2)
        rest = [f for batch in batches for f in batch]
        status = source.status()
    indices = [f.index for f in first + rest]
    assert indices == list(range(len(indices))) and 5 < len(indices) < 120
    assert status.state is SourceState.ENDED and status.reconnects == 1 and "cut short" in status.last_error


def test_a_video_removed_while_it_is_read_is_read_to_its_end(tmp_path):
    path = write_video(tmp_path / "gone.avi", _frames(30, seed=80))
    stop = threading.Event()
    with open_source(str(path), SourceOptions(queue_size=1)) as source:
        batches = source.batches(stop)
        first = next(batches)
        path.unlink()  # the open file stays readable; the next restart would wait for it to come back
        frames = first + [f for batch in batches for f in batch]
        assert source.status().state is SourceState.ENDED
    assert [f.index for f in frames] == list(range(30))


def test_a_video_replayed_in_real_time_arrives_at_its_frame_rate(tmp_path):
    path = write_video(tmp_path / "paced.avi", _frames(6), fps=20.0)
    with open_source(str(path), SourceOptions(realtime=True)) as source:
        frames = _collect(source)
    assert len(frames) == 6 and 0.2 <= frames[-1].monotonic - frames[0].monotonic < 2.0  # 5 gaps of 50 ms


def test_a_replayed_video_frame_is_handed_on_when_it_is_due_not_one_frame_later(tmp_path):
    """A video frame waits for the next one to be read (a file cut mid-frame ends in a half-decoded frame), so a
    real-time replay reads one frame early: each frame reaches the inspector about when its stamp says, at its due
    time, as a camera's frame would (held until the next frame was due, each arrived 250 ms after its stamp)."""
    path = write_video(tmp_path / "paced.avi", _frames(5), fps=4.0)
    stop, arrived = threading.Event(), []
    with open_source(str(path), SourceOptions(realtime=True)) as source:
        for batch in source.batches(stop):
            arrived += [(frame, time.monotonic()) for frame in batch]
    assert [frame.index for frame, _ in arrived] == list(range(5))
    assert max(at - frame.monotonic for frame, at in arrived) < 0.125  # half of one frame interval (0.25 s)


def test_closing_a_source_stops_its_reader_even_when_the_inspector_is_behind(video):
    with CaptureSource(parse_source(str(video)), policy=Policy.EVERY, queue_size=1) as source:
        time.sleep(0.1)
        assert source.status().queue_depth == 1
    assert source.status().state is SourceState.CLOSED


# --- hot folders ----------------------------------------------------------------------------------------------------


def test_files_already_in_the_hot_folder_at_start_are_inspected_and_moved_to_processed(tmp_path):
    hashes = {f"part{i}.jpg": hashlib.sha256(_jpeg(tmp_path / f"part{i}.jpg", i)).hexdigest() for i in range(3)}
    (tmp_path / "notes.txt").write_text("not an image")
    stop = threading.Event()
    with open_source(str(tmp_path), SourceOptions(hot_folder=HotFolderConfig(settle_s=0.1, poll_s=0.05))) as source:
        frames = []
        for batch in source.batches(stop, max_frames=2):
            for frame in batch:
                frames.append(frame)
                source.ack(frame)
            if len(frames) == 3:
                stop.set()
    assert {Path(f.source).name: f.sha256 for f in frames} == hashes
    assert all(f.image.shape == (96, 128, 3) for f in frames)
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == sorted(hashes)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]


def test_a_file_still_being_written_is_not_read_until_its_size_is_stable(tmp_path):
    data = _jpeg_bytes(7)
    target = tmp_path / "growing.jpg"

    def write_slowly() -> None:
        with target.open("wb") as handle:
            for start in range(0, len(data), len(data) // 5 + 1):
                handle.write(data[start : start + len(data) // 5 + 1])
                handle.flush()
                time.sleep(0.15)

    writer = threading.Thread(target=write_slowly)
    stop = threading.Event()
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.4, poll_s=0.05))
    with source:
        writer.start()
        frames = []
        for batch in source.batches(stop):
            frames.extend(batch)
            stop.set()
        writer.join()
    assert len(frames) == 1 and frames[0].error is None
    assert frames[0].sha256 == hashlib.sha256(data).hexdigest()  # the whole file, not a prefix of it


def test_a_file_being_written_is_seen_but_not_ready_until_it_settles(tmp_path):
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.2))
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8 half")
    assert source.poll() == []  # first sighting
    time.sleep(0.25)
    with path.open("ab") as handle:
        handle.write(b" more")
    assert source.poll() == []  # it grew: the clock starts again
    assert source.status().queue_depth == 1
    time.sleep(0.25)
    assert source.poll() == [path]


def test_names_writers_use_while_writing_are_never_picked_up():
    for name in (".a.jpg", "a.jpg.part", "a.jpg.tmp", "a.jpg.crdownload", "a.txt"):
        assert not is_candidate(Path(name)), name
    assert is_candidate(Path("a.JPG")) and is_candidate(Path("b.png"))


def test_an_undecodable_file_becomes_an_error_frame_not_an_exception(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0, after="keep"))
    assert source.poll() == []
    [path] = source.poll()
    frame = source.load(path)
    assert frame.image is None and "decodable" in frame.error
    assert source.poll() == []  # handled: not offered again while unchanged


def test_a_cut_jpeg_that_stopped_growing_gets_an_error_frame_that_says_it_is_truncated(tmp_path):
    data = _jpeg_bytes(3)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0, incomplete_s=0.0, after="keep"))
    source.poll()
    [path] = source.poll()
    frame = source.load(path)
    assert frame.image is None and "truncated" in frame.error
    assert frame.sha256 == hashlib.sha256(data[: len(data) // 2]).hexdigest()


def test_a_file_that_grows_again_after_it_looked_stable_is_left_for_the_next_poll(tmp_path):
    data = _jpeg_bytes(4)
    path = tmp_path / "slow.jpg"
    path.write_bytes(data[:100])
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0))
    source.poll()
    assert source.poll() == [path]
    with path.open("ab") as handle:  # the writer resumes after a pause longer than settle_s, still not done
        handle.write(data[100:200])
    assert source.load(path) is None  # unreadable, but it changed since it looked ready: not an ERROR record
    with path.open("ab") as handle:
        handle.write(data[200:])
    source.poll()
    [again] = source.poll()
    frame = source.load(again)
    assert frame.error is None and frame.sha256 == hashlib.sha256(data).hexdigest()


def test_keep_mode_leaves_files_in_place_and_offers_each_once(tmp_path):
    _jpeg(tmp_path / "a.jpg", 1)
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0, after="keep"))
    source.poll()
    [path] = source.poll()
    source.ack(source.load(path))
    assert source.poll() == [] and path.exists() and not (tmp_path / "processed").exists()


def test_files_whose_key_is_already_stored_are_not_read_again_but_still_moved(tmp_path):
    data = _jpeg(tmp_path / "a.jpg", 1)
    done = {(str(tmp_path.resolve() / "a.jpg"), hashlib.sha256(data).hexdigest())}
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0), done=done)
    source.poll()
    [path] = source.poll()
    assert source.load(path) is None and source.status().resumed == 1
    assert (tmp_path / "processed" / "a.jpg").read_bytes() == data


def test_a_second_file_of_the_same_name_does_not_overwrite_the_first_in_processed(tmp_path):
    source = HotFolderSource(tmp_path, HotFolderConfig(settle_s=0.0))
    for seed in (1, 2):
        _jpeg(tmp_path / "a.jpg", seed)
        source.poll()
        [path] = source.poll()
        source.ack(source.load(path))
    assert len(list((tmp_path / "processed").iterdir())) == 2


def test_a_hot_folder_that_disappears_is_retried_and_counted_until_it_is_back(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source = HotFolderSource(inbox, HotFolderConfig(settle_s=0.0), backoff=FAST)
    with source:
        source.poll()
        assert source.status().state is SourceState.OPEN
        inbox.rmdir()  # an unmounted share
        source.poll()
        source.poll()
        status = source.status()
        assert status.state is SourceState.CONNECTING and status.reconnects == 1 and "cannot list" in status.last_error
        inbox.mkdir()
        source.poll()
        assert source.status().state is SourceState.OPEN and source.status().reconnects == 2


def test_a_hot_folder_gives_up_after_its_backoff_attempts(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source = HotFolderSource(inbox, backoff=Backoff(initial_s=0.01, max_s=0.01, attempts=3))
    with source:
        inbox.rmdir()
        batches = list(source.batches(threading.Event()))
    assert batches == [] and source.status().state is SourceState.FAILED
