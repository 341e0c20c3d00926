"""The child process in which nnunetv2 plans, preprocesses and trains (``python -m`` this module).

nnunetv2 finds its folders through the environment variables ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results``, starts worker pools, and prints to standard
output. :mod:`dlas.engines.nnunet.train` therefore runs each step in a child process whose
environment alone points into the model's work folder (the caller's environment is never
changed), with its output going to the run's log. A step is described by a JSON file::

    {"action": "plan" | "preprocess" | "train", "dataset_id": 1, "configuration": "2d",
     "plans": "nnUNetPlans", "processes": 2, ...}

``train`` runs nnU-Net's own trainer (a subclass that takes the epochs, iterations, learning rate
and encoder freezing of the recipe, and starts from given weights), then writes the trained
weights as safetensors (``dlas-weights.safetensors``) and nnU-Net's training log as JSON
(``dlas-log.json``) into the fold's folder, so that dlas never reads a pickle back.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["fit_epochs", "main", "refit_epochs"]

WEIGHTS_FILE = "dlas-weights.safetensors"
LOG_FILE = "dlas-log.json"
TRAINER_NAME = "dlasTrainer"
#: Training steps of the first, timed epoch of a run with a time budget.
_PROBE_STEPS = 3


def _plan(job: dict[str, Any]) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )

    extract_fingerprints(
        [job["dataset_id"]], check_dataset_integrity=True, num_processes=job["processes"]
    )
    plan_experiments([job["dataset_id"]])
    _preprocess(job)


def _preprocess(job: dict[str, Any]) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        preprocess,
    )

    if job["action"] == "preprocess":
        # With transferred plans: the local fingerprint is still recorded (nnU-Net's trainer
        # copies it into its results), though the plans are the pretrained model's.
        extract_fingerprints(
            [job["dataset_id"]], check_dataset_integrity=True, num_processes=job["processes"]
        )

    preprocess(
        [job["dataset_id"]],
        plans_identifier=job["plans"],
        configurations=(job["configuration"],),
        num_processes=(job["processes"],),
        show_progress_bar=False,
    )


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - nnU-Net draws from the global generator
    torch.manual_seed(seed)


def fit_epochs(
    left: float,
    iterations: int,
    val_iterations: int,
    step_s: float,
    val_s: float,
    overhead_s: float,
) -> tuple[int, int]:
    """Epochs after the timed probe epoch, and training steps per epoch, that fit ``left``
    seconds: as many whole epochs as fit, else one shorter epoch (or none when not even one
    step and the validation fit)."""
    epoch_s = iterations * step_s + val_iterations * val_s + overhead_s
    if left >= epoch_s:
        return int(left // epoch_s), iterations
    fixed = val_iterations * val_s + overhead_s
    more = 1 if left > fixed + step_s else 0
    return more, max(1, int((left - fixed) // step_s))


def refit_epochs(done: int, planned: int, left: float, epoch_s: float) -> int:
    """The run's epochs refitted after a whole epoch that took ``epoch_s`` seconds, with
    ``left`` seconds to the deadline: the probe epoch's one-time costs (data loader start,
    first-step allocations) made the first estimate too cautious, so the measured epoch
    decides, and the run may grow or shrink but never below the epochs done."""
    if epoch_s <= 0 or done >= planned:
        return planned
    return max(done, done + int(left // epoch_s))


def _trainer_class(job: dict[str, Any]) -> Any:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    epochs = int(job["epochs"])
    deadline = job.get("deadline")
    iterations = job.get("iterations")
    val_iterations = job.get("val_iterations")
    initial_lr = job.get("initial_lr")
    freeze = int(job.get("freeze_encoder_epochs", 0))

    class dlasTrainer(nnUNetTrainer):  # type: ignore[misc]  # noqa: N801 - names nnU-Net's folder
        def __init__(
            self,
            plans: dict[str, Any],
            configuration: str,
            fold: int,
            dataset_json: dict[str, Any],
            device: torch.device = torch.device("cpu"),
        ) -> None:
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            if iterations is not None:
                self.num_iterations_per_epoch = int(iterations)
            if val_iterations is not None:
                self.num_val_iterations_per_epoch = int(val_iterations)
            if initial_lr is not None:
                self.initial_lr = float(initial_lr)

        def run_training(self) -> None:
            """nnU-Net's loop; with a deadline, see :func:`_run_to_deadline`."""
            if deadline is None:
                super().run_training()
            else:
                _run_to_deadline(self, float(deadline))

        def on_train_epoch_start(self) -> None:
            encoder = getattr(self.network, "encoder", None)
            if freeze and encoder is not None:
                for parameter in encoder.parameters():
                    parameter.requires_grad_(self.current_epoch >= freeze)
            super().on_train_epoch_start()

    dlasTrainer.__name__ = dlasTrainer.__qualname__ = TRAINER_NAME
    return dlasTrainer


def _run_to_deadline(trainer: Any, deadline: float) -> None:
    """nnU-Net's training loop fitted to a deadline: a short first epoch is timed (its
    training and validation steps separately) and the epochs fitted to the time left
    (:func:`fit_epochs`; nnU-Net's polynomial decay spans them); after each whole epoch the
    number of epochs is fitted again to that epoch's measured time (:func:`refit_epochs`)."""
    trainer.on_train_start()
    iterations = trainer.num_iterations_per_epoch
    val_iterations = trainer.num_val_iterations_per_epoch
    trainer.num_epochs = trainer.lr_scheduler.max_steps = 10**6  # until timed
    probe = min(iterations, _PROBE_STEPS)
    trainer.num_iterations_per_epoch = probe
    trainer.num_val_iterations_per_epoch = min(val_iterations, 2)
    started = time.time()
    step_s, val_s = _one_epoch(trainer)
    overhead = max(
        time.time() - started - step_s * probe - val_s * trainer.num_val_iterations_per_epoch,
        0.0,
    )
    more, iterations = fit_epochs(
        deadline - time.time(), iterations, val_iterations, step_s, val_s, overhead
    )
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    trainer.num_epochs = trainer.lr_scheduler.max_steps = 1 + more
    trainer.print_to_log_file(
        f"dlas: {step_s:.2f} s per training step, {val_s:.2f} s per validation step; "
        f"{more} more epoch(s) of {iterations} steps fit the time budget"
    )
    while trainer.current_epoch < trainer.num_epochs:
        started = time.time()
        _one_epoch(trainer)
        refit = refit_epochs(
            trainer.current_epoch, trainer.num_epochs, deadline - time.time(), time.time() - started
        )
        if refit != trainer.num_epochs:
            trainer.print_to_log_file(
                f"dlas: epoch took {time.time() - started:.1f} s; {refit} epochs in all now fit"
            )
            trainer.num_epochs = trainer.lr_scheduler.max_steps = refit
    trainer.on_train_end()


def _one_epoch(trainer: Any) -> tuple[float, float]:
    """One epoch of nnU-Net's loop; returns seconds per training and validation step."""
    import torch

    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    started = time.time()
    outputs = [
        trainer.train_step(next(trainer.dataloader_train))
        for _ in range(trainer.num_iterations_per_epoch)
    ]
    step_s = (time.time() - started) / max(trainer.num_iterations_per_epoch, 1)
    trainer.on_train_epoch_end(outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        started = time.time()
        val_outputs = [
            trainer.validation_step(next(trainer.dataloader_val))
            for _ in range(trainer.num_val_iterations_per_epoch)
        ]
        val_s = (time.time() - started) / max(trainer.num_val_iterations_per_epoch, 1)
        trainer.on_validation_epoch_end(val_outputs)
    trainer.on_epoch_end()
    return step_s, val_s


def _train(job: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(max(1, int(job.get("threads", 1))))
    _seed(int(job["seed"]))
    if job.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    plans = json.loads(Path(job["plans_file"]).read_text(encoding="utf-8"))
    plans["continue_training"] = False
    dataset_json = json.loads(Path(job["dataset_json"]).read_text(encoding="utf-8"))
    trainer = _trainer_class(job)(
        plans, job["configuration"], int(job["fold"]), dataset_json, torch.device(job["device"])
    )
    trainer.initialize()
    if job.get("init_weights"):
        trainer.network.load_state_dict(load_file(job["init_weights"]), strict=True)
    trainer.run_training()
    folder = Path(trainer.output_folder)
    # Cloned: nnU-Net's layers share tensors under two names, which safetensors refuses.
    state = {k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    axes = trainer.inference_allowed_mirroring_axes
    log = trainer.logger.get_checkpoint()
    (folder / LOG_FILE).write_text(
        json.dumps(
            {
                "trainer_name": TRAINER_NAME,
                "mirroring_axes": None if axes is None else [int(a) for a in axes],
                "log": {k: [_number(v) for v in values] for k, values in log.items()},
                "epochs": int(trainer.current_epoch),
            }
        ),
        encoding="utf-8",
    )


def _number(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_number(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the step described by the JSON file named in ``argv``."""
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    actions = {"plan": _plan, "preprocess": _preprocess, "train": _train}
    actions[job["action"]](job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
