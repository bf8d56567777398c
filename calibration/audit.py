"""``crackscope audit``: likely label problems in a labelled set, most suspicious first.

The exported model is run over every item (through the runtime, as :mod:`.calibrate` does) and each item gets a
suspicion score in [0, 1], the stronger of two signals:

* **the model contradicts the label**: the calibrated probability of the *other* class (``p`` for an item labelled
  ok, ``1 - p`` for one labelled crack). This is the confident-learning idea (Northcutt et al.) in its simplest
  form, with calibrated probabilities standing in for per-class thresholds; near 1 the model is sure the label is
  wrong, near 0.5 it cannot tell, which also ranks items near the decision thresholds after the confident ones;
* **annotators doubt the label** (``votes.csv``): ``2 min(q, 1 - q)`` where ``q`` is the share of votes saying
  crack, each annotator's vote weighted by the log-odds of their Dawid-Skene accuracy when there are several
  annotators (a careless annotator's dissent counts for little): 0 when the votes agree, 1 for an even split.
  (The Dawid-Skene posterior itself is reported too, but it is nearly always close to 0 or 1, so it ranks poorly.)

An item's label is the one training uses: its class folder, or the majority of its votes where it has votes
(``votes.csv`` overrides the folder, as in training); items in ``ambiguous/`` without votes have no label to
doubt and are listed as such.

Each item also says why (``reasons``): the model contradicts the label (the runtime verdict is the other class),
the item lies near a threshold (in REVIEW, or within ``near_margin`` of a threshold on the calibrated-logit scale),
annotators disagree, or the item is labelled ambiguous. With several annotators the page adds each one's
reliability (Dawid-Skene) and a table of pairwise agreement (Cohen's kappa).

Outputs: ``OUT/audit.csv`` (every item, ranked) and ``OUT/audit.html`` (a static contact sheet of the top items:
the image as the model sees it and its heatmap, from the model's own CAM output).

Example:
    $ crackscope audit --model model.onnx --data labelled/ --out audit-out
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from crackscope.calibration.annotators import AnnotatorReliability, Kappa, Vote, dawid_skene, pairwise_kappa
from crackscope.calibration.score import Scores, model_tiles, score_samples
from crackscope.calibration.stats import logit
from crackscope.config import replacing
from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import Verdict, is_identity, probability, verdicts
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.overlay import VERDICT_COLOURS, colour_heatmap, normalised_heat
from crackscope.inspect.tiling import upsample_cams
from crackscope.labelled import AMBIGUOUS, CRACK, OK, Clarity, DataConfig, Sample, load_samples, read_votes

CSV_COLUMNS = (
    "rank",
    "item",
    "label",
    "target",
    "probability",
    "verdict",
    "other_class_probability",
    "near_threshold",
    "votes",
    "vote_share_crack",
    "consensus_crack",
    "weighted_share_crack",
    "annotator_doubt",
    "suspicion",
    "reasons",
)


@dataclass(frozen=True)
class AuditConfig:
    """What ``crackscope audit`` does (YAML ``--config`` < flags)."""

    model: str = ""
    data: str = ""
    out: str = ""
    sheet_items: int = 120
    near_margin: float = 1.0  # calibrated logits (a factor e in the odds) from a threshold counts as near
    batch_size: int = 32
    providers: str = "auto"
    threads: int | None = None
    progress: bool = True
    data_config: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.sheet_items < 0 or self.batch_size < 1 or self.near_margin < 0:
            raise ValueError("sheet-items and near-margin must be >= 0, batch-size >= 1")


@dataclass(frozen=True)
class AuditItem:
    """One item's audit row (see the module docstring)."""

    index: int  # position in the dataset's samples
    item: str  # path relative to the data folder, with @x,y,w,h for a patch
    label: str  # crack | ok | ambiguous, as given (votes decide where present)
    target: float
    probability: float
    verdict: Verdict
    other_class_probability: float | None  # None for ambiguous items
    near_threshold: bool
    votes: int
    vote_share_crack: float | None
    consensus_crack: float | None  # Dawid-Skene posterior with several annotators, else None
    weighted_share_crack: float | None  # votes saying crack, weighted by annotator reliability
    annotator_doubt: float  # 0 (votes agree, or no votes) .. 1 (an even split)
    suspicion: float
    reasons: tuple[str, ...]

    def row(self, rank: int) -> dict[str, object]:
        def num(value: float | None) -> str:
            return "" if value is None else f"{value:.6g}"

        return {
            "rank": rank,
            "item": self.item,
            "label": self.label,
            "target": num(self.target),
            "probability": num(self.probability),
            "verdict": self.verdict.value,
            "other_class_probability": num(self.other_class_probability),
            "near_threshold": int(self.near_threshold),
            "votes": self.votes,
            "vote_share_crack": num(self.vote_share_crack),
            "consensus_crack": num(self.consensus_crack),
            "weighted_share_crack": num(self.weighted_share_crack),
            "annotator_doubt": num(self.annotator_doubt),
            "suspicion": num(self.suspicion),
            "reasons": "; ".join(self.reasons),
        }


@dataclass(frozen=True)
class AuditResult:
    """What ``crackscope audit`` found and wrote."""

    out: Path
    items: tuple[AuditItem, ...]  # most suspicious first
    calibration: Calibration
    annotators: tuple[AnnotatorReliability, ...] = ()
    kappas: tuple[Kappa, ...] = ()

    @property
    def csv_path(self) -> Path:
        return self.out / "audit.csv"

    @property
    def html_path(self) -> Path:
        return self.out / "audit.html"

    def describe(self) -> str:
        reasons = Counter(r.split(":")[0] for item in self.items for r in item.reasons)
        flagged = sum(1 for item in self.items if item.reasons)
        lines = [
            f"audited {len(self.items)} items: {flagged} flagged ("
            + ", ".join(f"{name} {count}" for name, count in reasons.most_common())
            + ")",
        ]
        if is_identity(self.calibration):
            lines.append("note: the model is not calibrated; 'near threshold' uses probability 0.5")
        for item in self.items[:5]:
            lines.append(f"  {item.suspicion:.3f}  {item.item}  ({'; '.join(item.reasons) or 'no flag'})")
        if self.annotators:
            lines.append(
                "annotators (Dawid-Skene accuracy): "
                + ", ".join(f"{a.annotator} {_fmt(a.accuracy)}" for a in self.annotators)
            )
        lines.append(f"wrote {self.csv_path} and {self.html_path}")
        return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# --- scoring items ------------------------------------------------------------------------------------------------


def other_class_probability(label: str, p: float) -> float | None:
    """The calibrated probability of the class the label does not name (None for ambiguous items)."""
    if label == CRACK:
        return 1.0 - p
    if label == OK:
        return p
    return None


def annotator_doubt(share_crack: float | None) -> float:
    """``2 min(q, 1 - q)`` for the (weighted) share ``q`` of votes saying crack: 0 unanimous or no votes, 1 even."""
    if share_crack is None:
        return 0.0
    return 2.0 * min(share_crack, 1.0 - share_crack)


def reliability_weight(accuracy: float | None) -> float:
    """An annotator's vote weight: the log-odds of their accuracy, 0 at chance or worse (accuracy capped at 0.99)."""
    if accuracy is None:
        return 1.0
    accuracy = min(accuracy, 0.99)
    return max(0.0, math.log(accuracy / (1.0 - accuracy)))


def weighted_share(cast: Sequence[Vote], weights: dict[str, float]) -> float | None:
    """Share of votes saying crack, each weighted by its annotator's weight (plain share if all weights are 0)."""
    if not cast:
        return None
    total = sum(weights.get(annotator, 1.0) for _, annotator, _ in cast)
    if total <= 0:
        return float(np.mean([vote for _, _, vote in cast]))
    return sum(weights.get(annotator, 1.0) * vote for _, annotator, vote in cast) / total


def near_threshold(raw: float, calibration: Calibration, margin: float) -> bool:
    """Whether a raw logit lies within ``margin`` calibrated logits of ``ok_below`` or ``defect_at_or_above``."""
    scaled = raw / calibration.temperature
    return any(abs(scaled - logit(t)) <= margin for t in (calibration.ok_below, calibration.defect_at_or_above))


def rank_items(
    scores: Scores,
    root: Path,
    calibration: Calibration,
    votes: dict[int, list[Vote]],
    consensus: dict[int, float],
    weights: dict[str, float],
    margin: float,
) -> list[AuditItem]:
    """Audit rows for every scored sample, most suspicious first (ties: higher other-class probability first)."""
    probs = probability(scores.logits, calibration)
    decided = verdicts(probs, calibration)
    items = []
    for index, (sample, raw, p, verdict) in enumerate(zip(scores.samples, scores.logits, probs, decided, strict=True)):
        cast = votes.get(index, [])
        share = float(np.mean([v for _, _, v in cast])) if cast else None
        unlabelled = sample.clarity is Clarity.AMBIGUOUS and not cast
        label = AMBIGUOUS if unlabelled else (CRACK if sample.label else OK)
        other = other_class_probability(label, float(p))
        q = weighted_share(cast, weights)
        doubt = annotator_doubt(q)
        near = verdict is Verdict.REVIEW or near_threshold(float(raw), calibration, margin)
        items.append(
            AuditItem(
                index=index,
                item=_name(sample, root),
                label=label,
                target=sample.target,
                probability=float(p),
                verdict=verdict,
                other_class_probability=other,
                near_threshold=near,
                votes=len(cast),
                vote_share_crack=share,
                consensus_crack=consensus.get(index),
                weighted_share_crack=q,
                annotator_doubt=doubt,
                suspicion=max(other or 0.0, doubt),
                reasons=_reasons(label, verdict, float(p), near, cast, q),
            )
        )
    items.sort(key=lambda i: (-i.suspicion, -(i.other_class_probability or 0.0), i.item))
    return items


def _reasons(label: str, verdict: Verdict, p: float, near: bool, cast: list[float], q: float | None) -> tuple[str, ...]:
    reasons = []
    if (label == CRACK and verdict is Verdict.OK) or (label == OK and verdict is Verdict.DEFECT):
        reasons.append(f"model contradicts the label: {verdict.value} at p={p:.3f}")
    if near:
        reasons.append(f"near a threshold: {verdict.value} at p={p:.3f}")
    says_crack = sum(vote for _, _, vote in cast)
    if cast and 0.0 < says_crack < len(cast):
        reasons.append(f"annotators disagree: {says_crack:.0f} of {len(cast)} say crack (weighted share {q:.2f})")
    if label == AMBIGUOUS:
        reasons.append("labelled ambiguous")
    return tuple(reasons)


def _name(sample: Sample, root: Path) -> str:
    try:
        name = sample.path.relative_to(root).as_posix()
    except ValueError:
        name = str(sample.path)
    return name if sample.box is None else f"{name}@{','.join(map(str, sample.box))}"


# --- votes ----------------------------------------------------------------------------------------------------------


def votes_by_sample(samples: Sequence[Sample], root: Path, votes: Sequence[Vote]) -> dict[int, list[Vote]]:
    """Each sample's votes, matched as training matches them: path relative to the data root, else the file name."""
    by_relative: dict[str, list[int]] = defaultdict(list)
    by_name: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        if sample.path.is_relative_to(root):
            by_relative[sample.path.relative_to(root).as_posix()].append(index)
        by_name[sample.path.name].append(index)
    matched: dict[int, list[Vote]] = defaultdict(list)
    for vote in votes:
        image = vote[0].replace("\\", "/")
        for index in by_relative.get(image) or by_name.get(Path(image).name, []):
            matched[index].append(vote)
    return dict(matched)


def _read_votes(config: AuditConfig, root: Path) -> list[Vote]:
    path = Path(config.data_config.votes) if config.data_config.votes else root / "votes.csv"
    return read_votes(path, config.data_config.class_map) if path.is_file() else []


# --- the command --------------------------------------------------------------------------------------------------


def audit(config: AuditConfig) -> AuditResult:
    """Run ``crackscope audit`` (see the module docstring)."""
    if not config.model or not config.data or not config.out:
        raise ValueError("audit needs --model, --data and --out")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    root = Path(config.data)
    dataset = load_samples(root, config.data_config)
    votes = _read_votes(config, root)
    with OnnxModel(config.model, providers=config.providers, intra_op_threads=config.threads) as model:
        calibration = model.card.calibration
        scores = score_samples(
            model,
            dataset.samples,
            batch_size=config.batch_size,
            keep_cams=True,
            progress=config.progress,
            desc="auditing",
        )
        size = model.input_size
    matched = votes_by_sample(dataset.samples, root, votes)
    annotators: list[AnnotatorReliability] = []
    consensus: dict[int, float] = {}
    if len({annotator for _, annotator, _ in votes}) > 1:
        posterior, annotators = dawid_skene(votes)
        for index, cast in matched.items():
            known = [posterior[v[0]] for v in cast if v[0] in posterior]
            if known:
                consensus[index] = known[0]
    weights = {a.annotator: reliability_weight(a.accuracy) for a in annotators}
    items = rank_items(scores, root, calibration, matched, consensus, weights, config.near_margin)
    result = AuditResult(out, tuple(items), calibration, tuple(annotators), tuple(pairwise_kappa(votes)))
    _write(result, scores, size, config)
    return result


def _write(result: AuditResult, scores: Scores, size: int, config: AuditConfig) -> None:
    result.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rank, item in enumerate(result.items, start=1):
        writer.writerow(item.row(rank))
    with replacing(result.csv_path) as partial:
        partial.write_text(buffer.getvalue(), encoding="utf-8")
    page = _page(result, scores, size, config)
    with replacing(result.html_path) as partial:
        partial.write_text(page, encoding="utf-8")


# --- the contact sheet --------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{margin:0 0 .2rem}.muted{color:#666}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}td.n{text-align:right}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.card .pics{display:flex;background:#111}.card img{width:50%;height:160px;object-fit:contain;display:block}
.card div.t{padding:.4rem;font-size:.82rem;word-break:break-all}
.tag{color:#fff;padding:0 .3rem;border-radius:3px}.OK{background:#4caf50}.REVIEW{background:#ff9800}
.DEFECT{background:#e53935}
"""
THUMB = 160


def _page(result: AuditResult, scores: Scores, size: int, config: AuditConfig) -> str:
    e = html.escape
    shown = result.items[: config.sheet_items]
    c = result.calibration
    calibration = (
        "not calibrated (identity: one threshold at 0.5)"
        if is_identity(c)
        else f"temperature {c.temperature:.4g}; OK below {c.ok_below:.4g}; DEFECT from {c.defect_at_or_above:.4g}"
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>crackscope audit: {e(Path(config.data).name)}</title><style>{_STYLE}</style></head><body>",
        "<h1>Label audit</h1>",
        f"<p class='muted'>model {e(config.model)} ({e(calibration)}) &middot; data {e(config.data)} &middot; "
        f"{len(result.items)} items &middot; full ranking in <a href='audit.csv'>audit.csv</a></p>",
        "<p>Suspicion is the stronger of two signals: the model's calibrated probability of the class the label does "
        "not name, and the annotators' doubt, 2 min(q, 1 - q) for the share q of votes saying crack, each vote "
        "weighted by its annotator's reliability (log-odds of the Dawid-Skene accuracy): 0 when the votes agree, 1 "
        "for an even split.</p>",
        _annotator_tables(result),
        f"<h2>Most suspicious {len(shown)}</h2><p class='muted'>Left: the item as the model sees it; right: its "
        "heatmap (the model's class activation map for crack).</p><div class='sheet'>",
        *(_card(rank, item, scores, size) for rank, item in enumerate(shown, start=1)),
        "</div></body></html>",
    ]
    return "\n".join(parts)


def _annotator_tables(result: AuditResult) -> str:
    if not result.annotators and not result.kappas:
        return ""
    parts = ["<h2>Annotators</h2>"]
    if result.annotators:
        rows = "".join(
            f"<tr><th>{html.escape(a.annotator)}</th><td class='n'>{a.votes}</td>"
            f"<td class='n'>{_fmt(a.sensitivity)}</td><td class='n'>{_fmt(a.specificity)}</td>"
            f"<td class='n'>{_fmt(a.accuracy)}</td>"
            f"<td class='n'>{a.agreement_with_consensus:.3f}</td>"
            f"<td class='n'>{reliability_weight(a.accuracy):.2f}</td></tr>"
            for a in result.annotators
        )
        parts.append(
            "<p>Reliability under the Dawid-Skene model (estimated with each item's true label):</p><table><tr>"
            "<th>annotator</th><th>votes</th><th>sensitivity</th><th>specificity</th><th>accuracy</th>"
            f"<th>agrees with consensus</th><th>vote weight</th></tr>{rows}</table>"
        )
    if result.kappas:
        rows = "".join(
            f"<tr><th>{html.escape(k.first)}</th><th>{html.escape(k.second)}</th><td class='n'>{k.items}</td>"
            f"<td class='n'>{_fmt(k.observed_agreement)}</td><td class='n'>{_fmt(k.kappa)}</td></tr>"
            for k in result.kappas
        )
        parts.append(
            "<p>Pairwise agreement on the items both labelled (Cohen's kappa: 1 perfect, 0 chance):</p><table><tr>"
            f"<th>annotator</th><th>annotator</th><th>items</th><th>agreement</th><th>kappa</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _card(rank: int, item: AuditItem, scores: Scores, size: int) -> str:
    e = html.escape
    sample = scores.samples[item.index]
    tile = model_tiles([sample], size)[0]
    heat = upsample_cams(scores.cams[item.index : item.index + 1], size)[0]
    alpha = (normalised_heat(heat) * 0.6)[:, :, None]
    overlay = (tile * (1.0 - alpha) + colour_heatmap(heat) * alpha).astype(np.uint8)
    border = VERDICT_COLOURS[item.verdict]
    cv2.rectangle(overlay, (0, 0), (size - 1, size - 1), border, max(1, size // 48))
    votes = f" &middot; {item.vote_share_crack * item.votes:.0f} of {item.votes} votes crack" if item.votes else ""
    return (
        f"<div class='card'><div class='pics'><img src='{_jpeg(tile)}' alt='{e(item.item)}'>"
        f"<img src='{_jpeg(overlay)}' alt='heatmap'></div><div class='t'><b>#{rank}</b> suspicion "
        f"{item.suspicion:.3f} &middot; label <b>{e(item.label)}</b> &middot; "
        f"<span class='tag {item.verdict.value}'>{item.verdict.value}</span> p={item.probability:.3f}{votes}<br>"
        f"{e(item.item)}<br><span class='muted'>{e('; '.join(item.reasons) or 'no flag')}</span></div></div>"
    )


def _jpeg(image: np.ndarray) -> str:
    scale = THUMB / max(image.shape[:2])
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    shown = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation) if scale != 1 else image
    ok, data = cv2.imencode(".jpg", shown, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
