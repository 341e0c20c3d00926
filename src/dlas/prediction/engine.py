"""Slice-batched inference of a DpnUNet (or a fold ensemble) on one CT volume.

For a CT (any axis-aligned orientation) the engine brings the volume to the canonical axial
orientation, resamples its body region onto the model grid once, runs the network(s) on batches
of slices (each with its neighbours as channels; by overlapping tiles when the model was trained
on patches, :mod:`dlas.model.inference`), averages the softmax probabilities of the
ensemble members (and of the left-right mirrored input with left/right classes swapped, when
test-time augmentation is on), resamples the probabilities bilinearly onto the CT pixels, takes
the arg-max, applies each structure's post-processing and returns boolean masks on exactly the
CT's grid (z, y, x). Pixels outside the body region are background.

:meth:`Predictor.predict_with_agreement` also measures how much the members agree (for prediction
QA's uncertainty score, :mod:`dlas.prediction.qa`): every member — each network of the ensemble,
and each of its test-time passes — gets its own arg-max on the CT pixels (before post-processing),
and per structure the engine counts each member's voxels and the voxels every pair of members
shares; it also maps, per voxel, how many members disagree with the ensemble's label. Only counts
are kept, never the members' masks, so memory stays one CT-sized byte array whatever the number
of members. :meth:`Predictor.predict` does none of this and runs exactly as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dlas.io.volume import Volume
from dlas.model.checkpoint import LoadedModel, load_model
from dlas.model.inference import slice_logits
from dlas.model.preprocessing import (
    canonical_axial,
    context_indices,
    plan_grid,
    resample_to_ct,
    resample_to_model,
)
from dlas.model.runtime import lr_swap_table, resolve_device
from dlas.prediction.postprocess import postprocess_mask

if TYPE_CHECKING:
    import torch

    from dlas.engines.nnunet.model import NnUNetPredictor
    from dlas.structures import StructureSet

__all__ = ["MemberAgreement", "Predictor", "back_to_grid", "open_predictor", "structure_masks"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class MemberAgreement:
    """How much the members of an ensemble (and its test-time passes) agree, per class.

    Attributes
    ----------
    members
        Number of members (networks x test-time passes).
    sizes
        ``(members, classes)``: voxels each member labels with each class.
    shared
        ``(members, members, classes)``: voxels two members both label with the class.
    union, unanimous
        ``(classes,)``: voxels that any member, and that every member, labels with the class.
    disagreement
        Per voxel of the CT's grid (z, y, x), the number of members whose label differs from the
        ensemble's (uint8); None when not kept.

    Counts are of the members' arg-max labels before post-processing. Class 0 is background.
    """

    members: int
    sizes: npt.NDArray[np.int64]
    shared: npt.NDArray[np.int64]
    union: npt.NDArray[np.int64]
    unanimous: npt.NDArray[np.int64]
    disagreement: Volume | None = None

    @classmethod
    def empty(cls, members: int, classes: int) -> MemberAgreement:
        """All counts zero."""
        return cls(
            members=members,
            sizes=np.zeros((members, classes), dtype=np.int64),
            shared=np.zeros((members, members, classes), dtype=np.int64),
            union=np.zeros(classes, dtype=np.int64),
            unanimous=np.zeros(classes, dtype=np.int64),
        )

    def add(self, member_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count a block of voxels: ``member_labels`` (members, ...) and the ensemble's
        ``labels`` (...) of the same voxels; returns the per-voxel disagreement count (uint8)."""
        import torch

        m = member_labels.shape[0]
        flat = member_labels.reshape(m, -1)
        for c in range(1, self.sizes.shape[1]):
            votes = (flat == c).to(torch.float32)
            # float32 counts are exact up to 2**24 voxels, more than one block ever holds.
            self.sizes[:, c] += votes.sum(1).round().to(torch.int64).cpu().numpy()
            self.shared[:, :, c] += (votes @ votes.T).round().to(torch.int64).cpu().numpy()
            count = votes.sum(0)
            self.union[c] += int((count > 0).sum())
            self.unanimous[c] += int((count == m).sum())
        return (member_labels != labels[None]).sum(0).to(torch.uint8)

    def mean_pairwise_dsc(self, c: int) -> float:
        """Mean DSC over all pairs of members for class ``c`` (a pair that both leave the class
        empty agrees: DSC 1); 1.0 for a single member."""
        if self.members < 2:
            return 1.0
        values = []
        for i in range(self.members):
            for j in range(i + 1, self.members):
                total = int(self.sizes[i, c] + self.sizes[j, c])
                values.append(1.0 if total == 0 else 2.0 * int(self.shared[i, j, c]) / total)
        return float(np.mean(values))

    def unagreed_fraction(self, c: int) -> float:
        """Share of the voxels any member labels ``c`` that not every member labels ``c``
        (0.0 when no member labels it)."""
        union = int(self.union[c])
        return 0.0 if union == 0 else 1.0 - int(self.unanimous[c]) / union


class Predictor:
    """A loaded model ready to predict CT volumes.

    Parameters
    ----------
    model
        A model folder or a :class:`~dlas.model.LoadedModel`.
    device
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    batch_size
        Slices per forward pass.
    tta
        Average with the prediction of the left-right mirrored CT (labels of left/right
        structures swapped); doubles the time.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | LoadedModel,
        *,
        device: str = "auto",
        batch_size: int = 8,
        tta: bool = False,
    ) -> None:
        dev = resolve_device(device)
        self.model = model if isinstance(model, LoadedModel) else load_model(model, device=dev)
        if self.model.device != dev:
            self.model.networks = [n.to(dev) for n in self.model.networks]
            self.model.device = dev
        self.device = dev
        self.batch_size = max(1, int(batch_size))
        info = self.model.info
        swap = lr_swap_table(info.structure_set)
        if tta and swap is None:
            log.warning(
                "test-time flipping disabled: a sided structure of %s has no counterpart",
                info.structure_set.name,
            )
        self.tta = bool(tta and swap is not None)
        self._swap = swap
        self._amp = dev.type == "cuda"
        if self._amp:
            import torch

            for net in self.model.networks:
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def structures(self) -> list[str]:
        """Names of the structures predicted."""
        return self.model.info.structures

    @property
    def members(self) -> int:
        """Members whose probabilities are averaged: networks x test-time passes."""
        return len(self.model.networks) * (2 if self.tta else 1)

    def _probabilities(
        self, x: torch.Tensor, each: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Mean class probabilities of every member; with ``each``, every member's own
        probabilities are appended to it too."""
        import torch

        if self._amp:
            x = x.contiguous(memory_format=torch.channels_last)
        total: torch.Tensor | None = None
        count = 0
        inputs = [(x, False)] + ([(x.flip(-1), True)] if self.tta else [])
        patch = self.model.info.preprocessing.patch
        for net in self.model.networks:
            for data, flipped in inputs:
                if self._amp:
                    with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                        logits = slice_logits(net, data, patch).float()
                else:
                    logits = slice_logits(net, data, patch)
                probs = torch.softmax(logits, dim=1)
                if flipped:
                    assert self._swap is not None
                    probs = probs.flip(-1)[:, torch.from_numpy(self._swap).to(probs.device)]
                if each is not None:
                    each.append(probs)
                total = probs if total is None else total + probs
                count += 1
        assert total is not None
        return total / count

    def predict_labels(
        self, ct: Volume, *, progress: ProgressCallback | None = None
    ) -> tuple[Volume, npt.NDArray[np.uint8]]:
        """Arg-max class per voxel (0 background, ``i`` structure ``i - 1``) on the canonical
        axial grid of ``ct``; returns that grid's CT volume and the labels (z, y, x)."""
        return self._labels(ct, progress, None)

    def _labels(
        self,
        ct: Volume,
        progress: ProgressCallback | None,
        agreement: MemberAgreement | None,
    ) -> tuple[Volume, npt.NDArray[np.uint8]]:
        """See :meth:`predict_labels`; with ``agreement``, also count the members' agreement
        (its ``disagreement`` map is set on the canonical grid)."""
        import torch

        info = self.model.info
        pre = info.preprocessing
        arch = info.architecture
        ct_c = canonical_axial(ct)
        grid = plan_grid(ct_c, pre, arch.size_multiple)
        nz = ct_c.shape[0]
        scale, air = pre.intensity_affine()
        y0, y1, x0, x1 = grid.box
        labels = np.zeros(ct_c.shape, dtype=np.uint8)
        disagreement = np.zeros(ct_c.shape, dtype=np.uint8) if agreement is not None else None
        chunk = max(self.batch_size, 16)
        with torch.inference_mode():
            image = torch.empty((nz, *grid.shape), dtype=torch.float32, device=self.device)
            for z0 in range(0, nz, chunk):
                z1 = min(nz, z0 + chunk)
                hu = np.clip(ct_c.array[z0:z1].astype(np.float32), pre.hu_min, pre.hu_max)
                shifted = torch.from_numpy(hu - pre.hu_min).to(self.device)[:, None]
                image[z0:z1] = resample_to_model(shifted, grid)[:, 0] * scale + air
            for z0 in range(0, nz, self.batch_size):
                z1 = min(nz, z0 + self.batch_size)
                index = torch.tensor(
                    [context_indices(z, nz, arch.in_slices) for z in range(z0, z1)],
                    device=self.device,
                )
                each: list[torch.Tensor] | None = [] if agreement is not None else None
                probs = self._probabilities(image[index], each)
                block = resample_to_ct(probs, grid).argmax(1).to(torch.uint8)
                labels[z0:z1, y0:y1, x0:x1] = block.cpu().numpy()
                if agreement is not None and each is not None and disagreement is not None:
                    members = torch.stack(
                        [resample_to_ct(p, grid).argmax(1).to(torch.uint8) for p in each]
                    )
                    counts = agreement.add(members, block)
                    disagreement[z0:z1, y0:y1, x0:x1] = counts.cpu().numpy()
                if progress is not None:
                    progress(z1, nz, "slices")
        if agreement is not None and disagreement is not None:
            agreement.disagreement = ct_c.with_array(disagreement)
        return ct_c, labels

    def predict(self, ct: Volume, *, progress: ProgressCallback | None = None) -> dict[str, Volume]:
        """Post-processed boolean masks per structure on exactly the grid of ``ct``."""
        ct_c, labels = self._labels(ct, progress, None)
        return self._masks(ct, ct_c, labels)

    def predict_with_agreement(
        self, ct: Volume, *, progress: ProgressCallback | None = None
    ) -> tuple[dict[str, Volume], MemberAgreement]:
        """:meth:`predict`'s masks, and how much the members agree (see
        :class:`MemberAgreement`; its disagreement map is on the grid of ``ct``).

        The masks are the same as :meth:`predict`'s; the members' own arg-max costs one extra
        resampling per member and slice batch.
        """
        agreement = MemberAgreement.empty(self.members, len(self.model.info.classes))
        ct_c, labels = self._labels(ct, progress, agreement)
        if agreement.disagreement is not None:
            agreement.disagreement = back_to_grid(agreement.disagreement, ct)
        return self._masks(ct, ct_c, labels), agreement

    def _masks(self, ct: Volume, ct_c: Volume, labels: npt.NDArray[np.uint8]) -> dict[str, Volume]:
        info = self.model.info
        return structure_masks(info.structure_set, info.structures, ct, ct_c, labels)

    @property
    def body_threshold_hu(self) -> float:
        """The HU threshold of the model's body region (prediction QA's body mask too)."""
        return self.model.info.preprocessing.body_threshold_hu


def structure_masks(
    structure_set: StructureSet,
    structures: Sequence[str],
    ct: Volume,
    ct_c: Volume,
    labels: npt.NDArray[np.uint8],
) -> dict[str, Volume]:
    """Post-processed boolean masks per structure (label ``i`` is ``structures[i - 1]``) from
    labels on ``ct_c``, the canonical grid of ``ct``, on exactly the grid of ``ct``."""
    masks: dict[str, Volume] = {}
    for i, name in enumerate(structures, start=1):
        mask = postprocess_mask(labels == i, structure_set[name].postprocess)
        masks[name] = back_to_grid(ct_c.with_array(mask), ct)
    return masks


def open_predictor(
    model: str | os.PathLike[str], *, device: str = "auto", batch_size: int = 8, tta: bool = False
) -> Predictor | NnUNetPredictor:
    """A predictor for a model folder of either engine (DpnUNet or nnU-Net)."""
    from dlas.model.checkpoint import model_format

    if model_format(model) == "dlas-nnunet":
        from dlas.engines.nnunet.model import NnUNetPredictor

        return NnUNetPredictor(model, device=device, tta=tta)
    return Predictor(model, device=device, batch_size=batch_size, tta=tta)


def back_to_grid(mask: Volume, reference: Volume) -> Volume:
    """``mask`` (canonical grid) on the grid of ``reference`` (the same voxels, maybe permuted);
    a boolean mask stays boolean, a count map keeps its values and type."""
    boolean = mask.array.dtype == bool
    if mask.same_grid(reference):
        return reference.with_array(np.asarray(mask.array, dtype=bool) if boolean else mask.array)
    import SimpleITK as sitk

    resampled = sitk.Resample(
        mask.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    back = Volume.from_sitk(resampled)
    return reference.with_array(back.array != 0 if boolean else back.array.astype(mask.array.dtype))
