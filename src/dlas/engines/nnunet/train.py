"""``dlas train`` with ``engine: nnunet``: nnU-Net v2 plans, preprocesses and trains; dlas keeps
the study's cases, split, fine-tuning rules, model format and records.

A run writes into one folder, as the DpnUNet engine does::

    OUT/
      run.json              what was asked for: recipe, data set, split and pretrained model,
                            with their hashes (checked on --resume)
      nnunet.log            everything nnU-Net printed
      folds/fold-K/         nnU-Net's training log and progress plot of fold K
      cv.json               per-fold, per-epoch losses and pseudo Dice, and the selection
      model.json + weights  the output model (:mod:`dlas.engines.nnunet.model`)
      nnunet-work/          nnU-Net's raw, preprocessed and results folders, while training
                            (removed when the model is written)

Steps: the training cases are exported in nnU-Net's raw format
(:func:`~dlas.engines.nnunet.export.export_nnunet`; cases lacking a structure are left out,
since nnU-Net would learn it as background). From scratch, nnU-Net extracts the data set's
fingerprint, plans and preprocesses. The study's split (:func:`dlas.training.cv.make_folds`,
stratified by cohort) is written as nnU-Net's ``splits_final.json``, so nnU-Net's folds are the
study's. Each fold trains in a child process (:mod:`dlas.engines.nnunet.worker`) with nnU-Net's
trainer, the recipe's epochs, iterations and seed.

Fine-tuning (``pretrained=``: an nnU-Net model made by dlas, or an nnU-Net result folder with
``plans.json``, ``dataset.json`` and ``fold_N/checkpoint_final.pth``, as TotalSegmentator ships
them) transfers the pretrained model's plans to the local data (its spacing, patch, network and
intensity normalisation), so that its weights fit; it then loads every weight. Result folders
written before nnU-Net 2.4 and NumPy 2 (TotalSegmentator's) are read too: their plans are
rewritten in today's format by nnU-Net's own conversion
(:func:`~dlas.engines.nnunet.checkpoint.current_plans`), and their checkpoints' NumPy names are
allowed under both spellings. The output layers
(``seg_layers``) follow the local classes: a class the pretrained model knows (same name, or a
name the structure set recognises as it) keeps its pretrained output weights, a new class gets
freshly initialised ones (seeded), and pretrained classes the local set lacks are dropped. A
region-based model (nnU-Net's overlapping regions, one sigmoid output each, no background
output) is fine-tuned the same way: a region of the same name as a local class lends that class
its output weights, and the background output starts fresh; dlas itself trains plain classes. Any
other layer that does not fit is an error listing the layers. ``freeze_encoder_epochs`` freezes
the encoder for the first epochs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlas import __version__
from dlas.dataset import Case, CaseDataset
from dlas.engines.nnunet.checkpoint import (
    NnUNetFileError,
    current_plans,
    load_checkpoint,
    require_nnunet,
)
from dlas.engines.nnunet.export import export_nnunet
from dlas.engines.nnunet.model import build_network, read_nnunet_model, save_nnunet_model
from dlas.engines.nnunet.worker import LOG_FILE, TRAINER_NAME, WEIGHTS_FILE
from dlas.io.atomic import write_json
from dlas.model.checkpoint import file_sha256, load_weights
from dlas.model.config import config_sha256
from dlas.model.qa_reference import CaseMeasures, build_qa_reference, measure_case
from dlas.model.runtime import resolve_device
from dlas.structures import StructureSet
from dlas.training.config import Recipe, TrainingConfigError
from dlas.training.cv import Fold, make_folds, split_sha256
from dlas.training.loop import EventCallback, TrainingError, TrainingEvent

if TYPE_CHECKING:
    import torch

    from dlas.training.api import TrainResult

__all__ = ["PretrainedNnUNet", "read_pretrained", "train_nnunet", "transfer_weights"]

log = logging.getLogger(__name__)

DATASET_ID = 1
DATASET_NAME = "Dataset001_dlas"
WORK = "nnunet-work"


@dataclass
class PretrainedNnUNet:
    """A pretrained nnU-Net model to fine-tune: plans, labels and one set of weights.

    ``classes`` names the network's output channels in order: the classes, background first;
    for a region-based model (``region_based``) its regions, without a background channel."""

    source: Path
    plans: dict[str, Any]
    configuration: str
    classes: list[str]
    weights: dict[str, torch.Tensor]
    sha256: str
    name: str
    fold: int | str | None
    region_based: bool = False


def _is_background(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(v == 0 for v in values)


def _output_channels(dataset_json: dict[str, Any], where: str) -> tuple[list[str], bool]:
    """The names of the network's output channels, in order, and whether the model is
    region-based (nnU-Net's ``labels`` with lists of label values, one sigmoid output per
    region and no background channel); ``ignore`` is never an output."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnUNetFileError(
            "pretrained nnU-Net labels missing",
            where=where,
            expected='"labels": {"background": 0, "name": 1, ...}',
            found=f"labels: {type(labels).__name__}",
            fix="use the dataset.json the model was trained with",
        )
    outputs = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) and len(set(v)) > 1 for v in outputs.values()):
        if not isinstance(dataset_json.get("regions_class_order"), list):
            raise NnUNetFileError(
                "region-based nnU-Net labels without regions_class_order",
                where=where,
                expected="regions_class_order beside region labels (as nnU-Net requires)",
                found="labels with lists of values and no regions_class_order",
                fix="use the dataset.json the model was trained with",
            )
        return [k for k, v in outputs.items() if not _is_background(v)], True
    if not all(isinstance(v, int) for v in outputs.values()):
        raise NnUNetFileError(
            "pretrained nnU-Net labels dlas cannot read",
            where=where,
            expected="one integer per class, or lists of integers for regions",
            found=", ".join(f"{k}={v!r}" for k, v in outputs.items())[:160],
            fix="use the dataset.json the model was trained with",
        )
    order = sorted(outputs, key=lambda k: outputs[k])
    if [outputs[k] for k in order] != list(range(len(order))):
        raise NnUNetFileError(
            "pretrained nnU-Net labels are not consecutive",
            where=where,
            expected="label values 0, 1, 2, ...",
            found=", ".join(f"{k}={outputs[k]}" for k in order),
            fix="fine-tune a model whose dataset.json has consecutive labels",
        )
    return order, False


def _result_folder(path: Path, fold: int | None) -> PretrainedNnUNet:
    plans_file, dataset_file = path / "plans.json", path / "dataset.json"
    folds = sorted(
        (p for p in path.glob("fold_*") if (p / "checkpoint_final.pth").is_file()),
        key=lambda p: p.name,
    )
    if not plans_file.is_file() or not dataset_file.is_file() or not folds:
        raise NnUNetFileError(
            "not an nnU-Net model folder",
            where=str(path),
            expected="a dlas nnU-Net model (model.json) or an nnU-Net result folder with "
            "plans.json, dataset.json and fold_N/checkpoint_final.pth",
            found="missing: "
            + ", ".join(
                name
                for name, ok in (
                    ("plans.json", plans_file.is_file()),
                    ("dataset.json", dataset_file.is_file()),
                    ("fold_N/checkpoint_final.pth", bool(folds)),
                )
                if not ok
            ),
            fix="point --from at the folder that holds plans.json (nnU-Net's "
            "Trainer__Plans__configuration folder)",
        )
    chosen = folds[0]
    if fold is not None:
        wanted = [p for p in folds if p.name == f"fold_{fold}"]
        if not wanted:
            raise NnUNetFileError(
                "pretrained fold not found",
                where=str(path),
                expected=f"fold_{fold}/checkpoint_final.pth (nnunet.pretrained_fold)",
                found="folds " + ", ".join(p.name for p in folds),
                fix="choose one of those folds",
            )
        chosen = wanted[0]
    checkpoint_file = chosen / "checkpoint_final.pth"
    checkpoint = load_checkpoint(checkpoint_file)
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    dataset_json = json.loads(dataset_file.read_text(encoding="utf-8"))
    configuration = checkpoint.configuration or path.name.rsplit("__", 1)[-1]
    classes, region_based = _output_channels(dataset_json, str(dataset_file))
    return PretrainedNnUNet(
        source=path,
        plans=current_plans(plans, configuration, where=str(plans_file)),
        configuration=configuration,
        classes=classes,
        region_based=region_based,
        weights=checkpoint.weights,
        sha256=config_sha256(
            {
                "plans": plans,
                "dataset_json": dataset_json,
                "checkpoint": file_sha256(checkpoint_file),
            }
        ),
        name=path.name,
        fold=chosen.name.removeprefix("fold_"),
    )


def read_pretrained(path: str | os.PathLike[str], fold: int | None = None) -> PretrainedNnUNet:
    """A pretrained nnU-Net model: a dlas nnU-Net model folder, or an nnU-Net result folder
    (its checkpoint read without executing it, :func:`load_checkpoint`).

    Raises
    ------
    NnUNetFileError, dlas.model.ModelFileError
        Not such a folder, unsafe or corrupt files.
    """
    p = Path(path)
    if (p / "model.json").is_file():
        info = read_nnunet_model(p)
        index = 0
        if fold is not None:
            index = next((i for i, w in enumerate(info.weights) if w.fold == fold), -1)
            if index < 0:
                raise NnUNetFileError(
                    "pretrained fold not found",
                    where=str(p),
                    expected=f"a member trained as fold {fold} (nnunet.pretrained_fold)",
                    found="folds " + ", ".join(str(w.fold) for w in info.weights),
                    fix="choose one of those folds, or leave nnunet.pretrained_fold out",
                )
        entry = info.weights[index]
        return PretrainedNnUNet(
            source=p,
            plans=info.plans,
            configuration=info.configuration,
            classes=info.classes,
            weights=load_weights(p / entry.file, sha256=entry.sha256),
            sha256=info.model_sha256,
            name=info.name,
            fold=entry.fold,
        )
    if not p.is_dir():
        raise NnUNetFileError(
            "pretrained model not found",
            where=str(p),
            expected="a dlas nnU-Net model folder or an nnU-Net result folder",
            found="no such folder",
            fix="check --from",
        )
    return _result_folder(p, fold)


def _class_mapping(
    local: list[str], outputs: list[str], structure_set: StructureSet
) -> dict[int, int]:
    """Local output index → pretrained output index, for each local class (background
    first) that a pretrained output names: the same name, or one the structure set matches."""
    mapping: dict[int, int] = {}
    for i, name in enumerate(local):
        for j, other in enumerate(outputs):
            if other == name or (i > 0 and structure_set.match(other) == name):
                mapping[i] = j
                break
    return mapping


def transfer_weights(
    network: torch.nn.Module,
    pretrained: PretrainedNnUNet,
    structure_set: StructureSet,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``network``'s state with every pretrained weight loaded; the output layers mapped class
    by class (see the module docstring). Returns the state and what was kept, added, dropped.

    Raises
    ------
    NnUNetFileError
        Layers other than the output layers that are missing or of another shape.
    """
    own = network.state_dict()
    source = pretrained.weights
    local = ["background", *structure_set.names]
    mapping = _class_mapping(local, pretrained.classes, structure_set)
    problems: list[str] = []
    state: dict[str, torch.Tensor] = {}
    for key, tensor in own.items():
        theirs = source.get(key)
        if theirs is None:
            problems.append(f"{key} missing")
        elif ".seg_layers." in key:
            if tuple(theirs.shape[1:]) != tuple(tensor.shape[1:]):
                problems.append(f"{key} {tuple(theirs.shape)} vs {tuple(tensor.shape)}")
                continue
            if theirs.shape[0] != len(pretrained.classes):
                problems.append(
                    f"{key} has {theirs.shape[0]} outputs, dataset.json names "
                    f"{len(pretrained.classes)} ({', '.join(pretrained.classes)[:80]})"
                )
                continue
            mapped = tensor.clone()
            for i, j in mapping.items():
                mapped[i] = theirs[j].to(mapped.dtype)
            state[key] = mapped
        elif tuple(theirs.shape) != tuple(tensor.shape):
            problems.append(f"{key} {tuple(theirs.shape)} vs {tuple(tensor.shape)}")
        else:
            state[key] = theirs.to(tensor.dtype).clone()
    unexpected = sorted(set(source) - set(own))
    problems += [f"{key} unexpected" for key in unexpected]
    if problems:
        raise NnUNetFileError(
            "pretrained nnU-Net weights do not fit the network of its own plans",
            where=str(pretrained.source),
            expected="every layer but the output layers of the same shape",
            found=f"{len(problems)} layer(s): " + "; ".join(problems[:6]),
            fix="fine-tune with the plans the checkpoint was trained with",
        )
    kept = [local[i] for i in sorted(mapping)]
    note: dict[str, Any] = {
        "kept": kept,
        "new": [n for i, n in enumerate(local) if i not in mapping],
        "dropped": [c for j, c in enumerate(pretrained.classes) if j not in mapping.values()],
        "matched": {local[i]: pretrained.classes[j] for i, j in mapping.items()},
    }
    if pretrained.region_based:  # recorded only when so: plain models keep their records
        note["region_based"] = True
    return state, note


def _run_step(job: dict[str, Any], work: Path, log_file: Path) -> None:
    """Run one nnU-Net step in a child process whose environment points into ``work``."""
    job_file = work / f"job-{job['action']}-{job.get('fold', 0)}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {
        **os.environ,
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        # Training: one process, nnU-Net's single-threaded augmenter (deterministic); planning:
        # the processes asked for.
        "nnUNet_n_proc_DA": "0" if job["action"] == "train" else str(job["processes"]),
        "OMP_NUM_THREADS": str(job.get("threads", job.get("processes", 1))),
        "PYTHONHASHSEED": "0",
    }
    with open(log_file, "a", encoding="utf-8") as out:
        out.write(f"\n=== dlas: nnU-Net step {job['action']} {job.get('fold', '')}\n")
        out.flush()
        completed = subprocess.run(
            [sys.executable, "-m", "dlas.engines.nnunet.worker", str(job_file)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if completed.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise TrainingError(
            f"nnU-Net step {job['action']} failed",
            where=str(log_file),
            expected="the step to finish (exit status 0)",
            found=f"exit status {completed.returncode}: " + " | ".join(tail)[-300:],
            fix="read the log for nnU-Net's own message",
        )


def _eligible(ds: CaseDataset, cohorts: Sequence[str] | None, recipe: Recipe) -> list[str]:
    ds.check_cohorts(cohorts, error=TrainingConfigError)
    ids = [c for c in ds.case_ids() if not cohorts or ds.record(c).cohort in cohorts]
    names = set(ds.structure_set.names)
    complete = [c for c in ids if names <= set(ds.set_structures(c))]
    lacking = sorted(set(ids) - set(complete))
    if lacking and recipe.missing_structures == "error":
        raise TrainingConfigError(
            "cases lack structures",
            where=f"data set {ds.root}",
            expected="every structure contoured in every case (missing_structures: error)",
            found=f"{len(lacking)} case(s), e.g. {lacking[0]}",
            fix="set missing_structures: skip-case",
        )
    if lacking:
        log.warning(
            "nnU-Net has no partial labels: %d case(s) lacking a structure left out (%s)",
            len(lacking),
            ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else ""),
        )
    if len(complete) < max(2, recipe.folds):
        raise TrainingError(
            "too few cases for nnU-Net",
            where=f"data set {ds.root}",
            expected=f"at least {max(2, recipe.folds)} cases with every structure",
            found=f"{len(complete)}",
            fix="add cases, or lower folds",
        )
    return complete


def _run_description(
    recipe: Recipe,
    ds: CaseDataset,
    case_ids: Sequence[str],
    split: Sequence[Fold],
    pretrained: PretrainedNnUNet | None,
) -> dict[str, Any]:
    parts = {
        "engine": "nnunet",
        "recipe": config_sha256({k: v for k, v in recipe.to_data().items() if k != "ensemble"}),
        "structure_set": ds.structure_set.sha256(),
        "dataset": ds.sha256(list(case_ids)),
        "split": split_sha256(split),
        "pretrained": pretrained.sha256 if pretrained else None,
    }
    return {
        "schema_version": 1,
        "kind": "dlas-training-run",
        "software": {"name": "dlas", "version": __version__},
        "run_sha256": config_sha256(parts),
        "hashes": parts,
        "recipe": recipe.to_data(),
        "dataset": {"name": ds.name, "sha256": parts["dataset"], "cases": len(case_ids)},
        "split": {"sha256": parts["split"], "folds": [f.to_data() for f in split]},
        "pretrained": (
            {
                "source": pretrained.name,
                "sha256": pretrained.sha256,
                "configuration": pretrained.configuration,
                "fold": pretrained.fold,
            }
            if pretrained
            else None
        ),
    }


def _splits(split: Sequence[Fold]) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json; a single fold without validation validates on its
    training cases (nnU-Net's ``all``), so that its pseudo Dice is on training data."""
    return [{"train": list(f.train), "val": list(f.validation) or list(f.train)} for f in split]


def _select(folds: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    def last(entry: dict[str, Any], key: str, worst: float) -> float:
        values = entry["log"].get(key) or [worst]
        value = values[-1]
        return float(value) if value is not None else worst

    if rule == "val_dsc":
        return max(folds, key=lambda f: last(f, "ema_fg_dice", float("-inf")))
    return min(folds, key=lambda f: last(f, "val_losses", float("inf")))


@dataclass
class _Run:
    """One nnU-Net training run: the model folder, its work folder and what every stage needs."""

    ds: CaseDataset
    out: Path
    recipe: Recipe
    source: PretrainedNnUNet | None
    split: list[Fold]
    run: dict[str, Any]
    device: torch.device
    emit: EventCallback
    started: float
    threads: int = 1
    plans_name: str = "nnUNetPlans"

    @property
    def work(self) -> Path:
        return self.out / WORK

    @property
    def raw(self) -> Path:
        return self.work / "raw" / DATASET_NAME

    @property
    def pre(self) -> Path:
        return self.work / "preprocessed" / DATASET_NAME

    @property
    def log_file(self) -> Path:
        return self.out / "nnunet.log"

    @property
    def configuration(self) -> str:
        return self.source.configuration if self.source else self.recipe.nnunet.configuration

    def prepare(self, case_ids: Sequence[str]) -> dict[str, CaseMeasures]:
        """Export, plan (or transfer the pretrained plans) and preprocess, once; returns the
        QA measures of the training cases (kept in the work folder for --resume)."""
        if self.source is not None:
            self.plans_name = str(self.source.plans.get("plans_name", "nnUNetPlans"))
        measures_file = self.work / "measures.json"
        if (self.pre / "splits_final.json").is_file() and measures_file.is_file():
            data = json.loads(measures_file.read_text(encoding="utf-8"))
            return {k: CaseMeasures(**v) for k, v in data.items()}
        measures: dict[str, CaseMeasures] = {}

        def measure(case: Case) -> None:
            measures[case.case_id] = measure_case(case.ct, case.structures)

        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "raw").mkdir(parents=True)
        self.emit(TrainingEvent("prepare", message=f"exporting {len(case_ids)} cases for nnU-Net"))
        export_nnunet(self.ds, self.work / "raw", dataset_id=DATASET_ID, name="dlas",
                      case_ids=case_ids, missing="error", on_case=measure)  # fmt: skip
        job = {
            "dataset_id": DATASET_ID,
            "configuration": self.configuration,
            "processes": self.threads,
            "plans": self.plans_name,
        }
        if self.source is None:
            self.emit(
                TrainingEvent("prepare", message="nnU-Net: fingerprint, plans, preprocessing")
            )
            _run_step({**job, "action": "plan"}, self.work, self.log_file)
        else:
            self.pre.mkdir(parents=True, exist_ok=True)
            plans = {**self.source.plans, "dataset_name": DATASET_NAME}
            write_json(self.pre / f"{self.plans_name}.json", plans)
            shutil.copy(self.raw / "dataset.json", self.pre / "dataset.json")
            self.emit(TrainingEvent("prepare", message="nnU-Net: preprocessing, pretrained plans"))
            _run_step({**job, "action": "preprocess"}, self.work, self.log_file)
        if self.recipe.nnunet.batch_size is not None:
            self._set_batch_size(self.recipe.nnunet.batch_size)
        write_json(self.pre / "splits_final.json", _splits(self.split))
        write_json(measures_file, {k: asdict(v) for k, v in measures.items()})
        return measures

    def _set_batch_size(self, batch_size: int) -> None:
        """nnU-Net plans its batch for a GPU's memory; the recipe may set it (e.g. on a CPU)."""
        path = self.pre / f"{self.plans_name}.json"
        plans = json.loads(path.read_text(encoding="utf-8"))
        plans["configurations"][self.configuration]["batch_size"] = int(batch_size)
        write_json(path, plans)

    def initial_weights(self) -> tuple[Path | None, dict[str, Any] | None]:
        """For fine-tuning: the pretrained weights mapped onto the local network (a
        safetensors file in the work folder) and what was kept, added and dropped."""
        if self.source is None:
            return None, None
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(self.recipe.seed)
        network = build_network(
            self.plans(),
            self.configuration,
            self.dataset_json(),
            deep_supervision=True,
            where=str(self.source.source),
        )
        state, note = transfer_weights(network, self.source, self.ds.structure_set)
        path = self.work / "init.safetensors"
        save_file({k: v.clone() for k, v in state.items()}, str(path))
        log.info(
            "fine-tuning %s: classes kept %s, new %s, dropped %s",
            self.source.name,
            note["kept"],
            note["new"],
            note["dropped"],
        )
        return path, note

    def plans(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.pre / f"{self.plans_name}.json").read_text(encoding="utf-8")
        )
        return data

    def dataset_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.raw / "dataset.json").read_text(encoding="utf-8"))
        return data

    def _deadline(self, left: int) -> float | None:
        """Wall-clock time (``time.time()``) by which the next fold must finish training:
        what is left of the time budget, shared by the ``left`` folds still to train."""
        if self.recipe.time_budget is None:
            return None
        remaining = self.recipe.time_budget - (time.perf_counter() - self.started)
        return time.time() + max(remaining - _RESERVE_S, 0.0) / max(left, 1)

    def train_folds(self, init: Path | None) -> list[dict[str, Any]]:
        """Train every fold not trained yet; returns each fold's record (log, weights)."""
        plans_name, configuration = self.plans_name, self.configuration
        results = (
            self.work / "results" / DATASET_NAME / f"{TRAINER_NAME}__{plans_name}__{configuration}"
        )
        folds: list[dict[str, Any]] = []
        todo = [
            n for n in range(len(self.split)) if not (results / f"fold_{n}" / LOG_FILE).is_file()
        ]
        for n, fold in enumerate(self.split):
            folder = results / f"fold_{n}"
            if n in todo:
                self.emit(TrainingEvent("fold", fold=fold.index, folds=len(self.split)))
                shutil.rmtree(folder, ignore_errors=True)
                job = self._train_job(n, fold, init, self._deadline(len(todo) - todo.index(n)))
                _run_step(job, self.work, self.log_file)
            record = json.loads((folder / LOG_FILE).read_text(encoding="utf-8"))
            folds.append({"fold": fold.index, "folder": folder, **record})
            _emit_epochs(self.emit, fold.index, len(self.split), record["log"])
        return folds

    def _train_job(
        self, n: int, fold: Fold, init: Path | None, deadline: float | None
    ) -> dict[str, Any]:
        recipe = self.recipe
        return {
            "action": "train",
            "dataset_id": DATASET_ID,
            "configuration": self.configuration,
            "fold": n,
            "plans_file": str(self.pre / f"{self.plans_name}.json"),
            "dataset_json": str(self.raw / "dataset.json"),
            "epochs": recipe.epochs,
            "deadline": deadline,
            "iterations": recipe.steps_per_epoch,
            "val_iterations": recipe.nnunet.val_steps_per_epoch,
            "initial_lr": recipe.nnunet.initial_lr,
            "freeze_encoder_epochs": recipe.freeze_encoder_epochs,
            "seed": recipe.seed + fold.index,
            "device": str(self.device),
            "threads": self.threads,
            "deterministic": recipe.deterministic == "on"
            or (recipe.deterministic == "auto" and self.device.type == "cpu"),
            "init_weights": str(init) if init else None,
        }

    def save(
        self,
        folds: list[dict[str, Any]],
        measures: dict[str, CaseMeasures],
        init_note: dict[str, Any] | None,
        name: str | None,
    ) -> TrainResult:
        """Select the fold (or keep the ensemble), write the model folder, cv.json and logs."""
        from dlas.training.api import TrainResult

        recipe = self.recipe
        rule = recipe.selection if any(f.validation for f in self.split) else "last"
        chosen = _select(folds, rule)
        members = folds if recipe.ensemble else [chosen]
        history = [_history(f["log"]) for f in folds]
        selection = {
            "rule": rule,
            "requested_rule": recipe.selection,
            "fold": None if recipe.ensemble else chosen["fold"],
            "ensemble": recipe.ensemble,
            "members": [m["fold"] for m in members],
        }
        info = save_nnunet_model(
            self.out,
            name=name or "dlas nnU-Net",
            plans=self.plans(),
            configuration=self.configuration,
            dataset_json=self.dataset_json(),
            trainer_name=TRAINER_NAME,
            mirroring_axes=chosen["mirroring_axes"],
            structure_set=self.ds.structure_set,
            members=[
                (load_weights(m["folder"] / WEIGHTS_FILE), m["fold"], m["epochs"]) for m in members
            ],
            training={
                "engine": "nnunet",
                "run_sha256": self.run["run_sha256"],
                "recipe": self.run["recipe"],
                "recipe_sha256": recipe.sha256(),
                "dataset": self.run["dataset"],
                "split": self.run["split"],
                "pretrained": {**self.run["pretrained"], "classes": init_note}
                if self.source
                else None,
                "selection": selection,
                "schedule": {
                    "time_budget": recipe.time_budget,
                    "epochs": recipe.epochs,
                    "epochs_trained": [len(h) for h in history],
                    "steps_per_epoch": recipe.steps_per_epoch,
                    "seconds": round(time.perf_counter() - self.started, 1),
                },
                "folds": [
                    {"fold": f["fold"], "history": h} for f, h in zip(folds, history, strict=True)
                ],
                "device": self.device.type,
            },
            qa=build_qa_reference(
                [measures[c] for c in sorted(measures)], self.ds.structure_set.names
            ),
        )
        self._records(folds, history, selection, info.model_sha256)
        return TrainResult(
            model_dir=self.out,
            model_sha256=info.model_sha256,
            selected_fold=None if recipe.ensemble else int(chosen["fold"]),
            ensemble=recipe.ensemble,
            folds=[
                {
                    "fold": f["fold"],
                    "best_epoch": f["epochs"],
                    "best_score": (f["log"].get("ema_fg_dice") or [None])[-1],
                    "history": h,
                }
                for f, h in zip(folds, history, strict=True)
            ],
        )

    def _records(
        self,
        folds: list[dict[str, Any]],
        history: list[list[dict[str, Any]]],
        selection: dict[str, Any],
        model_sha256: str,
    ) -> None:
        write_json(
            self.out / "cv.json",
            {
                "schema_version": 1,
                "engine": "nnunet",
                "software": {"name": "dlas", "version": __version__},
                "run_sha256": self.run["run_sha256"],
                "model_sha256": model_sha256,
                "selection": selection,
                "folds": [
                    {
                        "fold": f["fold"],
                        "history": h,
                        "train": list(s.train),
                        "validation": list(s.validation),
                    }
                    for f, h, s in zip(folds, history, self.split, strict=True)
                ],
            },
        )
        for f in folds:
            target = self.out / "folds" / f"fold-{f['fold']}"
            target.mkdir(parents=True, exist_ok=True)
            for item in [*f["folder"].glob("training_log_*.txt"), f["folder"] / "progress.png"]:
                if item.is_file():
                    shutil.copy(item, target / item.name)
        if not self.recipe.nnunet.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


#: Seconds of a time budget kept for writing the model after the last fold.
_RESERVE_S = 10.0


def train_nnunet(
    ds: CaseDataset,
    out: Path,
    recipe: Recipe,
    *,
    pretrained: str | os.PathLike[str] | None,
    device: str,
    resume: bool,
    cohorts: Sequence[str] | None,
    name: str | None,
    emit: EventCallback,
) -> TrainResult:
    """Train or fine-tune with nnU-Net (see the module docstring); ``dlas.training.train``
    calls this for ``engine: nnunet``.

    Raises
    ------
    TrainingConfigError, TrainingError, NnUNetFileError, dlas.model.ModelFileError
        A bad request, too few cases, a failed nnU-Net step, an unusable pretrained model.
    """
    from dlas.training.api import RUN_JSON, _check_output

    require_nnunet()
    started = time.perf_counter()
    case_ids = _eligible(ds, cohorts, recipe)
    source = read_pretrained(pretrained, recipe.nnunet.pretrained_fold) if pretrained else None
    split = make_folds(
        case_ids,
        recipe.folds,
        seed=recipe.seed,
        cohorts={c: ds.record(c).cohort for c in case_ids},
        stratify=recipe.stratify_by_cohort,
    )
    run = _run_description(recipe, ds, case_ids, split, source)
    _check_output(out, run, resume)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_JSON, run)
    state = _Run(ds, out, recipe, source, split, run, resolve_device(device), emit, started,
                 threads=max(1, min(os.cpu_count() or 1, 8)))  # fmt: skip
    measures = state.prepare(case_ids)
    init, init_note = state.initial_weights()
    folds = state.train_folds(init)
    result = state.save(folds, measures, init_note, name)
    emit(TrainingEvent("done", message=result.model_sha256))
    return result


def _history(log_data: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Per epoch: training and validation loss, nnU-Net's pseudo Dice (mean and its EMA), lr."""
    epochs = len(log_data.get("train_losses", []))

    def at(key: str, i: int) -> Any:
        values = log_data.get(key) or []
        return values[i] if i < len(values) else None

    return [
        {
            "epoch": i + 1,
            "train_loss": at("train_losses", i),
            "val_loss": at("val_losses", i),
            "val_dsc": at("mean_fg_dice", i),
            "ema_val_dsc": at("ema_fg_dice", i),
            "lr": at("lrs", i),
        }
        for i in range(epochs)
    ]


def _emit_epochs(
    emit: EventCallback, fold: int, folds: int, log_data: dict[str, list[Any]]
) -> None:
    history = _history(log_data)
    for h in history:
        emit(
            TrainingEvent(
                "epoch",
                fold=fold,
                folds=folds,
                epoch=h["epoch"],
                epochs=len(history),
                train_loss=h["train_loss"],
                val_loss=h["val_loss"],
                val_dsc=h["val_dsc"],
                lr=h["lr"],
            )
        )
