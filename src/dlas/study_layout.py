"""Where everything of a study folder lies: the one owner of the layout `dlas study` writes.

The runner writes a study through it and the report reads one through it, so the two cannot
disagree (the report used to assume ``data/`` and ``models/`` even for a study run on an
existing data set or a given vendor model)::

    STUDY/
      study.yaml                     resolved configuration and its hash
      study.log                      the step log
      .steps/<step>.json             completion markers (resume)
      source/                        the generated replica's DICOM (replica studies only)
      data/                          the data set, unless data.kind is dataset (then data.path)
      models/<MODEL>/                models trained here (a given pretrained_model stays where
                                     it is)
      predictions/<MODEL>/<case_id>/structures/<Name>.nii.gz
      predictions/rtstruct-sample/   RTSTRUCTs of a few DICOM cases
      metrics.csv, metrics.json      `dlas evaluate`
      comparison/                    `dlas compare` (comparison.csv, Table 2, interobserver.csv)
      report/index.html              `dlas report`

Only paths live here (no dlas imports), so every layer may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StudyLayout"]


@dataclass(frozen=True)
class StudyLayout:
    """The paths of one study folder.

    Attributes
    ----------
    root
        The study folder.
    dataset_path
        The data set when the study reads one in place (``data.kind: dataset``); None for
        ``root/data``.
    pretrained_model
        The vendor model folder when given (``pretrained_model``); None when trained here.
    """

    root: Path
    dataset_path: Path | None = None
    pretrained_model: Path | None = None

    @classmethod
    def of(cls, root: str | os.PathLike[str], config: dict[str, Any] | None = None) -> StudyLayout:
        """The layout of the study at ``root`` with its configuration (the resolved data of
        ``study.yaml``; read from the folder when not given, and an unreadable or absent file
        gives the default layout)."""
        path = Path(root)
        if config is None:
            config = _read_config(path / "study.yaml")
        data = config.get("data") if isinstance(config, dict) else None
        dataset = None
        if isinstance(data, dict) and data.get("kind") == "dataset" and data.get("path"):
            dataset = Path(str(data["path"]))
        model = config.get("pretrained_model") if isinstance(config, dict) else None
        return cls(path, dataset, Path(str(model)) if model else None)

    # ---------------------------------------------------------------- files of the study
    @property
    def config(self) -> Path:
        return self.root / "study.yaml"

    @property
    def log(self) -> Path:
        return self.root / "study.log"

    def marker(self, step: str) -> Path:
        """Completion marker of a step."""
        return self.root / ".steps" / f"{step}.json"

    @property
    def source(self) -> Path:
        """The generated replica's DICOM export."""
        return self.root / "source"

    @property
    def data(self) -> Path:
        """The study's data set."""
        return self.dataset_path if self.dataset_path is not None else self.root / "data"

    @property
    def models(self) -> Path:
        """Models trained in the study."""
        return self.root / "models"

    def model(self, name: str, *, vendor: bool = False) -> Path:
        """A model's folder: the given pretrained model for the vendor model when there is
        one, else ``models/<name>``."""
        if vendor and self.pretrained_model is not None:
            return self.pretrained_model
        return self.models / name

    @property
    def predictions_root(self) -> Path:
        return self.root / "predictions"

    def predictions(self, name: str) -> Path:
        """A model's prediction folder (``<case_id>/structures/<Name>.nii.gz``)."""
        return self.predictions_root / name

    @property
    def rtstruct_sample(self) -> Path:
        return self.predictions_root / "rtstruct-sample"

    @property
    def metrics(self) -> Path:
        """``metrics.csv`` (its sidecar ``metrics.json`` lies next to it)."""
        return self.root / "metrics.csv"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    @property
    def report(self) -> Path:
        return self.root / "report"


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
