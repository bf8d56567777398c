"""The camera daemon: a source inspected without end, every result in the same store as batch runs.

The loop is source -> trigger -> :func:`~crackscope.inspect.pipeline.inspect_frames` ->
:func:`~crackscope.inspect.sinks.record_inspection` -> :meth:`ResultStore.add` (one transaction per small batch of
frames already waiting), then the source is told the frame is done (a hot-folder file moves to ``processed/``).
DEFECT and REVIEW frames are saved with heatmap and overlay under ``OUT/review/``. Frames of a video file and
files of a hot folder whose ``(source, sha256)`` is already stored are skipped, so a restart does not inspect them
twice. A frame the pipeline cannot take gets its own ERROR record and the others of its batch are inspected one by
one, so no input stops the line or spoils its neighbours. The results folder is locked for the run
(:class:`~crackscope.inspect.runs.OutputLock`): a second daemon or batch run on it is refused with one line.

``out`` may also be the URL of a plant's PostgreSQL store that many daemons and batch workers write at once
(:func:`~crackscope.inspect.runs.check_output`): saved images then go to ``artefacts``, records are tagged with
``line`` and ``station`` (the host name unless given), nothing is locked, and a restarted server is reconnected to
(the batch in flight is stored once).

SIGTERM and SIGINT finish the frames in flight, flush, and return; a video file source returns at its end. While it
runs, ``/healthz`` and Prometheus ``/metrics`` are served on 127.0.0.1 when a metrics port is given.

Example:
    >>> config = DaemonConfig(source="line.avi", model="model.onnx", out="results", metrics_port=0)
    >>> summary = run_daemon(config)                                      # doctest: +SKIP
    >>> summary.describe()["inspected"]                                   # doctest: +SKIP
    120
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crackscope.config import ConfigError, from_dict, merge, write_yaml
from crackscope.inspect.bench import choose_layout
from crackscope.inspect.database import is_database_url
from crackscope.inspect.decision import Verdict, describe_calibration, is_identity
from crackscope.inspect.line import LineOutputs, MqttConfig, OpcUaConfig, record_id_for
from crackscope.inspect.model import Layout, RuntimeModel, open_model
from crackscope.inspect.pipeline import InspectConfig, describe_mode
from crackscope.inspect.records import Input, frames_to_records
from crackscope.inspect.results import InspectionResult
from crackscope.inspect.runs import Output, OutputLock, check_label, check_output, stop_on_signals
from crackscope.inspect.sinks import ResultStore, SavePolicy, StoreUnavailable, remove_partials
from crackscope.inspect.sources import (
    Backoff,
    Frame,
    FrameSource,
    HotFolderConfig,
    Policy,
    SourceOptions,
    SourceSpec,
    SourceState,
    open_source,
    parse_source,
    redact_url,
)
from crackscope.inspect.telemetry import HealthServer, RunSummary, Telemetry
from crackscope.inspect.trigger import FrameGate, TriggerConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "daemon.yaml"


@dataclass(frozen=True)
class DaemonConfig:
    """Everything one daemon run needs (defaults < ``--config`` YAML < flags); saved as ``OUT/daemon.yaml``.

    Attributes:
        source: camera index, video file, RTSP/HTTP URL, or hot folder.
        model: the ONNX model written by ``crackscope export``.
        out: results folder (the same store as batch runs), or the ``postgresql://`` URL of a plant store.
        artefacts: with a PostgreSQL ``out``: the local folder for saved images and this config (required there).
        line, station: what the records are tagged with: the production line (required with a PostgreSQL ``out``)
            and the station, camera or machine (with a PostgreSQL ``out``, the host name unless given).
        policy: ``latest`` (drop stale frames) or ``every``; unset: ``every`` for files, ``latest`` for live sources.
        queue_size: frames the reader may read ahead of the inspector (``every``).
        realtime: video files only: deliver frames at the file's frame rate, as a camera would (replays, benchmarks).
        batch_frames: most frames inspected (and stored) together, taken only from frames already waiting.
        trigger: inspect every frame, one per interval, or only frames that changed (cameras and videos).
        reconnect: backoff between attempts to (re)open a source.
        hot_folder: settle time, polling, and what happens to inspected files.
        inspect: tiling and decision options (overlap, max_batch, roi, skip_uniform_std, ...), and the mode:
            ``tiled``, or ``dense`` (the dense graph beside the model, behind its agreement gate; ``force_dense``).
        save: which frames get image, overlay and heatmap in ``OUT/review/``: ``defect`` (DEFECT and REVIEW),
            ``all`` or ``none``.
        save_frame: also save the frame itself, not only overlay and heatmap.
        metrics_host, metrics_port: where ``/healthz`` and ``/metrics`` are served; port 0 picks a free one;
            unset: no HTTP server.
        providers: ONNX Runtime providers (``auto``, ``cpu``, ``cuda``, ...).
        session_workers: ONNX Runtime sessions fed from one queue of tile batches (``crackscope bench`` measures
            which layout is fastest on the machine at hand). Unset, and ``threads`` unset too: the layout
            ``crackscope bench`` saved beside the model for this machine when it matches this model file (logged, as
            is why a saved one was not used), else 1 (see :func:`~crackscope.inspect.bench.choose_layout`); unset
            with ``threads`` given: 1. ``daemon.yaml`` records the layout that ran.
        threads: ONNX Runtime intra-op threads per session (unset: ONNX Runtime's choice, or the saved layout's).
        mqtt: publish each verdict to an MQTT broker (:class:`~crackscope.inspect.line.MqttConfig`: host, port,
            topic, outbox bounds, ...); off while ``mqtt.host`` is unset.
        opcua: write each verdict to OPC UA nodes (:class:`~crackscope.inspect.line.OpcUaConfig`: url, nodes);
            off while ``opcua.url`` is unset.
        deadline_ms: a frame whose verdict is not ready this long after it was read gets ``fail_safe`` on the line at
            that moment; its real verdict is stored (with ``fail_safe`` in the record) and published as a correction.
            Needs policy ``every`` and no trigger: every frame is a part. Unset: no deadline.
        fail_safe: the verdict a late frame gets on the line: ``DEFECT`` (eject) or ``REVIEW``.
    """

    source: str | int | None = None
    model: str | None = None
    out: str | None = None
    artefacts: str | None = None
    line: str | None = None
    station: str | None = None
    policy: Literal["latest", "every"] | None = None
    queue_size: int = 8
    realtime: bool = False
    batch_frames: int = 4
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    reconnect: Backoff = field(default_factory=Backoff)
    hot_folder: HotFolderConfig = field(default_factory=HotFolderConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    save: Literal["defect", "all", "none"] = "defect"
    save_frame: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    providers: str = "auto"
    session_workers: int | None = None
    threads: int | None = None
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    opcua: OpcUaConfig = field(default_factory=OpcUaConfig)
    deadline_ms: float | None = None
    fail_safe: Literal["DEFECT", "REVIEW"] = "DEFECT"

    def __post_init__(self) -> None:
        for name in ("source", "model", "out"):
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"no {name}: pass --{name} (or set '{name}' in --config)")
        if self.queue_size < 1 or self.batch_frames < 1:
            raise ConfigError(
                f"queue_size and batch_frames must be at least 1, got {self.queue_size}, {self.batch_frames}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.trigger.mode != "none" and parse_source(self.source).kind == "folder":
            raise ConfigError("trigger applies to cameras and videos; a hot folder inspects every file")
        Layout(1 if self.session_workers is None else self.session_workers, self.threads)  # raises, naming the key
        check_label("line", self.line)
        check_label("station", self.station)
        _check_deadline(self)

    @property
    def folder(self) -> Path:
        """Where saved images go: ``out``, or ``artefacts`` with a PostgreSQL ``out``."""
        return Path(self.artefacts) if is_database_url(self.out) else Path(self.out)

    def source_options(self) -> SourceOptions:
        return SourceOptions(
            policy=Policy(self.policy) if self.policy else None,
            queue_size=self.queue_size,
            realtime=self.realtime,
            backoff=self.reconnect,
            hot_folder=self.hot_folder,
        )


def _check_deadline(config: DaemonConfig) -> None:
    """A deadline promises a line verdict for every frame read: no frame may be dropped or skipped by design."""
    if config.deadline_ms is None:
        return
    if not config.deadline_ms > 0:
        raise ConfigError(f"deadline_ms must be above 0, got {config.deadline_ms}")
    live = parse_source(config.source).kind in ("camera", "stream")
    if (config.policy or ("latest" if live else "every")) != "every":
        raise ConfigError(
            "deadline_ms needs policy every (--policy every): with latest, a frame can be dropped unseen and its part "
            "would get no verdict on the line"
        )
    if config.trigger.mode != "none":
        raise ConfigError("deadline_ms needs trigger none: every frame read is a part that gets a verdict on the line")


def daemon_config(file_values: Mapping[str, Any] | None, flags: Mapping[str, Any]) -> DaemonConfig:
    """The config from YAML values and flags (flags set to None were not given); every value's type is checked as it
    is read (:func:`crackscope.config.from_dict`), so a mistake is reported with its key."""
    values = merge(file_values or {}, flags)
    try:
        return from_dict(DaemonConfig, values, "daemon config")
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # range checks of the nested configs
        raise ConfigError(f"daemon config: {error}") from error


# --- the run --------------------------------------------------------------------------------------------------------


def run_daemon(config: DaemonConfig, *, stop: threading.Event | None = None) -> RunSummary:
    """Inspect ``config.source`` until it ends (a video file) or ``stop`` is set (SIGTERM/SIGINT in the main thread).

    Returns:
        What was done: frames by verdict, skipped frames by reason, the source's final status, recent latencies.

    Raises:
        ModelLoadError, SourceError, ConfigError, StoreError, OutputError (``out`` is not a folder or another run
        holds its lock): before anything is inspected.
    """
    stop = stop or threading.Event()
    # like a value that cannot be a source: fails before the model is loaded
    output = check_output(config.out, config.artefacts, line=config.line, station=config.station)
    spec = parse_source(config.source)
    config = _settle_layout(config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stop_on_signals(stop))  # first: a SIGTERM during start-up is a clean stop too
        model = stack.enter_context(
            open_model(
                config.model,
                config.inspect.mode,
                force_dense=config.inspect.force_dense,
                providers=config.providers,
                workers=config.session_workers,
                intra_op_threads=config.threads,
            )
        )
        # before the store: a second writer is refused before it writes (a plant store takes many: no lock)
        stack.enter_context(OutputLock(output.folder, shared=output.shared))
        store = stack.enter_context(_open_store(output, config.reconnect, stop))
        config = dataclasses.replace(config, mqtt=config.mqtt.for_station(config.line, config.station))
        _prepare_output(config, output, store, model)
        done = _resume_keys(store, spec)
        line = stack.enter_context(_line_outputs(config, output.folder, model, done))
        options = config.source_options()
        if config.deadline_ms is not None:  # the deadline clock starts when a frame is read, not when it is taken
            options = dataclasses.replace(options, on_read=line.track)
        source = stack.enter_context(open_source(config.source, options, done if done is not None else ()))
        telemetry = Telemetry(source.status, model)
        if line.enabled:
            telemetry.line = line.counts
            telemetry.registry.register(line.collector())
        if config.metrics_port is not None:
            stack.enter_context(HealthServer(telemetry, config.metrics_host, config.metrics_port))
        log.info(
            "inspecting %s with %s into %s on %s as %s",
            source.name,
            model.path,
            output.name,
            model.providers[0],
            model.layout.describe(),
        )
        _inspect_loop(source, model, store, config, telemetry, stop, done, line)
        line.stop_deadlines()  # frames still queued at a stop are not parts the line waits for
    summary = telemetry.summary()
    log.info("stopped: %s", summary.describe())
    return summary


def _open_store(output: Output, backoff: Backoff, stop: threading.Event) -> ResultStore:
    """The results store. A plant store whose server does not answer yet (the line's PC booted before the database
    server, or the server is restarting) is tried again with the ``reconnect`` backoff, as a source is, each failure
    logged, until it answers, the backoff's attempts run out or the daemon is stopped (then the last error is
    raised: one line, exit 2)."""
    failures = 0
    while True:
        try:
            return ResultStore(output.store, line=output.line, station=output.station)
        except StoreUnavailable as error:
            failures += 1
            if backoff.attempts is not None and failures >= backoff.attempts:
                raise
            wait = backoff.delay(failures)
            log.warning("%s; trying again in %.1f s (attempt %d)", error, wait, failures + 1)
            if stop.wait(wait):
                raise StoreUnavailable(f"{error}; stopped while waiting for it") from None


def _settle_layout(config: DaemonConfig) -> DaemonConfig:
    """``config`` with the layout the daemon runs written in (as given, or a saved bench result's), logged."""
    layout, saved = choose_layout(
        config.model, config.session_workers, config.threads, mode=config.inspect.mode, providers=config.providers
    )
    if saved is not None:
        (log.info if saved.layout is not None else log.warning)("%s", saved.note)
    return dataclasses.replace(config, session_workers=layout.workers, threads=layout.threads)


def _prepare_output(config: DaemonConfig, output: Output, store: ResultStore, model: RuntimeModel) -> None:
    store.claim(model.model_id, str(model.path), model.card)
    remove_partials(output.folder, output.stale_partial_s)
    # The saved config must not carry a stream's or the store's password: results folders get copied around.
    source = redact_url(config.source) if isinstance(config.source, str) else config.source
    out = output.name if output.shared else config.out
    write_yaml(dataclasses.replace(config, source=source, out=out), output.file(CONFIG_NAME))
    calibration = model.card.calibration
    # Once at start, either way: the line crew must know which thresholds decide (or that none were fitted).
    (log.warning if is_identity(calibration) else log.info)("%s is %s", model.path, describe_calibration(calibration))
    log.info("%s", config.inspect.describe_scoring(model.card.part_scoring))
    log.info("%s", describe_mode(model, config.inspect))


def _line_outputs(
    config: DaemonConfig, folder: Path, model: RuntimeModel, done: set[tuple[str, str]] | None
) -> LineOutputs:
    """The line outputs the config asks for (none: a LineOutputs that does nothing)."""
    return LineOutputs(
        out=folder,
        model_id=model.model_id,
        mqtt=config.mqtt,
        opcua=config.opcua,
        deadline_ms=config.deadline_ms,
        fail_safe=Verdict(config.fail_safe),
        ignore=lambda frame: done is not None and frame.key in done,
    )


def _resume_keys(store: ResultStore, spec: SourceSpec) -> set[tuple[str, str]] | None:
    """The stored keys of this source's inputs, for a video file or a hot folder; None for a live source.

    Only those are kept in memory: a camera's frames are new by nature (and the store's unique index still refuses
    a duplicate), and a store that has collected months of camera frames should not cost their keys in memory.
    """
    if spec.kind == "video":
        prefix = f"{spec.name}#"
    elif spec.kind == "folder":
        prefix = spec.name.rstrip(os.sep) + os.sep
    else:
        return None
    return store.done_keys(prefix=prefix)


def _inspect_loop(
    source: FrameSource,
    model: RuntimeModel,
    store: ResultStore,
    config: DaemonConfig,
    telemetry: Telemetry,
    stop: threading.Event,
    done: set[tuple[str, str]] | None,
    line: LineOutputs,
) -> None:
    gate = FrameGate(config.trigger)
    policy = SavePolicy(config.save)
    for batch in source.batches(stop, config.batch_frames):
        taken = time.monotonic()
        wanted = []
        for frame in batch:
            reason = "done" if done is not None and frame.key in done else _gate(gate, frame)
            if reason:
                line.forget(frame)
                telemetry.skipped(reason)
                source.ack(frame)
            else:
                line.track(frame)  # a hot-folder file is read here; a captured frame was tracked as it was read
                wanted.append(frame)
        if not wanted:
            continue
        # the line hears first (its outbox is on disk): a crash before the store commits re-inspects the frame, and
        # the record id, derived from the input, stays the same for the consumers' dedupe
        records = line.deliver(wanted, _inspect(model, wanted, config, policy))
        store.add(records)
        stored = time.monotonic()
        for frame, record in zip(wanted, records, strict=True):
            if done is not None:
                done.add(frame.key)
            source.ack(frame)
            telemetry.inspected(record.verdict, stored - frame.monotonic, stored - taken)


def _gate(gate: FrameGate, frame: Frame) -> str | None:
    return None if frame.image is None else gate.admit(frame.image, frame.monotonic)


def _inspect(
    model: RuntimeModel, frames: list[Frame], config: DaemonConfig, policy: SavePolicy
) -> list[InspectionResult]:
    """One record per frame, in order; a frame that cannot be inspected gets an ERROR record, not an exception.

    Record ids come from the input (:func:`~crackscope.inspect.line.record_id_for`), so a line message sent before
    the record existed (a fail-safe at the deadline) and the record share one.
    """
    started = time.monotonic()
    inputs = [
        Input(f.source, f.sha256, f.image, f.error or "not inspected", {"queue": started - f.monotonic}) for f in frames
    ]
    records = frames_to_records(
        model, inputs, config.inspect, folder=config.folder, policy=policy, save_frame=config.save_frame
    )
    return [dataclasses.replace(r, id=record_id_for(r.source, r.sha256, r.model_id)) for r in records]


def exit_code(summary: RunSummary) -> int:
    """0 for a stop or the end of a video, 1 when the source failed for good (its backoff attempts ran out)."""
    return 1 if summary.source.state is SourceState.FAILED else 0
