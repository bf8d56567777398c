"""benchmarks/int8_suite.py: the held-out split it judges on, and the table it prints for written and refused int8."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import int8_suite

from crackscope.labelled import Clarity, Sample


def _samples(per_class: int) -> list[Sample]:
    return [
        Sample(Path(f"/data/{name}/{i}.jpg"), float(label), Clarity.CLEAR, f"{name}/{i}")
        for label, name in ((0, "ok"), (1, "crack"))
        for i in range(per_class)
    ]


def test_held_out_items_are_never_trained_on_and_each_class_gives_its_share():
    samples = _samples(50)
    train, held = int8_suite._split(samples, train_per_class=10, held_per_class=8, seed=0)
    assert not {s.key for s in train} & {s.key for s in held}
    assert [sum(s.label == c for s in train) for c in (0, 1)] == [10, 10]
    assert [sum(s.label == c for s in held) for c in (0, 1)] == [8, 8]
    again = int8_suite._split(samples, train_per_class=10, held_per_class=8, seed=0)
    assert [s.key for s in again[1]] == [s.key for s in held]  # seeded
    train, held = int8_suite._split(samples, train_per_class=None, held_per_class=None, seed=1)
    assert len(held) == 20 and len(train) == 80  # 20% of each class held out, the rest trained on


def test_the_table_shows_figures_of_written_models_and_the_reason_of_refused_ones():
    written = int8_suite.Outcome("small", 30.0, 12.0, True, True, float_units=["/features/blocks/blocks.1/blocks.1.0"])
    written.held_out_tiles, written.agreement, written.correlation = 256, 0.9922, 0.975
    written.correlation_ci, written.speedup, written.load = (0.968, 0.982), {1: 1.67, 8: 1.70}, 1.5
    refused = int8_suite.Outcome("hard", None, 160.0, True, False, refusal="REFUSED  m.int8.onnx: decisions 98%")
    text = int8_suite.table([written, refused], [1, 8])
    assert "| small | 0.5 min | 12 s | written | written | blocks.1.0 | 256 | 99.22% | 0.975 (0.968-0.982)" in text
    assert "| hard | - | 160 s | written | REFUSED (below) | none |" in text
    assert text.endswith("hard: REFUSED  m.int8.onnx: decisions 98%")
    assert written.passes and not refused.passes
    assert int8_suite.summary([written, refused])[0] == "int8 written with the defaults: 1/2; fp32 refused: 0"
