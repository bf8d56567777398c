"""``calibration.html``: one self-contained page about a calibration (inline SVG, no scripts, no external files).

It shows the reliability diagram before and after temperature scaling, the score histograms of clear good items,
clear cracks and ambiguous items with both thresholds drawn, the certified rates with their bounds, and where the
ambiguous items landed (OK / REVIEW / DEFECT) against the clear ones. The charts are SVG written here, so the page
needs neither matplotlib nor a browser plug-in, and the package stays installable without the training extras.

Example:
    >>> page = render_report(outcome)            # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

from crackscope.calibration.metrics import Reliability, shares
from crackscope.calibration.outcome import Outcome
from crackscope.calibration.stats import clopper_pearson_lower, clopper_pearson_upper, logit

COLOURS = {"ok": "#43a047", "crack": "#e53935", "ambiguous": "#fb8c00", "before": "#9e9e9e", "after": "#1e88e5"}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa;max-width:1100px}
h1{margin:0 0 .2rem}.muted{color:#666}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}td.n{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}figure{margin:0}figcaption{font-size:.9rem;color:#444;max-width:520px}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#333}
"""
LOGIT_RANGE = 12.0  # histograms show calibrated logits in [-12, 12] (probabilities 6e-6 .. 1 - 6e-6); beyond: edge bins


def render_report(outcome: Outcome) -> str:
    """The page, as a string."""
    e = html.escape
    c = outcome.calibration
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>crackscope calibration: {e(outcome.model.name)}</title><style>{_STYLE}</style></head><body>",
        "<h1>Calibration</h1>",
        f"<p class='muted'>{e(str(outcome.model))} ({e(outcome.card.backbone)}, {outcome.card.input_size} px, "
        f"{e(outcome.card.precision)}) &middot; data {e(str(outcome.data.get('root', '')))} &middot; "
        f"fitted {e(str(c.fitted_on.get('fitted_at', '')))}</p>",
        _summary(outcome),
        "<h2>Charts</h2><div class='charts'>",
        _figure(
            reliability_svg(
                outcome.reliability_before, outcome.reliability_after, outcome.ece_before, outcome.ece_after
            ),
            "Reliability of the crack probability, clear items, 15 bins: observed share of cracks against the mean "
            "predicted probability per bin (dot area: items). Grey: raw sigmoid(logit); blue: after temperature "
            "scaling. On the diagonal = calibrated.",
        ),
        _figure(
            histogram_svg(_groups(outcome), outcome.calibration),
            "Calibrated scores per group (share of the group per bin; axis labelled in probability), with "
            "the thresholds: OK left of the green line, DEFECT right of the red one, REVIEW between (shaded).",
        ),
        "</div>",
        _verdict_table(outcome),
        _guarantee(outcome),
        "</body></html>",
    ]
    return "\n".join(parts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _summary(outcome: Outcome) -> str:
    c, choice, fit = outcome.calibration, outcome.fit.thresholds, outcome.fit.temperature
    rows = [
        ("temperature", f"{c.temperature:.4g}{fit.note}"),
        ("NLL per item (before / after)", f"{fit.nll_before:.4f} / {fit.nll_after:.4f}"),
        ("ECE of clear items, 15 bins (before / after)", f"{outcome.ece_before:.2%} / {outcome.ece_after:.2%}"),
        *_brier_row(outcome.ambiguous_brier),
        ("OK below", f"{c.ok_below:.6g}"),
        ("DEFECT at or above", f"{c.defect_at_or_above:.6g}"),
        ("REVIEW band", "between the two" if choice.review_band else "none: one threshold meets both targets"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Result</h2><table>{body}</table>{_rates(outcome)}"


def _brier_row(brier: tuple[float, float] | None) -> list[tuple[str, str]]:
    if brier is None:
        return []
    what = "Brier score of ambiguous items vs their labellers' share (before / after)"
    return [(what, f"{brier[0]:.3f} / {brier[1]:.3f}")]


def _rates(outcome: Outcome) -> str:
    """Each rate: its guarantee, and what the calibration items show with a two-sided Clopper-Pearson interval."""
    choice, clear = outcome.fit.thresholds, outcome.clear
    confidence = choice.escape.confidence
    n_all = clear.n_crack + clear.n_ok
    rows = [
        ("escape (cracks called OK)", f"<= {choice.escape.target:.4g}", clear.crack["OK"], clear.n_crack),
        (
            "false reject (good items called DEFECT)",
            f"<= {choice.false_reject.target:.4g}",
            clear.ok["DEFECT"],
            clear.n_ok,
        ),
        (
            "review (clear items sent to a person)",
            "as low as the data allows",
            clear.crack["REVIEW"] + clear.ok["REVIEW"],
            n_all,
        ),
    ]
    head = (
        f"<tr><th>rate</th><th>guaranteed, each with {confidence:.0%} confidence</th><th>calibration set</th>"
        f"<th>{confidence:.0%} interval (Clopper-Pearson)</th></tr>"
    )
    body = ""
    for name, guarantee, count, n in rows:
        low, high = _interval(count, n, confidence)
        observed = f"{count} / {n} = {count / n:.2%}" if n else "no items"
        body += (
            f"<tr><th>{html.escape(name)}</th><td>{html.escape(guarantee)}</td><td class='n'>{observed}</td>"
            f"<td class='n'>{low:.2%} .. {high:.2%}</td></tr>"
        )
    certificate = (
        f"Certified on {choice.escape.n} clear cracks and {choice.false_reject.n} clear good items; both "
        f"guarantees together hold with probability at least {choice.joint_confidence:.1%}. The intervals describe "
        "the calibration items at the chosen thresholds (in-sample); the guarantee is the target."
    )
    return f"<table>{head}{body}</table><p class='muted'>{html.escape(certificate)}</p>"


def _interval(count: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval at ``confidence`` (each tail ``(1 - confidence) / 2``; [0, 1] for n = 0)."""
    tail = 1.0 - (1.0 - confidence) / 2.0
    return clopper_pearson_lower(count, n, tail), clopper_pearson_upper(count, n, tail)


def _verdict_table(outcome: Outcome) -> str:
    rows = [("clear good items", outcome.clear.ok), ("clear cracks", outcome.clear.crack)]
    if sum(outcome.ambiguous.values()):
        rows.append(("ambiguous items", outcome.ambiguous))
    head = "<tr><th>items</th><th>n</th><th>OK</th><th>REVIEW</th><th>DEFECT</th></tr>"
    body = ""
    for name, counts in rows:
        share = shares(counts)
        cells = "".join(
            f"<td class='n'>{counts[v]} ({share[v]:.1%})</td>" if share[v] is not None else "<td class='n'>0</td>"
            for v in ("OK", "REVIEW", "DEFECT")
        )
        body += f"<tr><th>{name}</th><td class='n'>{sum(counts.values())}</td>{cells}</tr>"
    ratio = outcome.review_ratio
    note = ""
    if ratio is not None:
        note = (
            "<p>Ambiguous items reach REVIEW; no clear item does.</p>"
            if math.isinf(ratio)
            else f"<p>Ambiguous items reach REVIEW {ratio:.1f}x as often as clear items.</p>"
        )
    return (
        "<h2>Where the items landed (calibration set, in-sample)</h2>"
        f"<table>{head}{body}</table>{note}"
        "<p class='muted'>These are the calibration items themselves; rates on new items differ. The guarantee "
        "is the bound above, not these counts.</p>"
    )


def _guarantee(outcome: Outcome) -> str:
    choice, band = outcome.fit.thresholds, outcome.fit.ambiguous
    ambiguous = (
        "ambiguous items are not part of these two guarantees."
        if band is None
        else f"ambiguous items are not part of these two guarantees; a third one is theirs: with probability at least "
        f"{band.confidence:.0%} over the draw of the {band.n} ambiguous calibration items, at least "
        f"{band.coverage:.0%} of future ambiguous items land in REVIEW (the band was grown from the clear items' cuts "
        f"into the gap between the classes and tested the same way); all three together with probability at least "
        f"{outcome.fit.joint_confidence:.1%}."
    )
    return (
        "<h2>What is guaranteed</h2><p>"
        f"With probability at least {choice.escape.confidence:.0%} over the draw of the calibration items, the share "
        f"of cracked parts the runtime calls OK is at most {choice.escape.target:.4g}; likewise the share of good "
        f"parts called DEFECT is at most {choice.false_reject.target:.4g}; both together with probability at least "
        f"{choice.joint_confidence:.1%}. This holds for future items drawn like the calibration items (same line, "
        "camera and defect mix). Method: Learn-Then-Test over a fixed sequence of raw-logit cuts, each tested with an "
        "exact binomial tail p-value (equivalently, a one-sided Clopper-Pearson bound), stopping at the first cut the "
        f"data cannot vouch for; {html.escape(ambiguous)}</p>"
    )


def _groups(outcome: Outcome) -> list[tuple[str, np.ndarray]]:
    scores = outcome.scores
    clear, labels = scores.clear, scores.labels
    groups = [
        ("ok", scores.logits[clear & (labels == 0)]),
        ("crack", scores.logits[clear & (labels == 1)]),
        ("ambiguous", scores.logits[~clear]),
    ]
    return [(name, values) for name, values in groups if len(values)]


# --- charts -------------------------------------------------------------------------------------------------------

W, H, PAD = 500, 330, 44


def reliability_svg(before: Reliability, after: Reliability, ece_before: float, ece_after: float) -> str:
    """A reliability diagram with both series on one square plot."""
    side = H - 2 * PAD

    def x(value: float) -> float:
        return PAD + value * side

    def y(value: float) -> float:
        return H - PAD - value * side

    parts = [_open(side + 2 * PAD + 200, H), _axes_box(PAD, PAD, side, side)]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f"<text x='{x(tick):.1f}' y='{H - PAD + 15}' text-anchor='middle'>{tick:g}</text>")
        parts.append(f"<text x='{PAD - 6}' y='{y(tick) + 4:.1f}' text-anchor='end'>{tick:g}</text>")
    parts.append(f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(1)}' y2='{y(1)}' stroke='#bbb' stroke-dasharray='4 3'/>")
    for name, rel in (("before", before), ("after", after)):
        filled = rel.counts > 0
        total = max(1, int(rel.counts.sum()))
        points = [
            (x(p), y(s), n) for p, s, n in zip(rel.mean_probability, rel.crack_share, rel.counts, strict=True) if n > 0
        ]
        if filled.any():
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
            parts.append(f"<polyline points='{path}' fill='none' stroke='{COLOURS[name]}' stroke-width='1.5'/>")
        for px, py, n in points:
            radius = 2.0 + 10.0 * math.sqrt(n / total)
            parts.append(
                f"<circle cx='{px:.1f}' cy='{py:.1f}' r='{radius:.1f}' fill='{COLOURS[name]}' fill-opacity='0.45'/>"
            )
    parts.append(f"<text x='{x(0.5)}' y='{H - 8}' text-anchor='middle'>mean predicted crack probability</text>")
    parts.append(
        f"<text x='12' y='{y(0.5)}' text-anchor='middle' transform='rotate(-90 12 {y(0.5)})'>share of cracks</text>"
    )
    legend_x = PAD + side + 16
    for row, (name, ece) in enumerate((("before", ece_before), ("after", ece_after))):
        top = PAD + 10 + 20 * row
        label = "raw" if name == "before" else "temperature-scaled"
        parts.append(f"<rect x='{legend_x}' y='{top - 9}' width='12' height='12' fill='{COLOURS[name]}'/>")
        parts.append(f"<text x='{legend_x + 18}' y='{top + 1}'>{label}: ECE {ece:.2%}</text>")
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(groups: Sequence[tuple[str, np.ndarray]], calibration, bins: int = 48) -> str:
    """Step histograms of calibrated logits per group, the thresholds as lines, the REVIEW band shaded."""
    plot_w, plot_h = W - 2 * PAD, H - 2 * PAD
    edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins + 1)
    heights = []
    for _, raw in groups:
        scaled = np.clip(np.asarray(raw, np.float64) / calibration.temperature, -LOGIT_RANGE, LOGIT_RANGE)
        counts, _ = np.histogram(scaled, edges)
        heights.append(counts / max(1, len(raw)))
    top = 1.08 * max([float(h.max()) for h in heights] + [1e-9])  # a little headroom above the highest bar

    def x(logit: float) -> float:
        return PAD + (np.clip(logit, -LOGIT_RANGE, LOGIT_RANGE) + LOGIT_RANGE) / (2 * LOGIT_RANGE) * plot_w

    def y(share: float) -> float:
        return H - PAD - share / top * plot_h

    parts = [_open(W + 110, H), _axes_box(PAD, PAD, plot_w, plot_h)]
    low, high = logit(calibration.ok_below), logit(calibration.defect_at_or_above)
    if high > low:
        parts.append(
            f"<rect x='{x(low):.1f}' y='{PAD}' width='{x(high) - x(low):.1f}' height='{plot_h}' fill='#ffe0b2' "
            "fill-opacity='0.6'/>"
        )
    for p in (1e-4, 0.01, 0.1, 0.5, 0.9, 0.99, 0.9999):
        parts.append(f"<text x='{x(logit(p)):.1f}' y='{H - PAD + 15}' text-anchor='middle'>{p:g}</text>")
    for (name, _), share in zip(groups, heights, strict=True):
        path = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for left, right, h in zip(edges[:-1], edges[1:], share, strict=True):
            path += [f"{x(left):.1f},{y(h):.1f}", f"{x(right):.1f},{y(h):.1f}"]
        path.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(f"<polyline points='{' '.join(path)}' fill='none' stroke='{COLOURS[name]}' stroke-width='1.6'/>")
    for value, colour, label in ((low, COLOURS["ok"], "OK below"), (high, COLOURS["crack"], "DEFECT from")):
        parts.append(
            f"<line x1='{x(value):.1f}' y1='{PAD}' x2='{x(value):.1f}' y2='{H - PAD}' stroke='{colour}' "
            f"stroke-width='2'><title>{label}</title></line>"
        )
    parts.append(f"<text x='{PAD + plot_w / 2}' y='{H - 8}' text-anchor='middle'>calibrated crack probability</text>")
    parts.append(
        f"<text x='12' y='{PAD + plot_h / 2}' text-anchor='middle' transform='rotate(-90 12 {PAD + plot_h / 2})'>"
        "share of the group</text>"
    )
    legend_x = PAD + plot_w + 12
    for row, (name, raw) in enumerate(groups):
        top_y = PAD + 10 + 20 * row
        parts.append(f"<rect x='{legend_x}' y='{top_y - 9}' width='12' height='12' fill='{COLOURS[name]}'/>")
        parts.append(f"<text x='{legend_x + 18}' y='{top_y + 1}'>{name} ({len(raw)})</text>")
    parts.append("</svg>")
    return "".join(parts)


def _open(width: float, height: float) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' role='img'>"
    )


def _axes_box(left: float, top: float, width: float, height: float) -> str:
    return f"<rect x='{left}' y='{top}' width='{width}' height='{height}' fill='#fff' stroke='#999'/>"
