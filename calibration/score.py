"""Run the exported model over labelled samples, exactly as export's parity checks and the runtime feed it.

Each sample (a whole image or a patch of one) is resized to the model's input size with
:func:`crackscope.inspect.images.fit_to_input` and scored through :func:`crackscope.inspect.pipeline.run_model`,
so calibration and audit see the logits the deployed file produces (fp32 or int8), not PyTorch's.

Example:
    >>> from crackscope.inspect.model import OnnxModel
    >>> with OnnxModel("model.int8.onnx") as model:                            # doctest: +SKIP
    ...     scores = score_samples(model, dataset.samples, keep_cams=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from crackscope.inspect.images import fit_to_input
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import run_model
from crackscope.labelled import Clarity, Sample, read_patch


@dataclass(frozen=True)
class Scores:
    """Raw logits (and optionally CAMs) of samples, in the samples' order."""

    samples: tuple[Sample, ...]
    logits: np.ndarray = field(repr=False)  # float32 [N], before temperature
    cams: np.ndarray | None = field(default=None, repr=False)  # float32 [N, h, w] when kept

    @property
    def clear(self) -> np.ndarray:
        """Boolean mask of the clear samples."""
        return np.array([s.clarity is Clarity.CLEAR for s in self.samples], dtype=bool)

    @property
    def labels(self) -> np.ndarray:
        """Hard labels (1 crack, 0 ok); meaningful for clear samples."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def subset(self, keep: np.ndarray) -> Scores:
        chosen = tuple(s for s, k in zip(self.samples, keep, strict=True) if k)
        return Scores(chosen, self.logits[keep], None if self.cams is None else self.cams[keep])


def model_tiles(samples: Sequence[Sample], size: int) -> np.ndarray:
    """uint8 BGR tiles ``[N, size, size, 3]`` of the samples, resized as export and the runtime do."""
    return np.stack([fit_to_input(read_patch(s), size) for s in samples])


def score_samples(
    model: OnnxModel,
    samples: Sequence[Sample],
    *,
    batch_size: int = 32,
    keep_cams: bool = False,
    progress: bool = True,
    desc: str = "scoring",
) -> Scores:
    """Logits (and CAMs) of ``model`` for ``samples``, reading ``batch_size`` images at a time."""
    samples = tuple(samples)
    logits, cams = [], []
    with tqdm(total=len(samples), unit="img", desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch_logits, batch_cams = run_model(model, model_tiles(chunk, model.input_size), batch_size)
            logits.append(batch_logits)
            if keep_cams:
                cams.append(batch_cams)
            bar.update(len(chunk))
    empty = np.zeros(0, np.float32)
    side = model.card.feature_size
    return Scores(
        samples,
        np.concatenate(logits) if logits else empty,
        (np.concatenate(cams) if cams else np.zeros((0, side, side), np.float32)) if keep_cams else None,
    )
