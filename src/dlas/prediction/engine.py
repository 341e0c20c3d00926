"""Slice-batched inference of a DpnUNet (or a fold ensemble) on one CT volume.

For a CT (any axis-aligned orientation) the engine brings the volume to the canonical axial
orientation, resamples its body region onto the model grid once, runs the network(s) on batches
of slices (each with its neighbours as channels; by overlapping tiles when the model was trained
on patches, :mod:`dlas.model.inference`), averages the softmax probabilities of the
ensemble members (and of the left-right mirrored input with left/right classes swapped, when
test-time augmentation is on), resamples the probabilities bilinearly onto the CT pixels, takes
the arg-max, applies each structure's post-processing and returns boolean masks on exactly the
CT's grid (z, y, x). Pixels outside the body region are background.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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

__all__ = ["Predictor"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]


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

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
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
                total = probs if total is None else total + probs
                count += 1
        assert total is not None
        return total / count

    def predict_labels(
        self, ct: Volume, *, progress: ProgressCallback | None = None
    ) -> tuple[Volume, npt.NDArray[np.uint8]]:
        """Arg-max class per voxel (0 background, ``i`` structure ``i - 1``) on the canonical
        axial grid of ``ct``; returns that grid's CT volume and the labels (z, y, x)."""
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
                probs = self._probabilities(image[index])
                back = resample_to_ct(probs, grid)
                labels[z0:z1, y0:y1, x0:x1] = back.argmax(1).to(torch.uint8).cpu().numpy()
                if progress is not None:
                    progress(z1, nz, "slices")
        return ct_c, labels

    def predict(self, ct: Volume, *, progress: ProgressCallback | None = None) -> dict[str, Volume]:
        """Post-processed boolean masks per structure on exactly the grid of ``ct``."""
        info = self.model.info
        ct_c, labels = self.predict_labels(ct, progress=progress)
        masks: dict[str, Volume] = {}
        for i, name in enumerate(info.structures, start=1):
            rule = info.structure_set[name].postprocess
            mask = postprocess_mask(labels == i, rule)
            masks[name] = _back_to_grid(ct_c.with_array(mask), ct)
        return masks


def _back_to_grid(mask: Volume, reference: Volume) -> Volume:
    """``mask`` (canonical grid) on the grid of ``reference`` (the same voxels, maybe permuted)."""
    if mask.same_grid(reference):
        return reference.with_array(np.asarray(mask.array, dtype=bool))
    import SimpleITK as sitk

    resampled = sitk.Resample(
        mask.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    back = Volume.from_sitk(resampled)
    return reference.with_array(back.array != 0)
