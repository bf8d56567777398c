"""benchmarks/plant.py hostile: a batch with every kind of hostile file gets one record per file, each as its kind
should, and the entries that are not inputs are listed. benchmarks/plant.py daemons: daemons killed with kill -9 and a
restarted PostgreSQL lose and duplicate no record, and every verdict reaches the broker. benchmarks/plant.py review:
a plant store is loaded and the review app's pages show what it holds."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pgcluster
import plant


def test_a_small_hostile_batch_meets_the_goal_with_every_kind_present(brightness_model, tmp_path, capsys):
    out = tmp_path / "figures.json"
    code = plant.main(
        ["hostile", "--model", str(brightness_model), "--inputs", "96", "--hostile-share", "0.25", "--json", str(out)]
    )
    figures = json.loads(out.read_text())
    assert code == 0 and figures["goal_met"], figures
    assert figures["records"] == figures["inputs"] == 96 and figures["hostile"] == 24
    assert set(figures["errors_by_kind"]) == {k for k, (_, _, error) in plant.HOSTILE.items() if error}
    assert all(count == 3 for count in figures["errors_by_kind"].values())  # 24 hostile files, 8 kinds in turn
    assert set(figures["skipped_entries"]) == {"dangling.jpg", "loop.jpg", "x.jpg"}


@pytest.fixture
def plant_services() -> None:
    """Skip, saying what is missing, without PostgreSQL, psycopg, Mosquitto or paho-mqtt; under CI (``CI`` set) fail
    instead: .ci/run installs them."""
    missing = []
    if pgcluster.postgres_bin() is None:
        missing.append("PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").is_file()):
        missing.append("mosquitto (apt-get install mosquitto)")
    for module, extra in (("psycopg", "plant"), ("paho", "line")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (pip install 'crackscope[{extra}]')")
    if missing:
        message = "benchmarks/plant.py daemons needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_two_daemons_one_killed_and_a_restarted_server_lose_no_record_and_every_miss_is_fail_safe(
    plant_services, brightness_model, tmp_path, capsys
):
    out = tmp_path / "figures.json"
    small = ["--daemons", "2", "--frames", "24", "--width", "160", "--height", "120", "--fps", "8", "--kills", "1"]
    code = plant.main(["daemons", "--model", str(brightness_model), *small, "--deadline-ms", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert code == 0 and figures["goal_met"], figures
    assert figures["records"] == figures["frames"] == 48 and figures["lost"] == figures["duplicated"] == 0
    assert len(figures["kills"]) == len(figures["pg_restarts"]) == 1 and figures["daemon_starts"] == 3
    assert figures["store_reconnects"] >= 1  # the restart was felt by a writer, not slept through
    assert figures["mqtt"]["unique_record_ids"] == 48 and figures["mqtt"]["records_not_received"] == 0
    deadline = figures["deadline"]  # 1 ms: every frame misses, the line gets its fail-safe, the store its verdict
    assert deadline["misses_stored"] == deadline["fail_safe_messages"] == 48
    assert deadline["misses_without_fail_safe"] == deadline["misses_without_correction"] == 0


def test_the_review_benchmark_loads_a_small_plant_store_and_its_pages_show_the_stored_counts(postgres_url, tmp_path):
    out = tmp_path / "figures.json"
    small = ["--records", "2000", "--decisions", "60", "--repeats", "2", "--folder", str(tmp_path / "sqlite")]
    code = plant.main(["review", "--url", postgres_url, "--store", "both", *small, "--json", str(out)])
    figures = json.loads(out.read_text())
    assert code == 0, figures
    assert [f["store"] for f in figures] == ["postgresql", "sqlite"]
    assert figures[0]["counts"] == figures[1]["counts"]  # the same records in both
    for figure in figures:
        counts = figure["counts"]
        assert figure["records"] == 2000 and figure["load_seconds"] is not None
        assert figure["counts_shown_right"], figure
        assert 0.85 < counts["OK"]["records"] / 2000 < 0.95 and all(c["records"] for c in counts.values())
        assert sum(c["reviewed"] for c in counts.values()) == 60  # most REVIEW and DEFECT records are not
        assert counts["ERROR"]["reviewed"] == 0
        pages = {page["page"].split(" ")[0].rstrip(","): page for page in figure["pages"]}
        assert set(pages) == {"queue", "item", "stats"} and len(figure["pages"]) == 9
        assert all(page["status"] == 200 and page["p99_ms"] >= page["p50_ms"] > 0 for page in figure["pages"])
    assert "p50 ms" in plant.review_table(figures[0])
