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

__all__ = ["main"]

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
            """nnU-Net's loop; with a deadline, a short first epoch is timed (its training and
            validation steps separately) and the rest fitted to the time left: as many whole
            epochs as fit (nnU-Net's polynomial decay spans them), or one shorter epoch."""
            if deadline is None:
                super().run_training()
                return
            self.on_train_start()
            iterations, val_iterations = (
                self.num_iterations_per_epoch,
                self.num_val_iterations_per_epoch,
            )
            self.num_epochs = self.lr_scheduler.max_steps = 10**6  # until timed
            probe = min(iterations, _PROBE_STEPS)
            self.num_iterations_per_epoch = probe
            self.num_val_iterations_per_epoch = min(val_iterations, 2)
            started = time.time()
            step_s, val_s = self._one_epoch()
            overhead = max(
                time.time() - started - step_s * probe - val_s * self.num_val_iterations_per_epoch,
                0.0,
            )
            left = float(deadline) - time.time()
            epoch_s = iterations * step_s + val_iterations * val_s + overhead
            self.num_val_iterations_per_epoch = val_iterations
            if left >= epoch_s:
                more = int(left // epoch_s)
            else:
                more = 1 if left > val_iterations * val_s + overhead + step_s else 0
                iterations = max(1, int((left - val_iterations * val_s - overhead) // step_s))
            self.num_iterations_per_epoch = iterations
            self.num_epochs = self.lr_scheduler.max_steps = 1 + more
            self.print_to_log_file(
                f"dlas: {step_s:.2f} s per training step, {val_s:.2f} s per validation step; "
                f"{more} more epoch(s) of {iterations} steps fit the time budget"
            )
            while self.current_epoch < self.num_epochs:
                self._one_epoch()
            self.on_train_end()

        def _one_epoch(self) -> tuple[float, float]:
            """One epoch of nnU-Net's loop; returns seconds per training and validation step."""
            self.on_epoch_start()
            self.on_train_epoch_start()
            started = time.time()
            outputs = [
                self.train_step(next(self.dataloader_train))
                for _ in range(self.num_iterations_per_epoch)
            ]
            step_s = (time.time() - started) / max(self.num_iterations_per_epoch, 1)
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                started = time.time()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val))
                    for _ in range(self.num_val_iterations_per_epoch)
                ]
                val_s = (time.time() - started) / max(self.num_val_iterations_per_epoch, 1)
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            return step_s, val_s

        def on_train_epoch_start(self) -> None:
            encoder = getattr(self.network, "encoder", None)
            if freeze and encoder is not None:
                for parameter in encoder.parameters():
                    parameter.requires_grad_(self.current_epoch >= freeze)
            super().on_train_epoch_start()

    dlasTrainer.__name__ = dlasTrainer.__qualname__ = TRAINER_NAME
    return dlasTrainer


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
