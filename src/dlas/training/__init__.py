"""Training: the recipe, the loop, cross-validation, checkpoints and distributed training.

Entry point: :func:`train` (``dlas train``). Torch is imported when training starts.
"""

from dlas.training.api import TrainResult, initial_network, train
from dlas.training.config import Augmentation, Recipe, TrainingConfigError, load_recipe
from dlas.training.cv import Fold, make_folds, split_sha256
from dlas.training.loop import TrainingError, TrainingEvent

__all__ = [
    "Augmentation",
    "Fold",
    "Recipe",
    "TrainResult",
    "TrainingConfigError",
    "TrainingError",
    "TrainingEvent",
    "initial_network",
    "load_recipe",
    "make_folds",
    "split_sha256",
    "train",
]
