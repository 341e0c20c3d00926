"""Learning curves of a training run: one panel per fold, from ``cv.json``.

Each panel shows the training loss (the loss optimised) and the validation loss per epoch
on the left axis, and the validation Dice of each structure (thin lines) and their mean (thick)
on the right axis; a dashed line marks the epoch the fold kept. ``dlas train`` writes the figure
as ``learning-curves.png`` next to the model; the report shows it for each model of a study.
matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CURVES_PNG", "learning_curves_figure", "write_learning_curves"]

#: File name of the figure in a model folder.
CURVES_PNG = "learning-curves.png"


def learning_curves_figure(cv: dict[str, Any], *, title: str | None = None) -> Figure:
    """The learning-curve figure of a run's ``cv.json`` content."""
    from matplotlib.figure import Figure

    folds = cv.get("folds", [])
    n = max(1, len(folds))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(folds):
            ax.set_visible(False)
            continue
        _fold_panel(ax, folds[k])
    if title:
        fig.suptitle(title)
    return fig


def _fold_panel(ax: Any, fold: dict[str, Any]) -> None:
    history = fold.get("history", [])
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], color="0.2", label="training loss")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), color="0.2", linestyle="--", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"fold {fold.get('fold', '?')}", fontsize=10)
    names: list[str] = []
    for h in history:
        for name in h.get("val_dsc_per_structure") or {}:
            if name not in names:
                names.append(name)
    if names:
        dsc_ax = ax.twinx()
        for i, name in enumerate(names):
            points = [
                (h["epoch"], h["val_dsc_per_structure"][name])
                for h in history
                if (h.get("val_dsc_per_structure") or {}).get(name) is not None
            ]
            if points:
                dsc_ax.plot(*zip(*points, strict=True), linewidth=0.9, color=f"C{i}", label=name)
        mean = [(h["epoch"], h["val_dsc"]) for h in history if h.get("val_dsc") is not None]
        if mean:
            dsc_ax.plot(*zip(*mean, strict=True), linewidth=2.2, color="black", label="mean DSC")
        dsc_ax.set_ylim(0, 1)
        dsc_ax.set_ylabel("validation DSC")
        dsc_ax.legend(fontsize=6, loc="lower right", ncols=2)
    best = fold.get("best_epoch")
    if best is not None:
        ax.axvline(best, color="0.5", linestyle=":", linewidth=1)
    ax.legend(fontsize=6, loc="upper right")


def write_learning_curves(
    model_dir: str | os.PathLike[str], *, title: str | None = None, dpi: int = 110
) -> Path:
    """Draw ``learning-curves.png`` in a model folder from its ``cv.json``; returns its path."""
    from dlas.io.atomic import atomic_path

    folder = Path(model_dir)
    cv = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    fig = learning_curves_figure(cv, title=title)
    target = folder / CURVES_PNG
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return target
