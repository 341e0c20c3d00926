"""Training data: data-set cases brought onto the model grid once, then served as slice batches.

Each case is preprocessed once (:mod:`dlas.model.preprocessing`): canonical orientation, body
crop, in-plane resampling to the model spacing, HU window → [-1, 1]; its label map (background 0,
structure ``i`` of the structure set ``i + 1``, overlaps resolved by the structure set's
priorities) is resampled by nearest neighbour. All cases are then padded (air, background) to one
common canvas so that slices of different patients batch together. The arrays stay in memory:
about ``4 x 1.25`` bytes per model-grid voxel.

A training sample is one slice with its ``in_slices - 1`` neighbours as channels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dlas.dataset import Case, label_map
from dlas.model.config import Preprocessing
from dlas.model.preprocessing import canonical_axial, plan_grid, resample_to_model
from dlas.structures import StructureSet

__all__ = [
    "PreparedCase",
    "SliceSet",
    "class_frequencies",
    "class_weights",
    "pad_to_canvas",
    "prepare_case",
]

log = logging.getLogger(__name__)


@dataclass
class PreparedCase:
    """A case on the model grid.

    Attributes
    ----------
    image
        Normalised intensities, float32 (z, h, w).
    labels
        Class per pixel, uint8 (z, h, w).
    """

    case_id: str
    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, h, w)."""
        z, h, w = self.image.shape
        return (int(z), int(h), int(w))


def prepare_case(
    case: Case,
    structure_set: StructureSet,
    pre: Preprocessing,
    size_multiple: int,
    *,
    chunk: int = 16,
) -> PreparedCase:
    """Bring one case onto the model grid (its own, body-centred grid; see :func:`pad_to_canvas`).

    Masks of structures the case lacks are background in the label map: the caller decides
    beforehand whether such cases may be used.
    """
    import torch

    ct = canonical_axial(case.ct, where=f"case {case.case_id}")
    masks = {
        name: canonical_axial(mask, where=f"case {case.case_id}, {name}").array
        for name, mask in case.structures.items()
    }
    labels_ct = label_map(masks, structure_set) if masks else np.zeros(ct.shape, dtype=np.uint8)
    grid = plan_grid(ct, pre, size_multiple)
    nz = ct.shape[0]
    h, w = grid.shape
    image = np.empty((nz, h, w), dtype=np.float32)
    labels = np.empty((nz, h, w), dtype=np.uint8)
    scale = 2.0 / (pre.hu_max - pre.hu_min)
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        # Shift HU so that 0 is the bottom of the window: samples outside the CT become air.
        hu = np.clip(ct.array[z0:z1].astype(np.float32), pre.hu_min, pre.hu_max) - pre.hu_min
        shifted = resample_to_model(torch.from_numpy(hu)[:, None], grid, mode="bilinear")
        image[z0:z1] = (shifted[:, 0] * scale - 1.0).numpy()
        lab = torch.from_numpy(labels_ct[z0:z1].astype(np.float32))[:, None]
        labels[z0:z1] = resample_to_model(lab, grid, mode="nearest")[:, 0].round().numpy()
    return PreparedCase(case.case_id, image, labels)


def pad_to_canvas(case: PreparedCase, shape: tuple[int, int]) -> PreparedCase:
    """Pad a prepared case symmetrically with air/background to ``shape`` (h, w)."""
    _, h, w = case.shape
    th, tw = shape
    if (h, w) == (th, tw):
        return case
    top, left = (th - h) // 2, (tw - w) // 2
    pad = ((0, 0), (top, th - h - top), (left, tw - w - left))
    return PreparedCase(
        case.case_id,
        np.pad(case.image, pad, constant_values=-1.0),
        np.pad(case.labels, pad, constant_values=0),
    )


def class_frequencies(cases: Sequence[PreparedCase], num_classes: int) -> npt.NDArray[np.float64]:
    """Fraction of model-grid pixels of each class over ``cases``."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for case in cases:
        counts += np.bincount(case.labels.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total else counts


def class_weights(
    rule: str | Sequence[float], frequencies: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Cross-entropy class weights, scaled to average 1 over the classes present.

    ``inverse_frequency``: ``1 / f_c``; ``inverse_sqrt_frequency``: ``1 / sqrt(f_c)`` (milder,
    the default: plain inverse frequency makes small structures dominate and over-segment);
    ``uniform``: all 1; or an explicit list, one weight per class (background first). A class
    absent from the training data gets weight 0 (it contributes no term anyway).
    """
    n = len(frequencies)
    if not isinstance(rule, str):
        weights = np.asarray(rule, dtype=np.float64)
        if weights.shape != (n,):
            from dlas.training.config import TrainingConfigError

            raise TrainingConfigError(
                "wrong number of class weights",
                where="recipe class_weights",
                expected=f"{n} weights (background first, then each structure)",
                found=f"{weights.size}",
                fix="give one weight per class",
            )
        return weights
    present = frequencies > 0
    weights = np.zeros(n, dtype=np.float64)
    if rule == "uniform":
        weights[present] = 1.0
    elif rule == "inverse_frequency":
        weights[present] = 1.0 / frequencies[present]
    elif rule == "inverse_sqrt_frequency":
        weights[present] = 1.0 / np.sqrt(frequencies[present])
    else:  # pragma: no cover - the recipe validates the rule
        raise ValueError(rule)
    if present.any():
        weights *= present.sum() / weights.sum()
    return weights


class SliceSet:
    """Slices of prepared cases (all on one canvas) with batch assembly.

    ``items`` lists ``(case index, z)``; ``has_foreground`` tells which slices contain any
    structure (for ``empty_slice_fraction``).
    """

    def __init__(self, cases: Sequence[PreparedCase], in_slices: int) -> None:
        self.cases = list(cases)
        self.in_slices = in_slices
        self.items: list[tuple[int, int]] = []
        foreground: list[bool] = []
        for ci, case in enumerate(self.cases):
            fg = np.asarray(case.labels.reshape(case.labels.shape[0], -1).any(axis=1))
            for z in range(case.shape[0]):
                self.items.append((ci, z))
                foreground.append(bool(fg[z]))
        self.has_foreground = np.asarray(foreground, dtype=bool)

    def __len__(self) -> int:
        return len(self.items)

    def batch(
        self, indices: Sequence[int]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Images (B, in_slices, h, w) and labels (B, h, w) of the given items."""
        from dlas.model.preprocessing import context_indices

        images = []
        labels = []
        for index in indices:
            ci, z = self.items[int(index)]
            case = self.cases[ci]
            zs = context_indices(z, case.shape[0], self.in_slices)
            images.append(case.image[zs])
            labels.append(case.labels[z])
        return np.stack(images), np.stack(labels).astype(np.int64)
