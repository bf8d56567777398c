"""``crackscope review export``: the reviewed items of a results folder as a training dataset.

The dataset is in the class-folder layout that ``crackscope train`` reads (:mod:`crackscope.labelled`):

* ``crack/``, ``ok/``, ``ambiguous/``: each reviewed item once, in the folder of its label (every reviewer said
  defect, ok or ambiguous; reviewers who disagree make it ambiguous);
* ``votes.csv`` (``image,annotator,label``), when several reviewers labelled the same item: their crack / ok votes,
  which training turns into a soft target (the share saying crack). An item that one of its reviewers called
  ambiguous has no rows (a vote file holds crack or ok only), so it trains with the ambiguous target;
* ``review-export.csv``: where each image came from (record id, source, sha256, model verdict and score, label,
  reviewers), for tracing a training image back to the line.

The image is the original file when it is still where it was inspected and unchanged (same sha256: the exact
pixels the model saw), otherwise the frame saved in the results folder (``review/<name>.jpg``). An item with
neither (an OK item of a run that saved only flagged frames, whose file has since moved) is skipped and named.
Exporting again to the same folder replaces the earlier export in one step; any other non-empty folder is refused.

Example:
    $ crackscope review export --results runs/line3 --out datasets/line3-reviewed
    $ crackscope train --data datasets/line3-reviewed --out runs/line3-finetune
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from crackscope.inspect.images import file_digest
from crackscope.inspect.results import InspectionResult
from crackscope.inspect.review.store import Decision, Label, ReviewError, ReviewStore, consensus
from crackscope.inspect.sinks import artefact_stem

FOLDERS = {Label.DEFECT: "crack", Label.OK: "ok", Label.AMBIGUOUS: "ambiguous"}
VOTES = {Label.DEFECT: "crack", Label.OK: "ok"}
MANIFEST = "review-export.csv"
VOTES_FILE = "votes.csv"


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    out: Path
    counts: dict[str, int]  # crack / ok / ambiguous -> images
    votes: int  # rows in votes.csv (0: no file)
    skipped: tuple[str, ...]  # "source: reason" of reviewed items without an image

    def describe(self) -> str:
        lines = [
            f"exported {sum(self.counts.values())} reviewed image(s) to {self.out}: "
            + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
            f"votes.csv: {self.votes} vote(s) of items with several reviewers" if self.votes else "votes.csv: none",
        ]
        lines += [f"skipped {item}" for item in self.skipped]
        empty = [name for name in ("crack", "ok") if not self.counts.get(name)]
        if empty:
            lines.append(f"note: no {' or '.join(empty)} image yet; training needs both classes")
        return "\n".join(lines)


def export_dataset(results: str | os.PathLike, out: str | os.PathLike) -> ExportSummary:
    """Write the reviewed items of ``results`` as a dataset in ``out`` (see the module docstring)."""
    results, out = Path(results), Path(out)
    _check_target(out, results)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with ReviewStore(results) as store:
            summary = _write(store, results, staging)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, summary.counts, summary.votes, summary.skipped)


def _check_target(out: Path, results: Path) -> None:
    if out.resolve() == results.resolve() or results.resolve().is_relative_to(out.resolve()):
        raise ReviewError(f"--out {out} would replace the results folder {results}")
    if out.exists() and not out.is_dir():
        raise ReviewError(f"--out {out} is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ReviewError(f"--out {out} is a folder that holds something else; give a new or empty folder")


def _write(store: ReviewStore, results: Path, staging: Path) -> ExportSummary:
    counts: Counter[str] = Counter()
    votes: list[tuple[str, str, str]] = []
    manifest: list[dict[str, object]] = []
    skipped: list[str] = []
    for result_id, _, decisions in store.reviewed():
        record = store.record(result_id)
        label = consensus(d.label for d in decisions)
        image, reason = _image_of(record, results)
        if image is None:
            skipped.append(f"{record.source}: {reason}")
            continue
        relative = f"{FOLDERS[label]}/{artefact_stem(record.source, record.sha256)}{image.suffix.lower()}"
        (staging / relative).parent.mkdir(exist_ok=True)
        shutil.copyfile(image, staging / relative)
        counts[FOLDERS[label]] += 1
        votes += _votes(relative, decisions)
        manifest.append(_manifest_row(relative, record, label, decisions))
    if votes:
        _write_csv(staging / VOTES_FILE, ("image", "annotator", "label"), votes)
    columns = ("image", "result_id", "source", "sha256", "model_verdict", "score", "label", "reviewers")
    _write_csv(staging / MANIFEST, columns, [tuple(row[c] for c in columns) for row in manifest])
    counts_all = {name: counts.get(name, 0) for name in ("crack", "ok", "ambiguous")}
    return ExportSummary(staging, counts_all, len(votes), tuple(skipped))


def _image_of(record: InspectionResult, results: Path) -> tuple[Path | None, str]:
    """The original file when unchanged, else the saved frame; or None and why."""
    original = Path(record.source)
    try:
        if original.is_file() and file_digest(original.read_bytes()) == record.sha256:
            return original, ""
    except (OSError, ValueError):
        pass
    if record.image_path:
        saved = (results / record.image_path).resolve()
        if saved.is_relative_to(results.resolve()) and saved.is_file():
            return saved, ""
        return None, f"its saved image {record.image_path} is missing"
    return None, "no image was saved for it and the original file is gone or changed"


def _votes(relative: str, decisions: list[Decision]) -> list[tuple[str, str, str]]:
    """Crack / ok votes of an item with several reviewers, none of whom said ambiguous."""
    if len(decisions) < 2 or any(d.label not in VOTES for d in decisions):
        return []
    return [(relative, d.reviewer, VOTES[d.label]) for d in decisions]


def _manifest_row(relative: str, record: InspectionResult, label: Label, decisions: list[Decision]) -> dict:
    return {
        "image": relative,
        "result_id": record.id,
        "source": record.source,
        "sha256": record.sha256,
        "model_verdict": record.verdict.value,
        "score": "" if record.score is None else record.score,
        "label": FOLDERS[label],
        "reviewers": ";".join(f"{d.reviewer}={d.label.value}" for d in decisions),
    }


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _replace(staging: Path, out: Path) -> None:
    """Put the staged dataset at ``out``; an earlier export there is removed only once the new one is in place."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
