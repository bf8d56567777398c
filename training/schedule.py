"""How long a run trains: batch size and epochs follow from a target number of optimiser steps.

A fixed number of epochs is wrong at both ends: 8 epochs of 100 images in batches of 32 are 24 optimiser steps,
too few for the fine-tuned network to move, while 8 epochs of 100,000 images take a day on a CPU. What a
transfer-learning run needs is roughly a number of *steps*, so the default schedule works backwards from
``target_steps``: the batch size shrinks for small data (more, noisier steps per epoch), and the number of
fine-tuning epochs is whatever reaches the target, at least one and at most ``max_epochs``. Explicit
``--epochs`` / ``--batch-size`` always win; a run that cannot reach :data:`MIN_OPTIMISER_STEPS` gets a warning that
says how to fix it.

Example:
    >>> from crackscope.training.schedule import plan_schedule
    >>> plan_schedule(items=80, batch_size=None, epochs=None, head_epochs=1, target_steps=200).describe()
    'batch 8, 10 steps/epoch: 1 head epoch + 20 fine-tuning epochs (200 steps; automatic for 80 items)'
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MIN_OPTIMISER_STEPS = 50  # below this a fine-tuned network has barely moved from where it started
BATCH_SIZES = ((1000, 8), (4000, 16))  # (fewer than this many items, batch size); 32 above


def auto_batch_size(items: int) -> int:
    """8 below 1,000 items, 16 below 4,000, else 32: small sets get enough steps per epoch to learn from."""
    for below, size in BATCH_SIZES:
        if items < below:
            return size
    return 32


def batches_per_epoch(items: int, batch_size: int, steps_per_epoch: int | None = None) -> int:
    """Optimiser steps in one epoch (the last partial batch is dropped when there is more than one batch)."""
    full = items // batch_size if items > batch_size else 1
    return max(1, min(steps_per_epoch or full, full))


@dataclass(frozen=True)
class Schedule:
    """Batch size and epochs of one run, and why."""

    batch_size: int
    steps_per_epoch: int
    head_epochs: int
    finetune_epochs: int
    automatic: bool
    items: int

    @property
    def epochs(self) -> int:
        return self.head_epochs + self.finetune_epochs

    @property
    def finetune_steps(self) -> int:
        return self.steps_per_epoch * self.finetune_epochs

    def describe(self) -> str:
        how = f"automatic for {self.items} items" if self.automatic else "as configured"
        return (
            f"batch {self.batch_size}, {self.steps_per_epoch} steps/epoch: {self.head_epochs} head epoch"
            f"{'s' if self.head_epochs != 1 else ''} + {self.finetune_epochs} fine-tuning epochs "
            f"({self.finetune_steps} steps; {how})"
        )


def plan_schedule(
    *,
    items: int,
    batch_size: int | None,
    epochs: int | None,
    head_epochs: int,
    target_steps: int,
    max_epochs: int = 50,
    steps_per_epoch: int | None = None,
) -> Schedule:
    """The run's schedule for ``items`` training items per epoch.

    ``epochs`` counts both stages, as on the command line; ``None`` means enough fine-tuning epochs to reach
    ``target_steps`` (at least 1, at most ``max_epochs``). ``batch_size`` ``None`` means :func:`auto_batch_size`.
    """
    size = batch_size or auto_batch_size(items)
    per_epoch = batches_per_epoch(items, size, steps_per_epoch)
    if epochs is not None:
        head = min(head_epochs, epochs)
        finetune = epochs - head
    else:
        head = head_epochs
        finetune = min(max_epochs, max(1, math.ceil(target_steps / per_epoch)))
    return Schedule(size, per_epoch, head, finetune, automatic=epochs is None or batch_size is None, items=items)


def few_steps_warning(schedule: Schedule, *, capped: bool = False) -> str | None:
    """A warning, saying how to fix it, when fine-tuning takes fewer than :data:`MIN_OPTIMISER_STEPS` steps."""
    steps = schedule.finetune_steps
    if steps >= MIN_OPTIMISER_STEPS:
        return None
    fixes = ["a smaller --batch-size", "more --epochs (or leave --epochs unset)", "more data"]
    if capped:
        fixes.insert(0, "a larger --steps-per-epoch")
    return (
        f"this run fine-tunes for only {steps} optimiser step(s) ({schedule.steps_per_epoch} per epoch x "
        f"{schedule.finetune_epochs} epoch(s); {schedule.items} training items in batches of {schedule.batch_size}), "
        f"too few to train a useful model; use {', '.join(fixes[:-1])} or {fixes[-1]} "
        f"(at least {MIN_OPTIMISER_STEPS} steps)"
    )


class Horizon:
    """The number of optimiser steps a stage will take; a time budget may shorten it while the stage runs.

    The learning-rate schedule reads it at every step, so a shortened stage still decays to its floor.
    """

    def __init__(self, total: int) -> None:
        self.planned = total
        self.total = total

    def reached(self, step: int) -> bool:
        return step >= self.total

    def shorten(self, total: int) -> None:
        self.total = max(1, min(self.total, total))


class Clock:
    """Wall-clock budget of a run (``--max-minutes``): how much is left, and what validation passes cost."""

    def __init__(self, started: float, max_minutes: float | None) -> None:
        self.started = started
        self.deadline = None if max_minutes is None else started + 60.0 * max_minutes
        self.validation_seconds = 0.0

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()

    def expired(self) -> bool:
        return self.left() <= 0

    def validation_took(self, seconds: float) -> None:
        self.validation_seconds = max(self.validation_seconds, seconds)

    def steps_that_fit(self, seconds_per_step: float, validations_left: int) -> float:
        """Optimiser steps that fit in the time left, keeping time for the validation passes still to come."""
        return (self.left() - self.validation_seconds * validations_left) / max(seconds_per_step, 1e-9)

    def shortened_warning(self, steps: int) -> str | None:
        if steps >= MIN_OPTIMISER_STEPS:
            return None
        return (
            f"the time budget (--max-minutes) left room for only {steps} fine-tuning step(s), too few to train a "
            f"useful model (at least {MIN_OPTIMISER_STEPS}); allow more minutes, use a smaller --input-size, or "
            "train on a machine with a GPU"
        )


class Budget:
    """Shortens a stage's :class:`Horizon` to what the :class:`Clock` allows, from the measured time per step."""

    TIMED_STEPS = 5  # steps timed before the first estimate (the first batches also pay for worker start-up)

    def __init__(self, horizon: Horizon, clock: Clock, epochs_left: int, steps_per_epoch: int) -> None:
        self.horizon, self.clock = horizon, clock
        self.epochs_left, self.steps_per_epoch = epochs_left, steps_per_epoch
        self.started = time.perf_counter()
        self.timed = 0

    def after_step(self, step: int) -> None:
        """Called after each optimiser step of the epoch with the stage's step count so far."""
        self.timed += 1
        if self.clock.deadline is None or self.timed < self.TIMED_STEPS:
            return
        per_step = (time.perf_counter() - self.started) / self.timed
        self.horizon.shorten(step + int(self.clock.steps_that_fit(per_step, self.epochs_left)))
