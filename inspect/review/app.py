"""``crackscope review``: a small local web app where QA reviews decisions with their heatmaps and relabels them.

Pages (server-rendered Flask templates in ``templates``, one CSS and one JS file, no build step):

* ``/``: the queue (REVIEW, the most uncertain first, then DEFECT by score, then a random sample of OK; unreviewed
  items unless another status is chosen; scores with the digits that order them, ``readable_probability``), with
  counts and filters by verdict, review status, time, source and model id. It polls ``/api/summary`` and offers a
  reload when a daemon adds records (every page reads the live ``results.sqlite``).
* ``/item/<id>``: the frame with its heatmap stacked on top (opacity slider, toggle), region boxes, the score of
  each tile under the pointer, the model id and the calibration in force, the decisions so far, and buttons with
  keyboard shortcuts: ``o`` ok, ``d`` defect, ``a`` ambiguous (each saves and moves to the next item), ``n`` next,
  ``p`` previous, ``h`` heatmap on or off; ``m`` (or its button) to drag a box round a defect (one the model
  missed, or where it is), stored in pixels of the original frame and drawn over it with the other reviewers'
  marks.
* ``/stats``: reviewed counts, agreement with the model per verdict, and the escape and false-reject rates the
  decisions imply against the calibration's targets (:mod:`.stats`).

Decisions and marks go to their own tables in the same SQLite file; the records are never changed (:mod:`.store`).

``--results`` may be the URL of a plant's PostgreSQL store (``postgresql://...``): the app then serves every line
that writes there, with a line filter in the queue, and shows the images saved under ``--artefacts DIR`` (the folder
the writers were given, e.g. a network folder they share; without it, pages show the scores but no pictures).

Security: the server binds 127.0.0.1 unless told otherwise, and refuses to bind any other address without an
access token (asked for once per browser, then kept in a cookie). Only image files inside the results folder are
served (no ``..``, absolute paths, symlinks out or hard links), and pages show downsized copies of them
(:func:`_view`); redirects go only to paths on this server (:func:`local_target`). Every change is a POST carrying
the page's form token, from the same origin; requests naming another Host are refused (DNS rebinding), and pages
may not be framed.

Example:
    $ crackscope review --results runs/line3
    $ crackscope review --results postgresql://qa@db.plant/crackscope --artefacts /mnt/plant-artefacts
    $ crackscope review --results runs/line3 --host 0.0.0.0 --port 8765 --token "$(openssl rand -hex 16)"
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import math
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import cv2
import numpy as np
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from crackscope.inspect.database import is_database_url, redact
from crackscope.inspect.decision import Verdict, log_odds, readable_probability, review_reason
from crackscope.inspect.review.stats import review_stats
from crackscope.inspect.review.store import (
    MIN_MARK_SIDE,
    STATUS_CHOICES,
    VERDICT_CHOICES,
    Label,
    QueueFilter,
    ReviewError,
    ReviewStore,
    clean_reviewer,
)

DEFAULT_PORT = 8765
SERVED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})  # what a browser can show
REVIEWER_COOKIE, TOKEN_COOKIE = "crackscope_reviewer", "crackscope_token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
_KEYS = {Label.OK: "o", Label.DEFECT: "d", Label.AMBIGUOUS: "a"}
_FILTER_KEYS = ("verdict", "status", "since", "until", "source", "model", "line")
VIEW_SIDES = {"thumb": 360, "screen": 1600}  # longest side of the downsized copies pages show (px)
VIEW_CACHE = 256  # downsized copies kept in memory (a 1600 px JPEG is about 0.3 MB, a thumbnail 20 kB)


@dataclass(frozen=True)
class ReviewConfig:
    """What ``crackscope review`` serves, and where."""

    results: str = ""  # a results folder, or the postgresql:// URL of a plant store
    artefacts: str | None = None  # with a PostgreSQL store: the folder its writers saved images in
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port
    token: str | None = None  # required by every request when set; required to bind a non-loopback address
    ok_sample: int = 50  # OK records the queue samples for review
    page_size: int = 60


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(config: ReviewConfig) -> None:
    """Refuse what must not start: no results store, or a reachable address without a token."""
    if not is_loopback(config.host) and not config.token:
        raise ReviewError(
            f"refusing to serve on {config.host} without an access token: anyone who can reach it could read the "
            "images and change decisions; add --token SECRET (or keep the default --host 127.0.0.1)"
        )
    if config.token is not None and len(config.token) < 8:
        raise ReviewError("--token must be at least 8 characters")
    if isinstance(config.port, bool) or not isinstance(config.port, int) or not 0 <= config.port <= 65535:
        raise ReviewError(f"--port must be a whole number from 0 (any free port) to 65535, got {config.port!r}")
    if config.ok_sample < 0 or config.page_size < 1:
        raise ReviewError("ok_sample must be at least 0 and page_size at least 1")
    if config.artefacts and not is_database_url(config.results):
        raise ReviewError("--artefacts is for a PostgreSQL --results; a results folder holds its own images")
    if config.artefacts and not Path(config.artefacts).is_dir():
        raise ReviewError(f"--artefacts {config.artefacts} is not a folder")
    with ReviewStore(config.results):  # a usable store (and the decision tables, created once here)
        pass


# --- the app ----------------------------------------------------------------------------------------------------


def create_app(config: ReviewConfig, port: int | None = None) -> Flask:
    """The review app over ``config.results`` (``port``: the port actually bound, for the Host check)."""
    check_config(config)
    app = Flask(__name__, template_folder="templates", static_folder="static", static_url_path="/static")
    app.url_map.merge_slashes = False  # "/files//etc/passwd" must reach the path check, not a redirect
    app.config.update(
        REVIEW=config,
        RESULTS=images_root(config),
        STORE_NAME=redact(config.results) if is_database_url(config.results) else str(Path(config.results).resolve()),
        FORM_TOKEN=secrets.token_urlsafe(32),
        ALLOWED_HOSTS=_allowed_hosts(config.host, port if port is not None else config.port),
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.jinja_env.globals.update(
        verdicts=[v.value for v in Verdict],
        verdict_choices=VERDICT_CHOICES,
        status_choices=STATUS_CHOICES,
        labels=list(Label),
        keys=_KEYS,
        screen_side=VIEW_SIDES["screen"],
        min_mark_side=MIN_MARK_SIDE,
        short=lambda model_id: (model_id or "")[:12],
        when=lambda time: (time or "").replace("T", " ")[:19] + " UTC" if time else "",
        percent=lambda value: "—" if value is None else f"{100 * value:.1f}%",
        prob=readable_probability,
        odds=lambda value: f"{log_odds(value):+.1f}",
        filename=lambda source: (
            Path(source.split("#")[0]).name + ("#" + source.split("#", 1)[1] if "#" in source else "")
        ),
    )
    app.context_processor(_page_context)
    app.before_request(_guard)
    app.after_request(_headers)
    app.teardown_appcontext(_close_store)
    app.register_error_handler(ReviewError, lambda error: _message(400, "Cannot do that", str(error)))
    for code, title in ((404, "Not found"), (405, "Method not allowed"), (413, "Request too large")):
        app.register_error_handler(code, lambda error, code=code, title=title: _message(code, title, error.description))
    _routes(app)
    return app


def images_root(config: ReviewConfig) -> Path | None:
    """The folder the records' image paths are relative to: the results folder, or a plant store's ``--artefacts``
    (None: no images to serve)."""
    if is_database_url(config.results):
        return Path(config.artefacts).resolve() if config.artefacts else None
    return Path(config.results).resolve()


def _allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """Host headers accepted on a loopback server (None: any, the token guards a reachable one)."""
    if not is_loopback(host):
        return None
    names = {host, "127.0.0.1", "localhost", "[::1]"} | ({f"[{host}]"} if ":" in host else set())
    return frozenset(f"{name}:{port}".lower() for name in names)


def _store() -> ReviewStore:
    if "store" not in g:
        g.store = ReviewStore(current_config().results, create=False)
    return g.store


def _close_store(_: BaseException | None) -> None:
    store = g.pop("store", None)
    if store is not None:
        store.close()


def current_config() -> ReviewConfig:
    return current_app.config["REVIEW"]


def _guard() -> Response | None:
    """Host check, access token, and the form token and origin of every POST."""
    # Refusals before the token is checked are plain pages: they must not carry the form token.
    allowed = current_app.config["ALLOWED_HOSTS"]
    if allowed is not None and request.host.lower() not in allowed:
        return _refusal(400, "This server answers only on the address it was started with.")
    token = current_config().token
    if token is not None:
        offered = request.args.get("token")
        if offered is not None and _same(offered, token):
            query = {k: v for k, v in request.args.items() if k != "token"}
            target = local_target(request.path + ("?" + urlencode(query) if query else "")) or "/"
            response = redirect(target, 303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return response
        held = request.cookies.get(TOKEN_COOKIE) or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not _same(held, token):
            return _refusal(401, "Access token needed: open the address printed when the server started.")
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != request.host.lower():
            return _message(403, "Refused", "This form was sent from another site.")
        if not _same(request.form.get("csrf"), current_app.config["FORM_TOKEN"]):
            return _message(403, "Refused", "The form is out of date: reload the page and try again.")
    return None


def _same(offered: str | None, expected: str) -> bool:
    """Constant-time comparison that also takes missing and non-ASCII input."""
    return hmac.compare_digest((offered or "").encode("utf-8"), expected.encode("utf-8"))


def _refusal(code: int, text: str) -> Response:
    return Response(f"<!doctype html><title>crackscope review</title><p>{text}</p>", code, mimetype="text/html")


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; img-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _message(code: int, title: str, text: str | None) -> tuple[str, int]:
    return render_template("message.html", title=title, text=text or "", code=code), code


# --- routes -----------------------------------------------------------------------------------------------------


def _routes(app: Flask) -> None:
    app.add_url_rule("/", "queue", _queue_page)
    app.add_url_rule("/item/<result_id>", "item", _item_page)
    app.add_url_rule("/item/<result_id>/decision", "decide", _decide, methods=["POST"])
    app.add_url_rule("/item/<result_id>/mark", "mark", _add_mark, methods=["POST"])
    app.add_url_rule("/item/<result_id>/mark/<int:mark_id>/remove", "remove_mark", _remove_mark, methods=["POST"])
    app.add_url_rule("/reviewer", "reviewer", _set_reviewer, methods=["POST"])
    app.add_url_rule("/stats", "stats", _stats_page)
    app.add_url_rule("/files/<path:relpath>", "files", _file)
    app.add_url_rule("/view/<size>/<path:relpath>", "view", _view)
    app.add_url_rule("/heat/<result_id>.png", "heat", _heat)
    app.add_url_rule("/api/summary", "summary", _summary)


def _selection() -> QueueFilter:
    args = request.args
    return QueueFilter(
        verdict=args.get("verdict") or "queue",
        status=args.get("status") or "unreviewed",
        since=(args.get("since") or "").strip(),
        until=(args.get("until") or "").strip(),
        source=(args.get("source") or "").strip(),
        model_id=(args.get("model") or "").strip(),
        ok_sample=current_config().ok_sample,
        line=(args.get("line") or "").strip(),
    )


def _filter_args() -> dict[str, str]:
    """The filters of this request that are set, to carry over in links."""
    return {k: request.args[k] for k in _FILTER_KEYS if request.args.get(k)}


def _reviewer() -> str | None:
    try:
        return clean_reviewer(request.cookies.get(REVIEWER_COOKIE, ""))
    except ReviewError:
        return None


def _page_context() -> dict[str, Any]:
    """What every page (the error pages too) needs: the reviewer, the form token, the filters, the folder."""
    return {
        "reviewer": _reviewer(),
        "csrf": current_app.config["FORM_TOKEN"],
        "filters": _filter_args(),
        "store_name": current_app.config["STORE_NAME"],
    }


def _queue_page() -> str:
    store, selection = _store(), _selection()
    counts = store.counts(selection)
    size = store.queue_size(selection, counts)
    pages = max(1, math.ceil(size / current_config().page_size))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    rows = store.queue(selection, (page - 1) * current_config().page_size, current_config().page_size, counts)
    return render_template(
        "queue.html",
        rows=rows,
        size=size,
        page=page,
        pages=pages,
        selection=selection,
        counts=counts,
        models=store.model_ids(),
        lines=store.lines(),
        last_rowid=store.last_rowid(),
    )


def _item_page(result_id: str) -> str:
    store = _store()
    record = store.record(result_id)
    if record is None:
        abort(404, "No such record in this results folder.")
    around = store.neighbours(_selection(), result_id)
    reviewer = _reviewer()
    decisions = store.decisions(result_id)
    saved_id = request.args.get("saved")
    saved = next((d for d in store.decisions(saved_id) if d.reviewer == reviewer), None) if saved_id else None
    calibration = store.calibration_for(record.model_id)
    return render_template(
        "item.html",
        record=record,
        files={k: _servable(getattr(record, f"{k}_path")) for k in ("image", "overlay", "heatmap")},
        shown={k: _servable(getattr(record, f"{k}_path"), "screen") for k in ("image", "overlay")},
        decisions=decisions,
        mine=next((d.label for d in decisions if d.reviewer == reviewer), None),
        history=store.history(result_id),
        calibration=calibration,
        reason=_reason(record, calibration),
        previous=around.previous,
        following=around.following,
        position=around.position,
        queue_size=around.size,
        saved=saved,
        saved_record=store.record(saved_id) if saved else None,
        tiles=[list(t) for t in record.tiles],
        regions=list(record.regions),
        marks=store.marks(result_id),
    )


def _reason(record: Any, calibration: Any) -> str | None:
    """Why a REVIEW record is one: as stored when it was decided, else (records of schema version 1) worked out
    again with :func:`~crackscope.inspect.decision.review_reason` when its calibration is known."""
    if record.reason:
        return record.reason
    if calibration is None or record.score is None or record.verdict is not Verdict.REVIEW:
        return None
    return review_reason(record.score, [tile[4] for tile in record.tiles], calibration)


def _decide(result_id: str) -> Response:
    reviewer = _reviewer()
    if reviewer is None:
        raise ReviewError("Enter your name (top right) before deciding: each decision is stored with it.")
    try:
        label = Label(request.form.get("label", ""))
    except ValueError:
        raise ReviewError("A decision is ok, defect or ambiguous.") from None
    store = _store()
    around = store.neighbours(_selection(), result_id)  # before deciding: a status filter may drop it from the queue
    following = around.following if around.position is not None else None
    store.decide(result_id, reviewer, label)
    target = following or result_id
    return redirect(url_for("item", result_id=target, saved=result_id, **_filter_args()), 303)


def _add_mark(result_id: str) -> Response:
    """Store a box round a defect region (form fields x, y, w, h: pixels of the original frame)."""
    reviewer = _marking_reviewer()
    box = [_pixels(name) for name in ("x", "y", "w", "h")]
    _store().add_mark(result_id, reviewer, box)
    return _back_to_item(result_id)


def _remove_mark(result_id: str, mark_id: int) -> Response:
    reviewer = _marking_reviewer()
    store = _store()
    if mark_id not in {mark.id for mark in store.marks(result_id)}:
        abort(404, "No such mark on this item (it may have been removed already).")
    store.remove_mark(mark_id, reviewer)
    return _back_to_item(result_id)


def _marking_reviewer() -> str:
    reviewer = _reviewer()
    if reviewer is None:
        raise ReviewError("Enter your name (top right) before marking: each mark is stored with it.")
    return reviewer


def _pixels(name: str) -> float:
    """A form field that is a number of pixels (400 with one line when it is not)."""
    value = request.form.get(name, "").strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ReviewError(f"{name} must be a number of pixels of the original frame, got {value[:40]!r}")
    return number


def _back_to_item(result_id: str) -> Response:
    """To the form's ``next`` when it stays on this server, else back to the item with the same filters."""
    target = local_target(request.form.get("next", "")) or url_for("item", result_id=result_id, **_filter_args())
    return redirect(target, 303)


def _set_reviewer() -> Response:
    name = clean_reviewer(request.form.get("name", ""))
    target = local_target(request.form.get("next", "")) or url_for("queue")
    response = redirect(target, 303)
    response.set_cookie(REVIEWER_COOKIE, name, max_age=365 * 24 * 3600, httponly=True, samesite="Strict")
    return response


def local_target(target: str) -> str | None:
    """``target`` when a browser sent there stays on this server, else None.

    A local target is an absolute path: one ``/``, then no ``/`` or ``\\`` (which browsers read as ``//``: another
    host), and only printable ASCII. Browsers drop tabs and newlines from a URL before reading it, so ``/``, a
    tab, then ``/evil.example`` is ``//evil.example`` to them; and a newline cannot go into a ``Location`` header.
    """
    if not target.startswith("/") or target[1:2] in ("/", "\\"):
        return None
    if any(not 0x20 < ord(char) < 0x7F for char in target) or "\\" in target:
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc else target


def _stats_page() -> str:
    store = _store()
    models = store.model_ids()
    current = store.meta().get("model_id")
    model_id = request.args.get("model") or (current if current in models else (models[-1] if models else ""))
    if model_id and model_id not in models:
        matches = [m for m in models if m.startswith(model_id)]
        model_id = matches[0] if len(matches) == 1 else model_id
    calibration = store.calibration_for(model_id) if model_id else None
    stats = review_stats(model_id, store.verdict_totals(model_id), store.reviewed(model_id), calibration)
    return render_template("stats.html", stats=stats, models=models, model_id=model_id, calibration=calibration)


def _summary() -> Response:
    store = _store()
    counts = store.counts(QueueFilter(verdict="all"))
    return jsonify(last_rowid=store.last_rowid(), counts={k: v["records"] for k, v in counts.items()})


def _file(relpath: str) -> Response:
    path = served_file(current_app.config["RESULTS"], relpath)
    if path is None:
        abort(404, "No such image in this results folder.")
    response = send_file(path, conditional=True, max_age=3600)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _view(size: str, relpath: str) -> Response:
    """An image of the results folder downsized for a page (``thumb`` for the queue, ``screen`` for an item), as
    JPEG; one already that small is sent as it is. The full-size file stays at ``/files/``."""
    side = VIEW_SIDES.get(size)
    path = served_file(current_app.config["RESULTS"], relpath)
    if side is None or path is None:
        abort(404, "No such image in this results folder.")
    stat = path.stat()
    data = _downsized(str(path), stat.st_mtime_ns, stat.st_size, side, "jpeg")
    if data is None:
        response = send_file(path, conditional=True, max_age=3600)
    else:
        response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _heat(result_id: str) -> Response:
    """The record's saved colour heatmap with cold areas transparent, to lay over the frame (at most the
    ``screen`` size: it is stretched over the frame's picture by the page)."""
    record = _store().record(result_id)
    path = served_file(current_app.config["RESULTS"], record.heatmap_path or "") if record is not None else None
    stat = path.stat() if path is not None else None
    png = _downsized(str(path), stat.st_mtime_ns, stat.st_size, VIEW_SIDES["screen"], "heat") if stat else None
    if png is None:
        abort(404, "No heatmap saved for this record.")
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@functools.lru_cache(maxsize=VIEW_CACHE)
def _downsized(path: str, mtime_ns: int, size: int, side: int, kind: str) -> bytes | None:
    """``path`` with its longest side at most ``side`` px: JPEG (``kind`` ``jpeg``; None when the file is already
    that small or cannot be read) or a transparent heatmap PNG (``heat``). Keyed by the file's modification time
    and size too, so a file written again is read again."""
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    scale = side / max(image.shape[:2])
    if scale < 1.0:
        width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    elif kind == "jpeg":
        return None
    if kind == "heat":
        ok, data = cv2.imencode(".png", transparent_heatmap(image))
    else:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return data.tobytes() if ok else None


def transparent_heatmap(heat: np.ndarray) -> np.ndarray:
    """BGRA: a JET-coloured heatmap whose alpha follows its heat (blue = cold = clear, red = hot = opaque).

    The saved heatmap (:func:`~crackscope.inspect.overlay.colour_heatmap`) has no alpha; JET's hue runs from blue
    (120 in OpenCV's 0-180 scale) at the coldest to red (0) at the hottest, so the hue gives the heat back.
    """
    hue = cv2.cvtColor(heat, cv2.COLOR_BGR2HSV)[:, :, 0].astype(np.float32)
    hue[hue > 150] = 0.0  # reds just past 0 wrap round to 179
    level = np.clip((120.0 - hue) / 120.0, 0.0, 1.0)
    alpha = np.clip((level - 0.1) / 0.9, 0.0, 1.0)
    return np.dstack([heat, (alpha * 255.0 + 0.5).astype(np.uint8)])


def served_file(root: Path | None, relpath: str) -> Path | None:
    """The image file ``relpath`` names inside ``root``, or None for anything else (and for no ``root``).

    Refused: absolute paths, ``..`` and empty segments, backslashes, NUL, paths that resolve (through symlinks)
    outside ``root``, files with more than one hard link (a hard link is another name for a file anywhere on the
    same disk, and nothing crackscope writes has one), and files that are not images (``results.sqlite`` stays
    private).
    """
    if root is None or not relpath or relpath.startswith("/") or "\\" in relpath or "\x00" in relpath:
        return None
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        return None
    try:
        resolved = (root / relpath).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file() or resolved.suffix.lower() not in SERVED_SUFFIXES:
        return None
    try:
        if resolved.stat().st_nlink != 1:
            return None
    except OSError:
        return None
    return resolved


def _servable(relpath: str | None, size: str | None = None) -> str | None:
    """The URL of a saved image when the file is there to serve (``size``: its downsized copy, :func:`_view`),
    else None (the page shows what it has)."""
    if not relpath or served_file(current_app.config["RESULTS"], relpath) is None:
        return None
    return url_for("files", relpath=relpath) if size is None else url_for("view", size=size, relpath=relpath)


# --- serving ----------------------------------------------------------------------------------------------------


class ReviewServer:
    """The review app on a real HTTP server in a background thread (a context manager; tests and the CLI)."""

    def __init__(self, config: ReviewConfig) -> None:
        check_config(config)
        self.config = config
        self._server: BaseWSGIServer = make_server(
            config.host, config.port, _placeholder, threaded=True, request_handler=_QuietHandler
        )
        self.port = int(self._server.server_port)
        self._server.app = create_app(config, port=self.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The address to open first: it carries the token when one is required."""
        return self.url + (f"?token={self.config.token}" if self.config.token else "")

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="review-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _QuietHandler(WSGIRequestHandler):
    """No log line per request (errors are still logged)."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def _placeholder(environ: dict, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def serve(config: ReviewConfig) -> None:
    """Serve until Ctrl-C (``crackscope review``)."""
    server = ReviewServer(config)
    name = redact(config.results) if is_database_url(config.results) else Path(config.results).resolve()
    print(f"crackscope review: {name} on {server.login_url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
