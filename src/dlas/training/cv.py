"""K-fold cross-validation split by patient, seeded and optionally stratified by cohort.

Every case (one CT of one patient in a dlas data set) lands in exactly one validation fold, so no
patient is ever in the training and the validation part of the same fold. With stratification
the cases of each cohort are spread evenly over the folds (a fold never holds only scanner-B
patients, say). The split depends only on the sorted case ids, their cohorts, ``k`` and the seed,
and its hash is recorded with the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dlas.model.config import config_sha256
from dlas.training.config import TrainingConfigError

__all__ = ["Fold", "make_folds", "split_sha256"]


@dataclass(frozen=True)
class Fold:
    """One fold: 1-based ``index``, training and validation case ids (sorted)."""

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]

    def to_data(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"fold": self.index, "train": list(self.train), "validation": list(self.validation)}


def make_folds(
    case_ids: Sequence[str],
    k: int,
    *,
    seed: int,
    cohorts: Mapping[str, str] | None = None,
    stratify: bool = True,
) -> list[Fold]:
    """Split cases into ``k`` folds.

    ``k == 1`` is the degenerate "fold" that trains on every case and validates on none (used to
    pretrain a model on a whole cohort).

    Raises
    ------
    TrainingConfigError
        Fewer cases than folds, or duplicate case ids.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise TrainingConfigError(
            "duplicate case ids",
            expected="each case once",
            found=f"{len(ids) - len(set(ids))} duplicate(s)",
            fix="list each case once",
        )
    if k == 1:
        return [Fold(1, tuple(ids), ())]
    if len(ids) < k:
        raise TrainingConfigError(
            "fewer cases than cross-validation folds",
            expected=f"at least {k} cases for {k} folds",
            found=f"{len(ids)} case(s)",
            fix="lower --folds (1 trains on all cases without validation), or add cases",
        )
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for case_id in ids:
        key = (cohorts or {}).get(case_id, "") if stratify else ""
        groups.setdefault(key, []).append(case_id)
    members: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        for position, i in enumerate(order):
            # Deal round-robin, continuing where the previous cohort stopped, so that fold sizes
            # differ by one at most.
            members[(offset + position) % k].append(group[int(i)])
        offset += len(group)
    folds = []
    for index, validation in enumerate(members, start=1):
        val = tuple(sorted(validation))
        train = tuple(c for c in ids if c not in set(val))
        folds.append(Fold(index, train, val))
    return folds


def split_sha256(folds: Sequence[Fold]) -> str:
    """Hash of a split (which case validates in which fold)."""
    return config_sha256([f.to_data() for f in folds])
