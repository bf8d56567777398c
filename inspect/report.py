"""``report.html``: one static page per results folder (no server, no external assets).

Counts per verdict, the model and the calibration in force, a gallery of the saved overlays sorted by score (most
suspicious first), each linking to its full-size image, and the inputs that could not be inspected with the reason.
When the inputs' folder names give labels (``crack/``, ``ok/``, ``ambiguous/``), a table counts labels against
verdicts, so one can see where the ambiguous items went. Paths are relative, so the folder can be zipped and mailed.

Example:
    >>> with ResultStore("runs/line3") as store:       # doctest: +SKIP
    ...     write_report(store, Path("runs/line3"))
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from crackscope.inspect.card import ModelCard
from crackscope.inspect.decision import Verdict, readable_probability
from crackscope.inspect.results import InspectionResult, utc_now
from crackscope.inspect.schema import RecordFilter
from crackscope.inspect.sinks import ResultStore

GALLERY_LIMIT = 500  # overlays shown; the store holds them all
LABEL_FOLDERS = ("crack", "ok", "ambiguous")  # an input under a folder of this name is labelled with it
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{margin:0 0 .2rem}.muted{color:#666}.counts{display:flex;gap:1rem;margin:1rem 0}
.count{padding:.6rem 1rem;border-radius:6px;color:#fff;min-width:6rem}.count b{display:block;font-size:1.6rem}
.OK{background:#4caf50}.REVIEW{background:#ff9800}.DEFECT{background:#e53935}.ERROR{background:#757575}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.card img{width:100%;height:180px;object-fit:contain;background:#111;display:block}
.card div{padding:.4rem;font-size:.85rem;word-break:break-all}.tag{color:#fff;padding:0 .3rem;border-radius:3px}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
"""


def write_report(
    store: ResultStore,
    out: Path,
    *,
    path: Path | None = None,
    selection: RecordFilter | None = None,
    meta: dict | None = None,
) -> Path:
    """Write ``out/report.html`` (or ``path``) from the store's records (those ``selection`` picks: in a plant store,
    one line's and station's), atomically, and return its path. Image links are relative to ``out``. ``meta`` (model
    id, path and card) stands in for the store's, which in a plant store names no one model."""
    records = list(store.records(selection))
    page = _page(records, store.counts(selection), meta if meta is not None else store.meta(), out)
    path = path or out / "report.html"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path


def _page(records: list[InspectionResult], counts: dict[str, int], meta: dict, out: Path) -> str:
    e = html.escape
    card = _card(meta)
    shown = sorted((r for r in records if r.overlay_path), key=lambda r: (-r.verdict.severity, -(r.score or 0.0)))
    errors = [r for r in records if r.verdict is Verdict.ERROR]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>crackscope report: {e(out.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Inspection report</h1><p class='muted'>{e(str(out.resolve()))} &middot; {len(records)} record(s) "
        f"&middot; written {e(utc_now())}</p>",
        "<div class='counts'>",
        *(f"<div class='count {v}'><b>{counts.get(v, 0)}</b>{v}</div>" for v in (x.value for x in Verdict)),
        "</div>",
        _model_section(meta, card),
        _label_section(records),
        f"<h2>Saved overlays ({len(shown)}{', first ' + str(GALLERY_LIMIT) if len(shown) > GALLERY_LIMIT else ''})"
        "</h2><p class='muted'>Most severe first, then by score. Click an image for full size.</p>",
        "<div class='gallery'>",
        *(_tile(r) for r in shown[:GALLERY_LIMIT]),
        "</div>",
    ]
    if errors:
        parts += [
            f"<h2>Not inspected ({len(errors)})</h2><table><tr><th>input</th><th>reason</th></tr>",
            *(f"<tr><td>{e(r.source)}</td><td>{e(r.error or '')}</td></tr>" for r in errors),
            "</table>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def folder_label(source: str) -> str | None:
    """The label an input's nearest enclosing ``crack/``, ``ok/`` or ``ambiguous/`` folder gives it, if any."""
    for part in reversed(Path(source).parts[:-1]):
        if part.lower() in LABEL_FOLDERS:
            return part.lower()
    return None


def _label_section(records: list[InspectionResult]) -> str:
    """Counts of label (from folder names) x verdict; nothing when no input lies under a label folder."""
    labels = [folder_label(r.source) for r in records]
    if not any(labels):
        return ""
    verdicts = [v.value for v in Verdict]
    table: dict[str, dict[str, int]] = {}
    for label, record in zip(labels, records, strict=True):
        row = table.setdefault(label or "unlabelled", dict.fromkeys(verdicts, 0))
        row[record.verdict.value] += 1
    head = "".join(f"<th>{v}</th>" for v in verdicts)
    body = ""
    for label in (*LABEL_FOLDERS, "unlabelled"):
        if label not in table:
            continue
        row = table[label]
        total = sum(row.values())
        cells = "".join(f"<td>{row[v]}</td>" for v in verdicts)
        body += f"<tr><th>{label}</th>{cells}<td>{total}</td><td>{row['REVIEW'] / total:.1%}</td></tr>"
    return (
        "<h2>Labels from folder names</h2><table>"
        f"<tr><th>label</th>{head}<th>total</th><th>share in REVIEW</th></tr>{body}</table>"
    )


def _card(meta: dict) -> ModelCard | None:
    try:
        return ModelCard.from_metadata(meta["card"]) if isinstance(meta.get("card"), dict) else None
    except ValueError:
        return None


def _model_section(meta: dict, card: ModelCard | None) -> str:
    e = html.escape
    rows = [("model", str(meta.get("model_path", "?"))), ("model id (sha256)", str(meta.get("model_id", "?")))]
    if card is not None:
        c = card.calibration
        rows += [
            ("backbone / input / precision", f"{card.backbone} / {card.input_size} px / {card.precision}"),
            ("calibration", f"{c.method}; temperature {c.temperature:.4g}"),
            ("verdicts", f"OK below {c.ok_below:.4f}; DEFECT at or above {c.defect_at_or_above:.4f}; REVIEW between"),
        ]
        if c.targets:
            rows.append(("targets", ", ".join(f"{k} {v}" for k, v in c.targets.items())))
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Model and calibration in force</h2><table>{body}</table>"


def _tile(record: InspectionResult) -> str:
    e = html.escape
    link = e(record.overlay_path or "")
    score = "" if record.score is None else f" {readable_probability(record.score)}"
    regions = f" &middot; {len(record.regions)} region(s)" if record.regions else ""
    return (
        f"<div class='card'><a href='{link}'><img loading='lazy' src='{link}' alt='{e(record.source)}'></a>"
        f"<div><span class='tag {record.verdict.value}'>{record.verdict.value}{score}</span>{regions}<br>"
        f"{e(record.source)}</div></div>"
    )
