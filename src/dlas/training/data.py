"""Training data: data-set cases brought onto the model grid once, then served as slice batches.

Each case is preprocessed once (:mod:`dlas.model.preprocessing`): canonical orientation, body
crop, in-plane resampling to the model spacing, HU clipped and normalised; its label map
(background 0, structure ``i`` of the structure set ``i + 1``, overlaps resolved by the structure
set's priorities) is resampled by nearest neighbour. All cases are then padded (air, background)
to one common canvas so that slices of different patients batch together. The arrays stay in
memory: about ``4 x 1.25`` bytes per model-grid voxel.

A case need not have every structure (partial labels): ``PreparedCase.labeled`` says which
classes were delineated; where a structure was not, its voxels read 0 in the label map but are
unknown, and the loss (:mod:`dlas.training.losses`) does not count them as background.

A training sample is one slice with its ``in_slices - 1`` neighbours as channels. Batches are
drawn per epoch either as a shuffled pass over the slices or, with foreground oversampling, as
independent draws of which a share shows a structure chosen uniformly among the classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dlas.dataset import Case, label_map
from dlas.model.config import Preprocessing
from dlas.model.preprocessing import canonical_axial, plan_grid, resample_to_model
from dlas.structures import StructureSet

if TYPE_CHECKING:
    import torch

__all__ = [
    "PreparedCase",
    "SliceSet",
    "class_frequencies",
    "class_weights",
    "fit_intensity",
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
    labeled
        Which classes were delineated in this case (bool, one per class; background always).
    """

    case_id: str
    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    labeled: npt.NDArray[np.bool_]

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

    Structures the case lacks are marked unknown in ``labeled`` (their voxels read 0).
    """
    import torch

    ct = canonical_axial(case.ct, where=f"case {case.case_id}")
    masks = {
        name: canonical_axial(mask, where=f"case {case.case_id}, {name}").array
        for name, mask in case.structures.items()
    }
    labels_ct = label_map(masks, structure_set) if masks else np.zeros(ct.shape, dtype=np.uint8)
    labeled = np.array([True, *(name in masks for name in structure_set.names)], dtype=bool)
    grid = plan_grid(ct, pre, size_multiple)
    nz = ct.shape[0]
    h, w = grid.shape
    image = np.empty((nz, h, w), dtype=np.float32)
    labels = np.empty((nz, h, w), dtype=np.uint8)
    scale, air = pre.intensity_affine()
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        # Shift HU so that 0 is the bottom of the window: samples outside the CT become air.
        hu = np.clip(ct.array[z0:z1].astype(np.float32), pre.hu_min, pre.hu_max) - pre.hu_min
        shifted = resample_to_model(torch.from_numpy(hu)[:, None], grid, mode="bilinear")
        image[z0:z1] = (shifted[:, 0] * scale + air).numpy()
        lab = torch.from_numpy(labels_ct[z0:z1].astype(np.float32))[:, None]
        labels[z0:z1] = resample_to_model(lab, grid, mode="nearest")[:, 0].round().numpy()
    return PreparedCase(case.case_id, image, labels, labeled)


def fit_intensity(
    cases: Iterable[Case], pre: Preprocessing, *, samples_per_case: int = 20000, seed: int = 0
) -> Preprocessing:
    """Fit the ``percentile`` normalisation to training cases (nnU-Net's CT scheme).

    HU are sampled (at most ``samples_per_case`` per case, seeded) from the voxels inside any of
    the case's structures; ``hu_min``/``hu_max`` become their 0.5th and 99.5th percentiles
    (unless the recipe set them) and ``mean_hu``/``std_hu`` the mean and standard deviation of
    the samples clipped to that range. ``window`` preprocessing is returned unchanged.

    Raises
    ------
    TrainingError
        No case has a structure voxel to fit on.
    """
    if pre.intensity != "percentile":
        return pre
    rng = np.random.default_rng(seed)
    values: list[npt.NDArray[np.float32]] = []
    for case in cases:
        inside: npt.NDArray[np.bool_] | None = None
        for mask in case.structures.values():
            inside = mask.array.astype(bool) if inside is None else inside | mask.array
        if inside is None or not inside.any():
            continue
        hu = case.ct.array[inside].astype(np.float32)
        if hu.size > samples_per_case:
            hu = rng.choice(hu, samples_per_case, replace=False)
        values.append(hu)
    if not values:
        from dlas.training.loop import TrainingError

        raise TrainingError(
            "no structure voxels to fit the intensity normalisation on",
            expected="training cases with at least one structure",
            found="only empty or missing structures",
            fix="check the data set, or set preprocessing: {intensity: window} in the recipe",
        )
    pooled = np.concatenate(values)
    explicit = pre.model_fields_set
    low = pre.hu_min if "hu_min" in explicit else float(np.percentile(pooled, 0.5))
    high = pre.hu_max if "hu_max" in explicit else float(np.percentile(pooled, 99.5))
    if not high > low:
        high = low + 1.0
    clipped = np.clip(pooled, low, high)
    return Preprocessing.model_validate(
        {
            **pre.model_dump(),
            "hu_min": round(low, 2),
            "hu_max": round(high, 2),
            "mean_hu": round(float(clipped.mean()), 3),
            "std_hu": round(max(float(clipped.std()), 1e-3), 3),
        }
    )


def pad_to_canvas(case: PreparedCase, shape: tuple[int, int], *, air: float = -1.0) -> PreparedCase:
    """Pad a prepared case symmetrically with air/background to ``shape`` (h, w)."""
    _, h, w = case.shape
    th, tw = shape
    if (h, w) == (th, tw):
        return case
    top, left = (th - h) // 2, (tw - w) // 2
    pad = ((0, 0), (top, th - h - top), (left, tw - w - left))
    return PreparedCase(
        case.case_id,
        np.pad(case.image, pad, constant_values=air),
        np.pad(case.labels, pad, constant_values=0),
        case.labeled,
    )


def class_frequencies(cases: Sequence[PreparedCase], num_classes: int) -> npt.NDArray[np.float64]:
    """Fraction of model-grid pixels of each class over ``cases``.

    A structure's fraction counts only the cases in which it was delineated (partial labels);
    the background's, every pixel known to be background.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    totals = np.zeros(num_classes, dtype=np.float64)
    for case in cases:
        counts += np.bincount(case.labels.ravel(), minlength=num_classes)[:num_classes]
        totals += case.labels.size * case.labeled[:num_classes]
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


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
    structure (for ``empty_slice_fraction``); ``slices_with[c]`` lists the items showing class
    ``c`` (for foreground oversampling).
    """

    def __init__(self, cases: Sequence[PreparedCase], in_slices: int) -> None:
        self.cases = list(cases)
        self.in_slices = in_slices
        self.items: list[tuple[int, int]] = []
        foreground: list[bool] = []
        num_classes = len(self.cases[0].labeled) if self.cases else 1
        shows: list[npt.NDArray[np.bool_]] = []
        for ci, case in enumerate(self.cases):
            flat = case.labels.reshape(case.labels.shape[0], -1)
            present = np.zeros((case.shape[0], num_classes), dtype=bool)
            for c in np.unique(flat):
                if 0 < c < num_classes:
                    present[:, c] = (flat == c).any(axis=1)
            for z in range(case.shape[0]):
                self.items.append((ci, z))
                foreground.append(bool(present[z].any()))
            shows.append(present)
        self.has_foreground = np.asarray(foreground, dtype=bool)
        table = np.concatenate(shows) if shows else np.zeros((0, num_classes), dtype=bool)
        self.slices_with: list[npt.NDArray[np.int64]] = [
            np.flatnonzero(table[:, c]) for c in range(num_classes)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def batch(
        self,
        indices: Sequence[int],
        *,
        focus: Sequence[int] | None = None,
        patch: tuple[int, int] | None = None,
        uniforms: npt.NDArray[np.float64] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Images (B, in_slices, h, w), labels (B, h, w) and the delineated classes (B, C) of
        the given items.

        With ``patch`` each sample is cropped to that size (within the canvas): centred on a
        voxel of class ``focus[k]`` (chosen by ``uniforms[k, 0]``) shifted by up to a quarter
        patch (``uniforms[k, 1:]``), or, for focus 0, placed uniformly on the canvas.
        """
        images = []
        labels = []
        labeled = []
        for w in self.windows(indices, focus=focus, patch=patch, uniforms=uniforms):
            case = self.cases[w.case]
            images.append(case.image[w.zs, w.rows, w.cols])
            labels.append(case.labels[w.z, w.rows, w.cols])
            labeled.append(case.labeled)
        return np.stack(images), np.stack(labels).astype(np.int64), np.stack(labeled)

    def windows(
        self,
        indices: Sequence[int],
        *,
        focus: Sequence[int] | None = None,
        patch: tuple[int, int] | None = None,
        uniforms: npt.NDArray[np.float64] | None = None,
    ) -> list[Window]:
        """Where each sample of a batch comes from (see :meth:`batch`): the one sampling rule
        that the host batches and the device-resident ones (:class:`DeviceSlices`) share."""
        from dlas.model.preprocessing import context_indices

        out = []
        for k, index in enumerate(indices):
            ci, z = self.items[int(index)]
            case = self.cases[ci]
            zs = context_indices(z, case.shape[0], self.in_slices)
            rows, cols = slice(None), slice(None)
            if patch is not None:
                u = uniforms[k] if uniforms is not None else np.full(3, 0.5)
                y0, x0 = _crop_start(case.labels[z], focus[k] if focus else 0, patch, u)
                rows, cols = slice(y0, y0 + patch[0]), slice(x0, x0 + patch[1])
            out.append(Window(ci, z, zs, rows, cols))
        return out


@dataclass(frozen=True)
class Window:
    """One training sample's source: case index, centre slice, context slices and crop."""

    case: int
    z: int
    zs: list[int]
    rows: slice
    cols: slice


class DeviceSlices:
    """A :class:`SliceSet` whose volumes live on the training device, so that a batch is cut
    and stacked there: no host-side copy and no host-to-device transfer per step.

    Batches hold exactly the values of :meth:`SliceSet.batch` (tested); the sampling decisions
    (which slice, which crop) are still made on the host from the host's labels, so the random
    streams and thus the training are the same as without it. Memory: the cases' float32 images
    and uint8 labels (a 60-patient cohort at 512 x 512 x 100 is about 8 GB).
    """

    def __init__(self, slices: SliceSet, device: torch.device) -> None:
        import torch

        self.slices = slices
        self.images = [torch.from_numpy(c.image).to(device) for c in slices.cases]
        self.labels = [torch.from_numpy(c.labels).to(device) for c in slices.cases]

    def batch(
        self,
        indices: Sequence[int],
        *,
        focus: Sequence[int] | None = None,
        patch: tuple[int, int] | None = None,
        uniforms: npt.NDArray[np.float64] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, npt.NDArray[np.bool_]]:
        """As :meth:`SliceSet.batch`, with images and labels as tensors on the device."""
        import torch

        images, labels, labeled = [], [], []
        for w in self.slices.windows(indices, focus=focus, patch=patch, uniforms=uniforms):
            volume = self.images[w.case]
            # Integer indexing and slicing make views: nothing is copied until the stack.
            images.append(torch.stack([volume[z, w.rows, w.cols] for z in w.zs]))
            labels.append(self.labels[w.case][w.z, w.rows, w.cols])
            labeled.append(self.slices.cases[w.case].labeled)
        return torch.stack(images), torch.stack(labels).long(), np.stack(labeled)


def _crop_start(
    label: npt.NDArray[np.uint8],
    focus: int,
    patch: tuple[int, int],
    u: npt.NDArray[np.float64],
) -> tuple[int, int]:
    """Top-left corner of a crop of size ``patch`` inside a slice (see :meth:`SliceSet.batch`)."""
    h, w = label.shape
    ph, pw = patch
    if h < ph or w < pw:
        raise ValueError(f"patch {list(patch)} is larger than the canvas {[h, w]}")
    voxels = np.argwhere(label == focus) if focus else np.empty((0, 2))
    if len(voxels):
        cy, cx = voxels[min(int(u[0] * len(voxels)), len(voxels) - 1)]
        y0 = int(cy) - ph // 2 + round((u[1] - 0.5) * ph / 2)
        x0 = int(cx) - pw // 2 + round((u[2] - 0.5) * pw / 2)
    else:
        y0, x0 = round(u[1] * (h - ph)), round(u[2] * (w - pw))
    return int(np.clip(y0, 0, h - ph)), int(np.clip(x0, 0, w - pw))
