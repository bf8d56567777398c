"""QA review in a real browser: headless Chromium (Debian's package) driven by Playwright, over a real batch run.

A reviewer opens the queue, opens an item, decides with the keyboard, finds the decision again after a reload; a
second reviewer disagrees; the decisions are exported as a dataset and one tiny training epoch runs on it.
Screenshots of the queue and item pages are saved in the test's temporary folder.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.cli import main
from crackscope.inspect.batch import BatchConfig, run_batch
from crackscope.inspect.card import Calibration, write_calibration
from crackscope.inspect.review.app import ReviewConfig, ReviewServer
from crackscope.inspect.review.store import Label, QueueFilter, ReviewStore
from crackscope.training.synthetic import make_frame

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    found = os.environ.get("CRACKSCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package before the tests")
    pytest.skip("the browser tests need Debian's chromium package (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'crackscope[dev]' for Playwright")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--headless"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def line_results(line_model, tmp_path_factory) -> Path:
    """A batch run of a calibrated copy of the line model over 8 generated frames, half of them cracked."""
    root = tmp_path_factory.mktemp("review-run")
    model = root / "model.onnx"
    shutil.copy(line_model.fp32, model)
    calibration = Calibration(
        ok_below=0.2,
        defect_at_or_above=0.8,
        method="test band",
        targets={"escape_rate": 0.01, "false_reject_rate": 0.05},
    )
    write_calibration(model, calibration)
    frames = root / "frames"
    frames.mkdir()
    for i in range(8):
        frame, _ = make_frame(256, 320, np.random.default_rng(100 + i), n_cracks=i % 2)
        cv2.imwrite(str(frames / f"part_{i:02d}.jpg"), frame)
    out = root / "results"
    run_batch(BatchConfig(inputs=(str(frames),), model=str(model), out=str(out), progress=False))
    return out


def _wait_for_images(page) -> None:
    page.wait_for_function("[...document.querySelectorAll('#viewer img')].every(i => i.complete && i.naturalWidth)")


def _set_reviewer(page, name: str) -> None:
    page.fill("#reviewer-name", name)
    with page.expect_navigation():
        page.click("form.who button")


def test_a_reviewer_decides_with_the_keyboard_and_the_decisions_export_and_train(browser, line_results, tmp_path):
    with ReviewServer(ReviewConfig(results=str(line_results), port=0)) as server:
        with ReviewStore(line_results) as store:
            order = store.queue_ids(QueueFilter())
            flagged = next((row for row in store.queue(QueueFilter()) if row.regions), None)
        assert len(order) == 8  # every frame: the flagged ones, then the OK sample

        alice = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        alice.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        alice.on("pageerror", lambda error: errors.append(str(error)))
        alice.goto(server.url)
        _set_reviewer(alice, "alice")
        assert alice.locator("#queue li").count() == 8
        alice.screenshot(path=str(tmp_path / "queue.png"), full_page=True)

        with alice.expect_navigation():
            alice.click("#queue li a >> nth=0")
        first = alice.url
        assert first.split("?")[0].endswith(f"/item/{order[0]}")
        _wait_for_images(alice)
        alice.hover("#viewer", position={"x": 200, "y": 150})
        assert "tile " in alice.locator("#tip").inner_text()
        alice.screenshot(path=str(tmp_path / "item.png"), full_page=True)

        slider = alice.locator("#heat-opacity")
        slider.fill("20")
        assert alice.locator("#heat").evaluate("image => image.style.opacity") == "0.2"
        alice.keyboard.press("h")
        assert alice.locator("#heat").evaluate("image => image.style.opacity") == "0"

        with alice.expect_navigation():
            alice.keyboard.press("d")
        assert f"/item/{order[1]}" in alice.url and "Saved defect" in alice.locator("#saved").inner_text()
        with alice.expect_navigation():
            alice.keyboard.press("d")  # the second item: defect too
        with alice.expect_navigation():
            alice.keyboard.press("n")  # skip the third
        with alice.expect_navigation():
            alice.keyboard.press("p")
        assert f"/item/{order[2]}" in alice.url
        for back in (1, 2):  # the last two of the queue: ok
            alice.goto(server.url + f"item/{order[-back]}")
            with alice.expect_navigation():
                alice.keyboard.press("o")

        if flagged:  # a picture of an item with its heat and region boxes, pointing at its first region
            alice.goto(server.url + f"item/{flagged.id}")
            _wait_for_images(alice)
            box = alice.locator(".boxes .box >> nth=0").bounding_box()
            alice.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            alice.screenshot(path=str(tmp_path / "item-regions.png"), full_page=True)

        alice.goto(first)
        alice.reload()
        assert "chosen" in alice.locator("button.label.defect").get_attribute("class")
        assert "alice" in alice.locator("table.decisions").inner_text()

        bob_context = browser.new_context(viewport={"width": 1400, "height": 900})
        bob = bob_context.new_page()
        bob.goto(first)
        assert bob.locator("button.label.ok").is_disabled()  # no name yet: no decision
        _set_reviewer(bob, "bob")
        with bob.expect_navigation():
            bob.keyboard.press("o")  # bob disagrees on the first item
        bob.goto(first)
        assert "Reviewers disagree" in bob.locator(".decide").inner_text()
        bob.goto(server.url + "stats")
        assert "escape rate" in bob.locator("#rates").inner_text()
        bob.screenshot(path=str(tmp_path / "stats.png"), full_page=True)
        bob_context.close()
        assert not errors, errors

    with ReviewStore(line_results) as store:
        assert {d.reviewer: d.label for d in store.decisions(order[0])} == {"alice": Label.DEFECT, "bob": Label.OK}

    dataset = tmp_path / "dataset"
    assert main(["review", "export", "--results", str(line_results), "--out", str(dataset)]) == 0
    frames = dataset / "frames"
    assert len(list((frames / "crack").iterdir())) == 1 and len(list((frames / "ok").iterdir())) == 2
    assert len(list((frames / "ambiguous").iterdir())) == 1
    with (dataset / "review-export.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    frame_label = {row["result_id"]: row["label"] for row in rows if row["kind"] == "frame"}
    tiles = [row for row in rows if row["kind"] != "frame"]
    assert tiles and all(row["label"] == frame_label[row["result_id"]] for row in tiles)  # no mark was drawn
    assert {row["result_id"] for row in tiles} == set(frame_label)  # every reviewed frame gave tiles
    votes = (dataset / "votes.csv").read_text().splitlines()[1:]  # alice and bob on each tile of the first item
    first_tiles = sum(row["result_id"] == order[0] for row in tiles)
    assert len(votes) == 2 * first_tiles and all(Path(v.split(",")[0]).is_relative_to("ambiguous") for v in votes)

    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(dataset),
            "--out",
            str(run),
            "--input-size",
            "64",
            "--epochs",
            "1",
            "--head-epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--augment",
            "none",
        ]
    )
    assert code == 0 and (run / "model.pt").is_file()
    for name in ("queue.png", "item.png", "stats.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_a_reviewer_drags_a_box_round_a_missed_region_and_it_is_stored_in_frame_pixels(browser, line_results):
    with ReviewServer(ReviewConfig(results=str(line_results), port=0)) as server:
        with ReviewStore(line_results) as store:
            item = next((row.id for row in store.queue(QueueFilter(verdict="all")) if row.image_path), None)
            if item is None:
                pytest.skip("this run saved no frame to mark on")
            record = store.record(item)
            decided = store.decisions(item)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        carol = context.new_page()
        errors: list[str] = []
        carol.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        carol.on("pageerror", lambda error: errors.append(str(error)))
        carol.goto(server.url + f"item/{item}")
        _set_reviewer(carol, "carol")
        _wait_for_images(carol)
        viewer = carol.locator("#viewer")

        carol.keyboard.press("m")
        assert "drawing" in viewer.get_attribute("class")
        carol.keyboard.press("Escape")
        assert "drawing" not in viewer.get_attribute("class")
        carol.click("#mark-start")
        carol.keyboard.press("d")  # no decision while drawing
        carol.keyboard.press("n")  # nor leaving the page
        carol.wait_for_timeout(300)
        assert carol.url.split("?")[0].endswith(f"/item/{item}")

        shown = viewer.bounding_box()  # the page shows a copy: the box must come back in the frame's pixels
        carol.mouse.move(shown["x"] + 0.5 * shown["width"], shown["y"] + 0.75 * shown["height"])
        carol.mouse.down()
        carol.mouse.move(shown["x"] + 0.4 * shown["width"], shown["y"] + 0.5 * shown["height"], steps=4)
        carol.mouse.move(shown["x"] + 0.25 * shown["width"], shown["y"] + 0.25 * shown["height"], steps=4)
        with carol.expect_navigation():
            carol.mouse.up()
        with ReviewStore(line_results) as store:
            [mark] = store.marks(item)
            assert store.decisions(item) == decided
        expected = (0.25 * record.width, 0.25 * record.height, 0.25 * record.width, 0.5 * record.height)
        assert mark.reviewer == "carol"
        assert all(abs(got - want) <= 2 for got, want in zip(mark.box, expected, strict=True)), (mark.box, expected)
        assert "defect · carol" in carol.locator("#marks").inner_text()
        assert ", ".join(map(str, mark.box)) in carol.locator("#marks-list").inner_text()

        with carol.expect_navigation():
            carol.click("#marks-list button.remove-mark")
        with ReviewStore(line_results) as store:
            assert store.marks(item) == []
        context.close()
        assert not errors, errors
