"""Cross-validation folds: a partition by patient, seeded, stratified by cohort."""

from __future__ import annotations

import pytest

from dlas.training import TrainingConfigError, make_folds, split_sha256


def _ids(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def test_folds_partition_the_cases() -> None:
    folds = make_folds(_ids(12), 5, seed=0)
    validation = [c for f in folds for c in f.validation]
    assert sorted(validation) == _ids(12)
    assert sorted(len(f.validation) for f in folds) == [2, 2, 2, 3, 3]
    for fold in folds:
        assert set(fold.train) | set(fold.validation) == set(_ids(12))
        assert not set(fold.train) & set(fold.validation)


def test_study_split_is_48_train_12_validation() -> None:
    folds = make_folds(_ids(60), 5, seed=0)
    assert {(len(f.train), len(f.validation)) for f in folds} == {(48, 12)}


def test_split_is_seeded_and_independent_of_order() -> None:
    a = make_folds(_ids(10), 3, seed=1)
    b = make_folds(list(reversed(_ids(10))), 3, seed=1)
    c = make_folds(_ids(10), 3, seed=2)
    assert a == b
    assert split_sha256(a) == split_sha256(b)
    assert split_sha256(a) != split_sha256(c)


def test_stratification_spreads_each_cohort_over_the_folds() -> None:
    ids = _ids(15)
    cohorts = {c: ("B" if i < 5 else "A") for i, c in enumerate(ids)}
    folds = make_folds(ids, 5, seed=0, cohorts=cohorts)
    for fold in folds:
        assert sum(cohorts[c] == "B" for c in fold.validation) == 1
        assert len(fold.validation) == 3


def test_one_fold_trains_on_everything() -> None:
    (fold,) = make_folds(_ids(3), 1, seed=0)
    assert fold.train == tuple(_ids(3)) and fold.validation == ()


def test_fewer_cases_than_folds_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="fewer cases than cross-validation folds"):
        make_folds(_ids(3), 5, seed=0)


def test_duplicate_case_ids_are_refused() -> None:
    with pytest.raises(TrainingConfigError, match="duplicate case ids"):
        make_folds(["a", "a", "b"], 2, seed=0)
