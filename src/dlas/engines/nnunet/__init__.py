"""nnU-Net v2 as a second engine: export to its raw format, train and fine-tune with it, predict.

nnU-Net (Isensee et al., Nature Methods 2021) is the field's reference trainer, and pretrained
CT models a clinic can obtain (TotalSegmentator) are nnU-Net v2 result folders. dlas uses
nnunetv2 as the engine — its planning, preprocessing, trainer, network and sliding-window
predictor — and adds what nnU-Net lacks: DICOM-RT in and out, cohorts, the study's
cross-validation split, fine-tuning across class lists, safe loading of checkpoints, the
statistics and the report.

- :func:`export_nnunet` (``dlas export-nnunet``) writes a data set in nnU-Net's raw format.
- ``engine: nnunet`` in a training recipe makes ``dlas train`` drive nnU-Net
  (:func:`train_nnunet`); the model folder it writes is a dlas model (``model.json`` and
  safetensors weights) that ``dlas predict`` and ``dlas study`` use like any other.
- :func:`load_checkpoint` reads an nnU-Net checkpoint (a pickle) without executing it.

nnunetv2 is an optional extra: ``pip install 'dlas[nnunet]'``. :func:`require_nnunet` says how to
install it when it is missing.
"""

from __future__ import annotations

from dlas.engines.nnunet.checkpoint import NnUNetFileError, load_checkpoint, require_nnunet
from dlas.engines.nnunet.export import ExportResult, export_nnunet

__all__ = [
    "ExportResult",
    "NnUNetFileError",
    "export_nnunet",
    "load_checkpoint",
    "require_nnunet",
]
