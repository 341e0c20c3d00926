"""``train()``: pretraining, localized fine-tuning and k-fold cross-validation (``dlas train``).

A run writes into one folder::

    OUT/
      run.json                what was asked for: recipe, architecture, preprocessing, data set,
                              split and pretrained model, with their hashes (checked on --resume)
      folds/fold-K/           per-fold training state (see dlas.training.state)
      cv.json, cv.csv         per-fold, per-epoch curves and the selection
      learning-curves.png     training / validation loss and validation Dice, a panel per fold
      model.json + weights    the output model (the selected fold, or the fold ensemble)

Fine-tuning (``pretrained=``) starts every fold from the pretrained weights. The architecture and
preprocessing are the pretrained model's (fields set explicitly in the recipe override them, and
weights that no longer fit are an error listing the layers). When the structure set differs from
the pretrained model's classes, the output head is re-initialised (seeded); everything else must
match.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlas import __version__
from dlas.dataset import CaseDataset
from dlas.io.atomic import write_json, write_text
from dlas.model.checkpoint import (
    ModelInfo,
    check_state_dict,
    load_weights,
    read_model_info,
    save_model,
)
from dlas.model.config import DpnUNetConfig, Preprocessing, config_sha256
from dlas.model.qa_reference import CaseMeasures, build_qa_reference, measure_case
from dlas.model.runtime import lr_swap_table, resolve_device
from dlas.training.budget import BudgetPlan, measure_step, plan_budget
from dlas.training.config import Recipe, TrainingConfigError, load_recipe
from dlas.training.curves import write_learning_curves
from dlas.training.cv import Fold, make_folds, split_sha256
from dlas.training.data import (
    PreparedCase,
    SliceSet,
    class_frequencies,
    class_weights,
    fit_intensity,
    pad_to_canvas,
    prepare_case,
)
from dlas.training.distributed import DistContext, init_distributed
from dlas.training.folds import concurrent_refusal, train_folds_together
from dlas.training.loop import (
    EventCallback,
    FoldSetup,
    TrainingEvent,
    steps_in_epoch,
    train_fold,
)
from dlas.training.state import FoldState, best_weights, load_fold_state

if TYPE_CHECKING:
    import torch

    from dlas.model.dpn_unet import DpnUNet

__all__ = ["TrainResult", "initial_network", "train"]

log = logging.getLogger(__name__)

RUN_JSON = "run.json"


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    model_sha256: str
    selected_fold: int | None
    ensemble: bool
    folds: list[dict[str, Any]] = field(default_factory=list)


def _select_cases(
    dataset: CaseDataset, cohorts: Sequence[str] | None, recipe: Recipe
) -> tuple[list[str], list[str]]:
    """Case ids to train on, and notes about cases left out."""
    known = dataset.cohorts()
    if cohorts:
        dataset.check_cohorts(cohorts, error=TrainingConfigError)
        ids = [c for name in cohorts for c in known[name]]
    else:
        ids = dataset.case_ids()
    if not ids:
        raise TrainingConfigError(
            "no cases to train on",
            where=str(dataset.root),
            expected="at least one case",
            found="an empty selection",
            fix="import cases first, or choose another --cohort",
        )
    names = dataset.structure_set.names
    notes: list[str] = []
    usable: list[str] = []
    for case_id in sorted(ids):
        missing = [n for n in names if n not in dataset.record(case_id).structures]
        if not missing:
            usable.append(case_id)
            continue
        if recipe.missing_structures == "error":
            raise TrainingConfigError(
                "case lacks structures of the structure set",
                where=f"case {case_id}",
                expected=f"masks of {', '.join(names)}",
                found=f"no {', '.join(missing)}",
                fix="set `missing_structures: partial` in the recipe to train on what the case "
                "has (its missing structures count as unknown, not background), or `skip-case` "
                "to leave such cases out",
            )
        if recipe.missing_structures == "partial" and len(missing) < len(names):
            usable.append(case_id)
            notes.append(f"case {case_id} trains without {', '.join(missing)} (unknown there)")
            continue
        notes.append(f"case {case_id} left out: no {', '.join(missing)}")
    if not usable:
        partial = recipe.missing_structures == "partial"
        raise TrainingConfigError(
            "no case has any structure" if partial else "no case has every structure",
            where=str(dataset.root),
            expected=f"cases with {'any of ' if partial else ''}{', '.join(names)}",
            found=f"{len(ids)} case(s), each missing {'all' if partial else 'at least one'}",
            fix="use a structure set that matches the data"
            + ("" if partial else ", or `missing_structures: partial` in the recipe"),
        )
    return usable, notes


def _median_spacing(dataset: CaseDataset, case_ids: Sequence[str]) -> float:
    import SimpleITK as sitk

    values = []
    for case_id in case_ids:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(dataset.case_dir(case_id) / "ct.nii.gz"))
        reader.ReadImageInformation()
        sx, sy, _ = reader.GetSpacing()
        values.append((float(sx) + float(sy)) / 2.0)
    return round(float(np.median(values)), 4)


def _resolve_model(
    recipe: Recipe,
    dataset: CaseDataset,
    case_ids: Sequence[str],
    device: torch.device,
    pretrained: ModelInfo | None,
) -> tuple[DpnUNetConfig, Preprocessing]:
    num_classes = len(dataset.structure_set.names) + 1
    if pretrained is not None:
        data = {
            **pretrained.architecture.model_dump(),
            **recipe.model.overrides(),
            "num_classes": num_classes,
        }
        architecture = DpnUNetConfig.model_validate(data)
        explicit = {
            k: getattr(recipe.preprocessing, k) for k in recipe.preprocessing.model_fields_set
        }
        pre = pretrained.preprocessing.model_copy(update=explicit)
    else:
        architecture = recipe.new_model_architecture().resolve(num_classes, device.type)
        pre = recipe.new_model_preprocessing()
    if pre.spacing_mm is None:
        pre = pre.model_copy(update={"spacing_mm": _median_spacing(dataset, case_ids)})
    if not pre.fitted:
        pre = fit_intensity((dataset.load_case(c) for c in case_ids), pre, seed=recipe.seed)
        log.info(
            "intensity normalisation fitted on %d case(s): HU clipped to [%g, %g], mean %g, SD %g",
            len(case_ids),
            pre.hu_min,
            pre.hu_max,
            pre.mean_hu,
            pre.std_hu,
        )
    return architecture, Preprocessing.model_validate(pre.model_dump())


def initial_network(
    architecture: DpnUNetConfig,
    classes: Sequence[str],
    *,
    seed: int,
    pretrained: ModelInfo | None = None,
) -> tuple[DpnUNet, dict[str, Any] | None]:
    """The network every fold starts from: seeded initialisation, then the pretrained weights.

    Returns the network and a description of what was taken from the pretrained model.

    Raises
    ------
    ModelFileError
        The pretrained weights do not fit ``architecture`` (the message lists the layers).
    """
    import torch

    from dlas.model.dpn_unet import DpnUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DpnUNet(architecture)
    if pretrained is None:
        return net, None
    if len(pretrained.weights) != 1:
        raise TrainingConfigError(
            "cannot fine-tune a fold ensemble",
            where=str(pretrained.folder),
            expected="a single model",
            found=f"an ensemble of {len(pretrained.weights)} members",
            fix="train the pretrained model without --ensemble",
        )
    entry = pretrained.weights[0]
    state = load_weights(pretrained.folder / entry.file, sha256=entry.sha256)
    reinit_head = list(classes) != list(pretrained.classes)
    ignore = ("head.",) if reinit_head else ()
    check_state_dict(net, state, where=str(pretrained.folder / entry.file), ignore_prefixes=ignore)
    own = net.state_dict()
    for key, value in state.items():
        if not key.startswith(ignore):
            own[key] = value
    net.load_state_dict(own)
    return net, {
        "model_sha256": pretrained.model_sha256,
        "name": pretrained.name,
        "classes": pretrained.classes,
        "head_reinitialised": reinit_head,
    }


def _run_description(
    recipe: Recipe,
    architecture: DpnUNetConfig,
    pre: Preprocessing,
    dataset: CaseDataset,
    case_ids: Sequence[str],
    folds: Sequence[Fold],
    pretrained: ModelInfo | None,
) -> dict[str, Any]:
    cohorts: dict[str, int] = {}
    for case_id in case_ids:
        cohort = dataset.record(case_id).cohort
        cohorts[cohort] = cohorts.get(cohort, 0) + 1
    parts = {
        "recipe": config_sha256({k: v for k, v in recipe.to_data().items() if k != "ensemble"}),
        "architecture": config_sha256(architecture),
        "preprocessing": config_sha256(pre),
        "structure_set": dataset.structure_set.sha256(),
        "dataset": dataset.sha256(list(case_ids)),
        "split": split_sha256(folds),
        "pretrained": pretrained.model_sha256 if pretrained else None,
    }
    return {
        "schema_version": 1,
        "kind": "dlas-training-run",
        "software": {"name": "dlas", "version": __version__},
        "run_sha256": config_sha256(parts),
        "hashes": parts,
        "recipe": recipe.to_data(),
        "architecture": architecture.model_dump(mode="json"),
        "preprocessing": pre.model_dump(mode="json"),
        "dataset": {
            "name": dataset.name,
            "sha256": parts["dataset"],
            "cases": len(case_ids),
            "cohorts": dict(sorted(cohorts.items())),
        },
        "split": {"sha256": parts["split"], "folds": [f.to_data() for f in folds]},
        "pretrained": (
            {"model_sha256": pretrained.model_sha256, "name": pretrained.name}
            if pretrained
            else None
        ),
    }


def _check_output(out: Path, run: dict[str, Any], resume: bool) -> None:
    import json

    existing = out / RUN_JSON
    if not resume:
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise TrainingConfigError(
                "output folder is not empty",
                where=str(out),
                expected="a new or empty folder",
                found=f"{sum(1 for _ in out.iterdir())} entries"
                + (" of an earlier training run" if existing.exists() else ""),
                fix="pass --resume to continue that run, or choose another --out",
            )
        return
    if not existing.is_file():
        raise TrainingConfigError(
            "nothing to resume",
            where=str(out),
            expected=f"a folder with {RUN_JSON} from an interrupted `dlas train`",
            found="no run.json",
            fix="leave out --resume to start a new run",
        )
    before = json.loads(existing.read_text(encoding="utf-8"))
    if before.get("run_sha256") == run["run_sha256"]:
        return
    changed = [
        key for key, value in run["hashes"].items() if before.get("hashes", {}).get(key) != value
    ]
    raise TrainingConfigError(
        "cannot resume: the run's configuration or data changed",
        where=str(out / RUN_JSON),
        expected="the same recipe, model, data set and split "
        f"(run {str(before.get('run_sha256', '?'))[:12]})",
        found=f"changed: {', '.join(changed) or 'run description'}",
        fix="resume with exactly the original options and data, or start a new --out folder",
    )


def _prepare(
    dataset: CaseDataset,
    case_ids: Sequence[str],
    architecture: DpnUNetConfig,
    pre: Preprocessing,
    emit: EventCallback,
    measures: dict[str, CaseMeasures] | None = None,
) -> dict[str, PreparedCase]:
    """Every training case on the model grid, padded to one canvas; with ``measures``, also
    what the QA reference needs from each case (measured while the case is loaded anyway)."""
    prepared: dict[str, PreparedCase] = {}
    for i, case_id in enumerate(case_ids):
        emit(TrainingEvent("prepare", step=i, steps=len(case_ids), message=case_id))
        case = dataset.load_case(case_id)
        if measures is not None:
            measures[case_id] = measure_case(case.ct, case.structures)
        prepared[case_id] = prepare_case(
            case, dataset.structure_set, pre, architecture.size_multiple
        )
    emit(TrainingEvent("prepare", step=len(case_ids), steps=len(case_ids)))
    h = max(c.shape[1] for c in prepared.values())
    w = max(c.shape[2] for c in prepared.values())
    air = pre.air_value
    return {k: pad_to_canvas(v, (h, w), air=air) for k, v in prepared.items()}


def _with_canvas(pre: Preprocessing, prepared: dict[str, PreparedCase]) -> Preprocessing:
    """The preprocessing with the canvas the training cases were padded to."""
    shape = next(iter(prepared.values())).shape[1:]
    return pre.model_copy(update={"canvas": (int(shape[0]), int(shape[1]))})


def _resolve_patch(
    pre: Preprocessing, recipe: Recipe, size_multiple: int, *, from_scratch: bool
) -> Preprocessing:
    """The patch of a model trained from scratch with ``patch_mm`` (unless the recipe gives it
    in pixels): that width on the model grid, rounded to the nearest multiple of the size
    multiple (at least one), at most the canvas; whole slices when it covers the canvas."""
    if not from_scratch or recipe.patch_mm is None or pre.patch is not None:
        return pre
    assert pre.spacing_mm is not None and pre.canvas is not None
    side = max(1, round(recipe.patch_mm / pre.spacing_mm / size_multiple)) * size_multiple
    patch = (min(side, pre.canvas[0]), min(side, pre.canvas[1]))
    if patch == tuple(pre.canvas):
        return pre
    return pre.model_copy(update={"patch": patch})


def _canvas_for_patch(pre: Preprocessing, size_multiple: int) -> Preprocessing:
    """At least the patch size as canvas, so that every slice holds a whole tile."""
    if pre.patch is None:
        return pre
    if pre.patch[0] % size_multiple or pre.patch[1] % size_multiple:
        raise TrainingConfigError(
            "patch size does not fit the network",
            where="recipe preprocessing.patch",
            expected=f"multiples of {size_multiple} (the network's size multiple)",
            found=str(list(pre.patch)),
            fix=f"round the patch to multiples of {size_multiple}",
        )
    canvas = pre.canvas or (0, 0)
    return pre.model_copy(
        update={"canvas": (max(canvas[0], pre.patch[0]), max(canvas[1], pre.patch[1]))}
    )


def _cv_outputs(out: Path, states: Sequence[FoldState], names: Sequence[str]) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    header = [
        "fold",
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "val_dsc",
        *[f"val_dsc_{n}" for n in names],
    ]
    writer.writerow(header)
    for state in states:
        for entry in state.history:
            per = entry.get("val_dsc_per_structure") or {}
            writer.writerow(
                [
                    state.fold,
                    entry["epoch"],
                    f"{entry['lr']:.6g}",
                    f"{entry['train_loss']:.6f}",
                    "" if entry["val_loss"] is None else f"{entry['val_loss']:.6f}",
                    "" if entry["val_dsc"] is None else f"{entry['val_dsc']:.4f}",
                    *["" if per.get(n) is None else f"{per[n]:.4f}" for n in names],
                ]
            )
    write_text(out / "cv.csv", rows.getvalue())


def _select(states: Sequence[FoldState], rule: str) -> FoldState:
    def key(state: FoldState) -> float:
        last = state.history[-1]
        if rule == "val_dsc":
            return -float(state.best_score if state.best_score is not None else float("-inf"))
        if rule == "val_loss":
            return float(state.best_score if state.best_score is not None else float("inf"))
        return float(last["val_loss"]) if last["val_loss"] is not None else 0.0

    return min(states, key=key)


def train(
    dataset: str | os.PathLike[str] | CaseDataset,
    out: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | Recipe | dict[str, Any] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    folds: int | None = None,
    epochs: int | None = None,
    device: str = "auto",
    resume: bool = False,
    cohorts: Sequence[str] | None = None,
    ensemble: bool | None = None,
    name: str | None = None,
    progress: EventCallback | None = None,
    time_budget: str | float | None = None,
) -> TrainResult:
    """Train a DpnUNet (or, with ``engine: nnunet`` in the recipe, an nnU-Net:
    :mod:`dlas.engines.nnunet.train`) on a data set with k-fold cross-validation (``dlas train``).

    Parameters
    ----------
    dataset
        A dlas data set (folder or opened); its structure set defines the classes.
    out
        Output folder (see the module docstring); must be new or empty unless ``resume``.
    config
        Recipe: YAML/JSON file, mapping or :class:`Recipe`; default the study's recipe.
    pretrained
        Model folder to fine-tune (``--from``).
    folds, epochs, ensemble, time_budget
        Override the recipe's values (``time_budget``: seconds or text such as ``15m``; the
        epochs are then sized to finish the whole run within it).
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    resume
        Continue an interrupted run in ``out`` (same configuration and data required).
    cohorts
        Train on these cohorts of the data set only (default: every case).
    name
        Model name written into RTSTRUCTs (default ``"dlas DpnUNet"``).
    progress
        Called with :class:`TrainingEvent` objects (rank 0 only).

    Raises
    ------
    TrainingConfigError
        Invalid recipe or request; a run that cannot resume.
    TrainingError
        Training diverged or has too little data.
    dlas.model.ModelFileError
        Unusable pretrained model (pickled, corrupt, or weights that do not fit).
    dlas.errors.DatasetError
        Unreadable data set.
    """
    started = time.perf_counter()
    recipe = _requested_recipe(config, folds, epochs, ensemble, time_budget)
    ds = dataset if isinstance(dataset, CaseDataset) else CaseDataset.open(dataset)
    out_dir = Path(out)
    emit: EventCallback = progress or (lambda event: None)
    if recipe.engine == "nnunet":
        from dlas.engines.nnunet.train import train_nnunet

        return train_nnunet(
            ds,
            out_dir.absolute(),
            recipe,
            pretrained=pretrained,
            device=device,
            resume=resume,
            cohorts=cohorts,
            name=name,
            emit=emit,
        )
    dist = init_distributed(_device_type(device))
    try:
        if not dist.is_main:
            emit = lambda event: None  # noqa: E731 - only rank 0 reports
        dev = resolve_device(device, local_rank=dist.local_rank if dist.enabled else None)
        run = _start_run(ds, out_dir, recipe, cohorts, pretrained, dev, dist, resume)
        prepared = _prepare_folds(run, ds, out_dir, recipe, emit)
        states, plan = _train_folds(
            prepared, run, out_dir, recipe, started, dev, dist, resume, emit
        )
        result = _finish(
            out_dir,
            recipe,
            states,
            ds,
            run,
            prepared,
            name or "dlas DpnUNet",
            dist,
            dev,
            plan=plan,
            started=started,
        )
        emit(TrainingEvent("done", message=result.model_sha256))
        return result
    finally:
        dist.close()


def _requested_recipe(
    config: str | os.PathLike[str] | Recipe | dict[str, Any] | None,
    folds: int | None,
    epochs: int | None,
    ensemble: bool | None,
    time_budget: str | float | None,
) -> Recipe:
    """The recipe with the command's overrides; a number of epochs and a time budget together
    are refused."""
    recipe = load_recipe(config).with_overrides(
        folds=folds, epochs=epochs, ensemble=ensemble, time_budget=time_budget
    )
    if epochs is not None and recipe.time_budget is not None:
        raise TrainingConfigError(
            "both a number of epochs and a time budget",
            where="--epochs" + (" and --time-budget" if time_budget is not None else ""),
            expected="one of them: the time budget chooses the number of epochs",
            found=f"{epochs} epochs and a budget of {recipe.time_budget:.0f} s",
            fix="leave out --epochs, or the time budget",
        )
    return recipe


@dataclass
class _Run:
    """What a run is, decided before any case is prepared: its cases, split, network and
    preprocessing, its description (``run.json``) and the initial network."""

    case_ids: list[str]
    split: list[Fold]
    architecture: DpnUNetConfig
    pre: Preprocessing
    pre_info: ModelInfo | None
    description: dict[str, Any]
    net0: DpnUNet
    pretrained_note: dict[str, Any] | None


def _start_run(
    ds: CaseDataset,
    out_dir: Path,
    recipe: Recipe,
    cohorts: Sequence[str] | None,
    pretrained: str | os.PathLike[str] | None,
    dev: torch.device,
    dist: DistContext,
    resume: bool,
) -> _Run:
    """Choose the cases, the split and the network, check the output folder and write
    ``run.json`` (a resumed run keeps the time-budget plan it was sized with)."""
    case_ids, notes = _select_cases(ds, cohorts, recipe)
    for note in notes:
        # Cases left out are worth a warning; partial cases are the expected way to train.
        log.log(logging.INFO if "unknown there" in note else logging.WARNING, note)
    pre_info = read_model_info(pretrained) if pretrained is not None else None
    architecture, pre = _resolve_model(recipe, ds, case_ids, dev, pre_info)
    classes = ["background", *ds.structure_set.names]
    cohort_of = {c: ds.record(c).cohort for c in case_ids}
    split = make_folds(
        case_ids,
        recipe.folds,
        seed=recipe.seed,
        cohorts=cohort_of,
        stratify=recipe.stratify_by_cohort,
    )
    run = _run_description(recipe, architecture, pre, ds, case_ids, split, pre_info)
    _check_output(out_dir, run, resume)
    dist.barrier()  # every process checked the folder before rank 0 writes into it
    net0, pretrained_note = initial_network(
        architecture, classes, seed=recipe.seed, pretrained=pre_info
    )
    if dist.is_main:
        kept = _recorded_budget(out_dir) if resume else None
        write_json(
            out_dir / RUN_JSON,
            {**run, "notes": notes, **({"budget": kept} if kept is not None else {})},
        )
    dist.barrier()
    return _Run(
        list(case_ids), list(split), architecture, pre, pre_info, run, net0, pretrained_note
    )


@dataclass
class _Prepared:
    """The prepared training cohort: the preprocessing fitted to it, the class weights, the
    QA reference measured on it and one setup per fold."""

    pre: Preprocessing
    weights: np.ndarray
    qa: dict[str, Any] | None
    setups: list[FoldSetup]


def _prepare_folds(
    run: _Run, ds: CaseDataset, out_dir: Path, recipe: Recipe, emit: EventCallback
) -> _Prepared:
    """Prepare every case once and set up each fold with it."""
    measures: dict[str, CaseMeasures] = {}
    architecture = run.architecture
    prepared = _prepare(
        ds,
        run.case_ids,
        architecture,
        _canvas_for_patch(run.pre, architecture.size_multiple),
        emit,
        measures,
    )
    pre = _resolve_patch(
        _with_canvas(run.pre, prepared),
        recipe,
        architecture.size_multiple,
        from_scratch=run.pre_info is None,
    )
    swap = lr_swap_table(ds.structure_set)
    if swap is None and recipe.augmentation.flip_lr:
        log.warning("left-right flips disabled: a sided structure has no counterpart")
    # One set of class weights for the whole training cohort: every fold trains and
    # validates with the same weights, so fold validation losses are on one scale.
    weights = class_weights(
        recipe.class_weights,
        class_frequencies(list(prepared.values()), len(ds.structure_set.names) + 1),
    )
    setups = [
        FoldSetup(
            index=fold.index,
            folds=len(run.split),
            folder=out_dir / "folds" / f"fold-{fold.index}",
            train=SliceSet([prepared[c] for c in fold.train], architecture.in_slices),
            validation=[prepared[c] for c in fold.validation],
            class_weights=weights,
            structure_names=ds.structure_set.names,
            swap=swap,
            run_sha256=run.description["run_sha256"],
            epochs=recipe.epochs,
            steps_per_epoch=recipe.steps_per_epoch,
            air=pre.air_value,
            patch=pre.patch,
        )
        for fold in run.split
    ]
    qa = build_qa_reference([measures[c] for c in sorted(measures)], ds.structure_set.names)
    return _Prepared(pre, weights, qa, setups)


def _train_folds(
    prepared: _Prepared,
    run: _Run,
    out_dir: Path,
    recipe: Recipe,
    started: float,
    dev: torch.device,
    dist: DistContext,
    resume: bool,
    emit: EventCallback,
) -> tuple[list[FoldState], BudgetPlan | None]:
    """Train the folds not yet complete, each within its share of a time budget; the states
    of all folds in order, and the budget plan (None without a budget)."""
    setups = prepared.setups
    states: dict[int, FoldState] = {}
    for setup in setups:
        state = load_fold_state(setup.folder)
        if state is not None and state.complete:
            states[setup.index] = state
    plan = _budget_plan(out_dir, recipe, run.net0, setups, states, started, dev, dist)
    if plan is not None:
        emit(TrainingEvent("plan", message=plan.describe()))
        for setup in setups:
            setup.epochs, setup.steps_per_epoch = plan.epochs, plan.steps_per_epoch
    end = started + recipe.time_budget - plan.reserve_s if plan and recipe.time_budget else None
    fresh = [s for s in setups if s.index not in states and load_fold_state(s.folder) is None]
    refusal = concurrent_refusal(recipe, dist, end is not None, len(fresh))
    if refusal is None:
        nets = [_copy_network(run.net0) for _ in fresh]
        together = train_folds_together(nets, fresh, recipe, device=dev, dist=dist, callback=emit)
        states.update({s.index: state for s, state in zip(fresh, together, strict=True)})
    elif recipe.concurrent_folds == "on":
        log.warning("concurrent_folds is on, but the folds train one after another: %s", refusal)
    for setup in setups:
        if setup.index in states:
            continue
        if end is not None and not resume:
            # What is left of the budget, shared by the folds still to train.
            left = sum(1 for s in setups if s.index not in states)
            setup.deadline = time.perf_counter() + (end - time.perf_counter()) / left
        states[setup.index] = train_fold(
            _copy_network(run.net0),
            setup,
            recipe,
            device=dev,
            dist=dist,
            state=load_fold_state(setup.folder),
            callback=emit,
        )
    return [states[s.index] for s in setups], plan


def _recorded_budget(out: Path) -> dict[str, Any] | None:
    import json

    path = out / RUN_JSON
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8")).get("budget")
    return dict(recorded) if isinstance(recorded, dict) else None


def _budget_plan(
    out: Path,
    recipe: Recipe,
    net0: DpnUNet,
    setups: Sequence[FoldSetup],
    done: dict[int, FoldState],
    started: float,
    device: torch.device,
    dist: DistContext,
) -> BudgetPlan | None:
    """The run's sizing to its time budget: the one recorded in ``run.json`` when resuming,
    else measured now and recorded there."""
    import json

    if recipe.time_budget is None:
        return None
    run_file = out / RUN_JSON
    recorded = _recorded_budget(out)
    if recorded is not None:
        plan = BudgetPlan.from_data(recorded)
        log.info("resuming with the recorded plan: %s", plan.describe())
        return plan
    todo = [s for s in setups if s.index not in done]
    if not todo:
        return None
    probe = todo[0]
    step_s, batch_s = measure_step(net0, probe, recipe, device=device, dist=dist)
    val_slices = max(sum(c.shape[0] for c in s.validation) for s in todo)
    val_batch = max(recipe.batch_size // dist.world_size, 8)
    validation_s = math.ceil(val_slices / dist.world_size / val_batch) * batch_s
    import torch

    measured = torch.tensor([step_s, validation_s], dtype=torch.float64)
    dist.all_reduce_sum(measured)
    step_s, validation_s = (float(v) / dist.world_size for v in measured)
    plan = plan_budget(
        recipe,
        budget_s=float(recipe.time_budget),
        spent_s=time.perf_counter() - started,
        step_s=step_s,
        validation_s=validation_s,
        folds=len(todo),
        pass_steps=max(1, steps_in_epoch(probe.train, recipe, None)),
    )
    log.info("%s", plan.describe())
    if dist.is_main:
        data = json.loads(run_file.read_text(encoding="utf-8"))
        write_json(run_file, {**data, "budget": plan.to_data()})
    dist.barrier()
    return plan


def _device_type(device: str) -> str:
    return (
        "cuda"
        if device.strip().lower().startswith("cuda")
        or (device.strip().lower() == "auto" and _cuda_available())
        else "cpu"
    )


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _copy_network(net: DpnUNet) -> DpnUNet:
    from dlas.model.dpn_unet import DpnUNet

    copy = DpnUNet(net.config)
    copy.load_state_dict(net.state_dict())
    return copy


def _finish(
    out: Path,
    recipe: Recipe,
    states: Sequence[FoldState],
    dataset: CaseDataset,
    run: _Run,
    prepared: _Prepared,
    name: str,
    dist: DistContext,
    device: torch.device,
    *,
    plan: BudgetPlan | None,
    started: float,
) -> TrainResult:
    """Select the model (a fold or the ensemble), write it with ``cv.json``, the
    cross-validation tables and the learning curves."""
    description = run.description
    has_validation = any(f["validation"] for f in description["split"]["folds"])
    rule = recipe.selection if has_validation else "last"
    chosen = _select(states, rule)
    fold_summary = [
        {
            "fold": s.fold,
            "best_epoch": s.best_epoch,
            "best_score": s.best_score,
            "history": s.history,
        }
        for s in states
    ]
    schedule = _schedule(recipe, states, plan, started)
    members_states = list(states) if recipe.ensemble else [chosen]
    selection = {
        "rule": rule,
        "requested_rule": recipe.selection,
        "fold": None if recipe.ensemble else chosen.fold,
        "epoch": None if recipe.ensemble else chosen.best_epoch,
        "ensemble": recipe.ensemble,
        "members": [{"fold": s.fold, "epoch": s.best_epoch} for s in members_states],
    }
    weights = [float(w) for w in prepared.weights]
    model_sha = ""
    if dist.is_main:
        folders = {s.fold: out / "folds" / f"fold-{s.fold}" for s in states}
        members = [(best_weights(folders[s.fold], s), s.fold, s.best_epoch) for s in members_states]
        info = save_model(
            out,
            name=name,
            architecture=run.architecture,
            preprocessing=prepared.pre,
            structure_set=dataset.structure_set,
            members=members,
            training={
                "run_sha256": description["run_sha256"],
                "recipe": description["recipe"],
                "recipe_sha256": recipe.sha256(),
                "dataset": description["dataset"],
                "split": description["split"],
                "pretrained": run.pretrained_note,
                "class_weights": weights,
                "schedule": schedule,
                "selection": selection,
                "folds": fold_summary,
                "device": device.type,
                "world_size": dist.world_size,
            },
            qa=prepared.qa,
        )
        model_sha = info.model_sha256
        write_json(
            out / "cv.json",
            {
                "schema_version": 1,
                "software": {"name": "dlas", "version": __version__},
                "run_sha256": description["run_sha256"],
                "model_sha256": model_sha,
                "class_weights": weights,
                "schedule": schedule,
                "selection": selection,
                "folds": [
                    {**summary, "validation": fold["validation"], "train": fold["train"]}
                    for summary, fold in zip(
                        fold_summary, description["split"]["folds"], strict=True
                    )
                ],
            },
        )
        _cv_outputs(out, states, dataset.structure_set.names)
        write_learning_curves(out, title=f"{name}: learning curves")
    dist.barrier()
    if not dist.is_main:
        model_sha = read_model_info(out).model_sha256
    return TrainResult(
        model_dir=out,
        model_sha256=model_sha,
        selected_fold=None if recipe.ensemble else chosen.fold,
        ensemble=recipe.ensemble,
        folds=fold_summary,
    )


def _schedule(
    recipe: Recipe, states: Sequence[FoldState], plan: BudgetPlan | None, started: float
) -> dict[str, Any]:
    """The schedule the folds ran (recorded in ``model.json`` and ``cv.json``); a warning when
    training overran its time budget."""
    seconds = round(time.perf_counter() - started, 1)
    if plan is not None and seconds > 1.1 * plan.budget_s:
        log.warning(
            "training took %.0f s, over its time budget of %.0f s (the machine slowed down "
            "after the first steps were timed?)",
            seconds,
            plan.budget_s,
        )
    return {
        "epochs": plan.epochs if plan else recipe.epochs,
        "epochs_trained": [len(s.history) for s in states],
        "steps_per_epoch": plan.steps_per_epoch if plan else recipe.steps_per_epoch,
        "time_budget": plan.to_data() if plan else None,
        "seconds": seconds,
    }
