"""`dlas compare`: paired statistics of two models on the same cases, per cohort and structure.

For every cohort × structure × metric column of a metrics table (see
:mod:`dlas.evaluation.evaluate`) this computes, for models A and B:

* n, mean ± SD (sample SD, ddof = 1), median and quartiles (numpy's linear interpolation) of
  each model over its cases with a finite value;
* how many of each model's values are not finite (``n_nonfinite_a``/``_b``): ±inf — a
  structure missing in one mask, e.g. the 95HD of a missed structure — and NaN — undefined.
  They are never dropped silently: they are counted here and in Table 2; and each model's
  *fails* (``fails_a``/``_b``): cases where it predicted nothing of a structure the reference
  has (predicted volume 0, reference volume > 0), the same for every metric of the structure;
* the paired differences ``d = B − A`` over the cases both models have with finite values
  (cases of one model only are listed in the settings and excluded), their mean and a
  percentile bootstrap 95 % confidence interval of that mean (seeded, reproducible);
* the two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) over every pair
  without a NaN (``n_pairs``): a pair with an infinite value keeps its sign and ranks as the
  largest absolute difference (``n_pairs_nonfinite`` of them; a structure missed by one model
  is that model's worst case, not a case to leave out), and a pair where both values are the
  same infinity (both models missed it) is a zero difference. The test is run with the
  method scipy's ``"auto"`` chooses: the *exact* null distribution when n ≤ 50 and there are
  no ties and no zero differences; with ties or zeros and n ≤ 13, an exact permutation test
  over all 2ⁿ sign patterns; otherwise the normal approximation with tie correction and no
  continuity correction. Zero differences are handled by ``zero_method``: ``"wilcox"``
  (default; zeros are dropped before ranking, Wilcoxon's original rule), ``"pratt"`` (zeros
  ranked, then dropped) or ``"zsplit"`` (zero ranks split between the signs). Tied absolute
  differences get average ranks;
* the matched-pairs rank-biserial correlation ``r = (T+ − T−) / S`` (Kerby 2014), where T± are
  the rank sums of the positive and negative differences (zero ranks split for ``zsplit``) and
  S is the sum of all ranks of the differences ranked under ``zero_method``; ``r > 0`` means
  B tends to be larger than A;
* optionally, Holm or Benjamini–Hochberg adjusted p-values over the family of all tests in the
  comparison (every row with a p-value), and ``significant`` = adjusted p < ``alpha``.

Why our own code: scipy provides the test and the BH adjustment; the pairing by case, the
bookkeeping of excluded cases, the effect size, the bootstrap and the Holm step-down are a few
lines each and must follow the rules above exactly, which no single library package does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.errors import EvaluationError
from dlas.evaluation.metrics import METRIC_COLUMNS
from dlas.evaluation.results import (
    COMPARISON_COLUMNS,
    read_metrics,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COMPARISON_FILES",
    "CORRECTIONS",
    "MAX_BOOTSTRAP",
    "ZERO_METHODS",
    "Correction",
    "ZeroMethod",
    "compare",
    "interobserver",
    "read_observers",
    "write_comparison",
]

log = logging.getLogger(__name__)

Correction = Literal["none", "holm", "bh"]
ZeroMethod = Literal["wilcox", "pratt", "zsplit"]
CORRECTIONS: tuple[str, ...] = get_args(Correction)
ZERO_METHODS: tuple[str, ...] = get_args(ZeroMethod)

_FloatArray = npt.NDArray[np.float64]
_BOOTSTRAP_BLOCK = 2000  # resamples drawn per block: bounds memory for large cohorts
#: Most bootstrap resamples accepted: ten times the default, far beyond where the 95 % CI's
#: end points stop moving; a larger number only makes `compare` run for hours.
MAX_BOOTSTRAP = 100_000


def compare(
    metrics: pd.DataFrame | str | os.PathLike[str],
    a: str,
    b: str,
    *,
    correction: Correction = "none",
    alpha: float = 0.05,
    bootstrap: int = 10000,
    seed: int = 0,
    zero_method: ZeroMethod = "wilcox",
    out: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Paired comparison of model ``b`` against model ``a``, per cohort × structure × metric.

    Parameters
    ----------
    metrics
        A metrics table (as :func:`~dlas.evaluation.read_metrics` returns) or its CSV path.
    a, b
        The model names to compare (``model`` column); differences are ``b − a``.
    correction
        Multiple-testing adjustment over all rows with a p-value: ``"none"``, ``"holm"`` or
        ``"bh"`` (Benjamini–Hochberg).
    alpha
        Significance level for ``significant`` (default 0.05).
    bootstrap
        Bootstrap resamples for the CI of the mean difference (0: no CI).
    seed
        Seed of the bootstrap; each row draws from its own stream derived from the seed and the
        row's cohort, structure and metric, so rows do not depend on each other.
    zero_method
        Treatment of zero differences in the Wilcoxon test and the effect size.
    out
        When given, also write the comparison files into this folder (see
        :func:`write_comparison`).

    Returns
    -------
    pandas.DataFrame
        One row per cohort × structure × metric with the columns of
        :data:`COMPARISON_COLUMNS`, sorted by cohort name, structure (order of first
        appearance in the table) and metric (column order). ``attrs["dlas"]`` holds the
        settings and the cases excluded from pairing.

    Raises
    ------
    EvaluationError
        If a model is absent, ``a == b``, a setting is invalid, or a (case, model, structure)
        appears twice.
    """
    import pandas as pd

    _check_options(correction, alpha, bootstrap, zero_method)  # before reading anything
    table = metrics if isinstance(metrics, pd.DataFrame) else read_metrics(metrics)
    _check_models(table, a, b)
    metric_columns = [m for m in METRIC_COLUMNS if m in table.columns]
    subset = table[table["model"].isin([a, b])]
    _refuse_duplicates(subset)
    rows, unpaired, nonfinite = _compare_rows(
        subset, a, b, metric_columns, bootstrap, seed, zero_method
    )
    if not rows:
        raise EvaluationError(
            "nothing to compare",
            where="metrics table",
            expected=f"rows of models {a} and {b}",
            found="no rows",
            fix="check the model names",
        )
    result = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    result["p_adjusted"] = _adjust(result["p_value"].to_numpy(dtype=float), correction)
    result["correction"] = correction
    result["significant"] = (result["p_adjusted"] < alpha).fillna(False).astype(bool)
    _warn_unpaired(unpaired, a, b)
    result.attrs["dlas"] = {
        "settings": _settings(a, b, correction, alpha, bootstrap, seed, zero_method),
        "unpaired_cases": unpaired,
        "nonfinite_excluded": nonfinite,
    }
    if out is not None:
        write_comparison(result, out, source=None if isinstance(metrics, pd.DataFrame) else metrics)
    return result


def _compare_rows(
    subset: pd.DataFrame,
    a: str,
    b: str,
    metric_columns: list[str],
    bootstrap: int,
    seed: int,
    zero_method: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The comparison rows of every cohort × structure × metric, the cases of one model only
    (per cohort and structure) and the non-finite values left out of the test (per row)."""
    rows: list[dict[str, Any]] = []
    unpaired: list[dict[str, Any]] = []
    nonfinite: list[dict[str, Any]] = []
    structures = list(dict.fromkeys(subset["structure"]))
    for cohort in sorted(set(subset["cohort"])):
        in_cohort = subset[subset["cohort"] == cohort]
        for structure in structures:
            group = in_cohort[in_cohort["structure"] == structure]
            if group.empty:
                continue
            wide = {m: g.set_index("case_id") for m, g in group.groupby("model")}
            only = _one_model_only(wide, a, b)
            if only is not None:
                unpaired.append({"cohort": cohort, "structure": structure, **only})
            fails = (_missed(wide.get(a)), _missed(wide.get(b)))
            for metric in metric_columns:
                va = _values(wide.get(a), metric)
                vb = _values(wide.get(b), metric)
                row, excluded = _compare_one(
                    cohort, structure, metric, a, b, va, vb, bootstrap, seed, zero_method
                )
                row["fails_a"], row["fails_b"] = fails
                rows.append(row)
                if excluded:
                    nonfinite.append(
                        {"cohort": cohort, "structure": structure, "metric": metric, **excluded}
                    )
    return rows, unpaired, nonfinite


def _warn_unpaired(unpaired: list[dict[str, Any]], a: str, b: str) -> None:
    """Log the cases excluded from pairing because only one model has them."""
    for side in unpaired:
        log.warning(
            "%s / %s: cases of one model only, excluded from the paired test: %s only %s; "
            "%s only %s",
            side["cohort"],
            side["structure"],
            a,
            side["only_a"] or "none",
            b,
            side["only_b"] or "none",
        )


def _refuse_duplicates(subset: pd.DataFrame) -> None:
    """Refuse a (case, model, structure) that appears twice."""
    keys = ["case_id", "model", "structure"]
    doubled = subset[subset.duplicated(keys, keep=False)]
    if len(doubled):
        first = doubled.iloc[0]
        raise EvaluationError(
            "a case appears twice for the same model and structure",
            where=f"case {first['case_id']}, model {first['model']}, "
            f"structure {first['structure']}",
            expected="one row per case, model and structure",
            found=f"{len(doubled)} duplicated rows",
            fix="evaluate each model once, or remove the duplicates",
        )


def _one_model_only(wide: dict[Any, pd.DataFrame], a: str, b: str) -> dict[str, list[str]] | None:
    """The cases of one structure and cohort that only model ``a`` or only ``b`` has (excluded
    from pairing), or None when both have the same cases."""
    cases_a = set(wide[a].index) if a in wide else set()
    cases_b = set(wide[b].index) if b in wide else set()
    if cases_a == cases_b:
        return None
    return {
        "only_a": sorted(str(c) for c in cases_a - cases_b),
        "only_b": sorted(str(c) for c in cases_b - cases_a),
    }


def _settings(
    a: str,
    b: str,
    correction: str,
    alpha: float,
    bootstrap: int,
    seed: int,
    zero_method: str,
) -> dict[str, Any]:
    """The settings of a comparison and what its test, effect size and CI are."""
    return {
        "model_a": a,
        "model_b": b,
        "difference": f"{b} − {a}",
        "correction": correction,
        "correction_family": "all rows with a p-value in this comparison",
        "alpha": alpha,
        "bootstrap": bootstrap,
        "seed": seed,
        "zero_method": zero_method,
        "test": "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon), paired by "
        "case; exact when n ≤ 50 without ties or zero differences, exact permutation over "
        "all sign patterns when n ≤ 13 with ties or zeros, normal approximation with tie "
        "correction otherwise",
        "effect_size": "matched-pairs rank-biserial correlation (T+ − T−) / sum of ranks; "
        "positive when model_b is larger",
        "ci": f"percentile bootstrap 95 % CI of the mean difference, {bootstrap} resamples"
        if bootstrap
        else "none",
        "descriptives": "mean, SD (ddof=1), median and quartiles (linear interpolation) "
        "over each model's finite values; NaN and inf values are counted "
        "(n_nonfinite_a/_b) and marked in Table 2",
        "nonfinite_in_test": "pairs with an infinite value stay in the signed-rank test, "
        "ranked as the largest difference of their sign (n_pairs_nonfinite); pairs with a "
        "NaN are left out",
    }


def read_observers(metrics_csv: str | os.PathLike[str]) -> list[str]:
    """The clinician sets (``observers``) recorded in a metrics table's sidecar; empty when
    none were evaluated or there is no sidecar."""
    import json

    sidecar = Path(metrics_csv).with_suffix(".json")
    if not sidecar.is_file():
        return []
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    observers = data.get("observers", []) if isinstance(data, dict) else []
    return [str(o) for o in observers] if isinstance(observers, list) else []


def interobserver(
    metrics: pd.DataFrame | str | os.PathLike[str],
    observers: Sequence[str],
    models: Sequence[str],
    *,
    alpha: float = 0.05,
    zero_method: ZeroMethod = "wilcox",
) -> pd.DataFrame:
    """How each model's agreement with the reference compares with other clinicians'.

    An observer's rows in the metrics table measure a second clinician's contours against the
    reference: the inter-observer agreement, which no model can be expected to beat by much.
    Each model is compared with each observer by :func:`compare` (``model_a`` the observer,
    ``model_b`` the model; paired by case, no correction, no bootstrap), and ``within`` says
    whether the model's mean is at least as good as the observer's: higher for DSC,
    sensitivity, specificity and surface DSC, lower for distances, closer to zero for the
    volume error; NaN for volumes (no better direction) and where a mean is undefined. "At
    least as good as a clinician" is a descriptive statement; the paired p-value next to it says
    whether a difference either way is beyond chance.

    Raises
    ------
    EvaluationError
        No observer or no model given; else as :func:`compare` (e.g. an observer absent from
        the table).
    """
    import pandas as pd

    from dlas.evaluation.metric_info import metric_info

    if not observers or not models:
        raise EvaluationError(
            "nothing to compare with the observers",
            where="interobserver",
            expected="at least one observer and one model",
            found=f"observers {list(observers)}, models {list(models)}",
            fix="name the clinician sets and the models",
        )
    table = metrics if isinstance(metrics, pd.DataFrame) else read_metrics(metrics)
    result = pd.concat(
        [
            compare(table, obs, model, alpha=alpha, bootstrap=0, zero_method=zero_method)
            for obs in observers
            for model in models
        ],
        ignore_index=True,
    )[list(COMPARISON_COLUMNS)]
    result["within"] = pd.Series(
        [
            _within(metric_info(str(m)).better, float(a), float(b))
            for m, a, b in zip(result["metric"], result["mean_a"], result["mean_b"], strict=True)
        ],
        dtype=object,
    )
    return result


def _within(better: str, a: float, b: float) -> bool | float:
    """Whether ``b`` is at least as good as ``a`` (NaN: no better direction, or undefined)."""
    if better == "none" or not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    if better == "higher":
        return b >= a
    if better == "lower":
        return b <= a
    return abs(b) <= abs(a)


def _check_models(table: pd.DataFrame, a: str, b: str) -> None:
    if a == b:
        raise EvaluationError(
            "a model compared with itself",
            where="--a / --b",
            expected="two different model names",
            found=f"{a} and {b}",
            fix="name the two models to compare",
        )
    models = sorted(set(table["model"]))
    for name in (a, b):
        if name not in models:
            raise EvaluationError(
                "model not in the metrics table",
                where="--a / --b",
                expected=f"one of {', '.join(models)}",
                found=repr(name),
                fix="use the NAME given to `dlas evaluate --prediction NAME=DIR`",
            )


def _check_options(correction: str, alpha: float, bootstrap: int, zero_method: str) -> None:
    if correction not in CORRECTIONS:
        raise EvaluationError(
            "unknown multiple-testing correction",
            where="--correction",
            expected=" or ".join(CORRECTIONS),
            found=repr(correction),
            fix="choose none, holm or bh",
        )
    if zero_method not in ZERO_METHODS:
        raise EvaluationError(
            "unknown zero method",
            where="--zero-method",
            expected=" or ".join(ZERO_METHODS),
            found=repr(zero_method),
            fix="choose wilcox (default), pratt or zsplit",
        )
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise EvaluationError(
            "invalid significance level",
            where="--alpha",
            expected="a number between 0 and 1",
            found=repr(alpha),
            fix="use e.g. 0.05",
        )
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise EvaluationError(
            "invalid number of bootstrap resamples",
            where="--bootstrap",
            expected=f"0 (no CI) to {MAX_BOOTSTRAP}",
            found=str(bootstrap),
            fix="use e.g. 10000",
        )


def _missed(frame: pd.DataFrame | None) -> int:
    """Cases in which the model predicted nothing of a structure the reference has (its
    "fails"); 0 when the table has no volume columns."""
    if frame is None or not {"volume_cm3", "volume_ref_cm3"} <= set(frame.columns):
        return 0
    predicted = frame["volume_cm3"].astype(float)
    reference = frame["volume_ref_cm3"].astype(float)
    return int(((predicted == 0) & (reference > 0)).sum())


def _values(frame: pd.DataFrame | None, metric: str) -> pd.Series[float]:
    import pandas as pd

    if frame is None:
        return pd.Series(dtype=float)
    return frame[metric].astype(float)


def _describe(values: _FloatArray) -> dict[str, float]:
    n = values.size
    if n == 0:
        return dict.fromkeys(("mean", "sd", "median", "q1", "q3"), math.nan)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if n > 1 else math.nan,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
    }


def _compare_one(
    cohort: str,
    structure: str,
    metric: str,
    a: str,
    b: str,
    va: pd.Series[float],
    vb: pd.Series[float],
    bootstrap: int,
    seed: int,
    zero_method: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    fa = va[np.isfinite(va.to_numpy())]
    fb = vb[np.isfinite(vb.to_numpy())]
    paired = sorted(set(fa.index) & set(fb.index))
    d = (
        fb.loc[paired].to_numpy(dtype=float) - fa.loc[paired].to_numpy(dtype=float)
        if paired
        else np.empty(0)
    )
    tested, d_test = _tested_differences(va, vb)
    da = _describe(np.asarray(fa.to_numpy(), dtype=np.float64))
    db = _describe(np.asarray(fb.to_numpy(), dtype=np.float64))
    statistic, p_value, test = _wilcoxon(d_test, zero_method)
    ci_low, ci_high = _bootstrap_ci(d, bootstrap, seed, (cohort, structure, metric))
    row = {
        "cohort": cohort,
        "structure": structure,
        "metric": metric,
        "model_a": a,
        "model_b": b,
        "n_pairs": tested,
        "n_pairs_nonfinite": tested - len(paired),
        "n_a": int(fa.size),
        "n_b": int(fb.size),
        "n_nonfinite_a": int(va.size - fa.size),
        "n_nonfinite_b": int(vb.size - fb.size),
        **{f"{k}_a": v for k, v in da.items()},
        **{f"{k}_b": v for k, v in db.items()},
        "mean_diff": float(d.mean()) if d.size else math.nan,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "statistic": statistic,
        "p_value": p_value,
        "p_adjusted": math.nan,
        "correction": "",
        "effect_size_rb": _rank_biserial(d_test, zero_method),
        "significant": False,
        "test": test,
        "zero_method": zero_method,
    }
    excluded = {}
    if va.size - fa.size or vb.size - fb.size:
        excluded = {
            "nonfinite_a": sorted(str(c) for c in va.index.difference(fa.index)),
            "nonfinite_b": sorted(str(c) for c in vb.index.difference(fb.index)),
        }
    return row, excluded


def _tested_differences(va: pd.Series[float], vb: pd.Series[float]) -> tuple[int, _FloatArray]:
    """The differences B − A the signed-rank test uses: every pair without a NaN, infinite
    differences replaced by finite values of their sign that rank above every finite one (a
    rank test sees only the order), the same infinity on both sides as 0."""
    ta = va[~np.isnan(va.to_numpy(dtype=float))]
    tb = vb[~np.isnan(vb.to_numpy(dtype=float))]
    pairs = sorted(set(ta.index) & set(tb.index))
    if not pairs:
        return 0, np.empty(0)
    xa = ta.loc[pairs].to_numpy(dtype=float)
    xb = tb.loc[pairs].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        d = xb - xa
    d[np.isnan(d)] = 0.0  # inf − inf: both models missed the structure
    infinite = np.isinf(d)
    if infinite.any():
        finite = np.abs(d[~infinite])
        top = 2.0 * float(finite.max()) + 1.0 if finite.size else 1.0
        d[infinite] = np.sign(d[infinite]) * top
    return len(pairs), np.asarray(d, dtype=np.float64)


def _wilcoxon(d: _FloatArray, zero_method: str) -> tuple[float, float, str]:
    """Statistic, p-value and the method's name; NaN and ``"none"`` when not testable."""
    from scipy import stats

    if d.size == 0 or not np.any(d != 0):
        return math.nan, math.nan, "none"
    # The choice scipy's method="auto" makes, made explicit so that the row can name it.
    has_zeros = bool(np.any(d == 0))
    has_ties = np.unique(np.abs(d)).size < d.size
    method: Any
    if d.size > 50:
        method, name = "asymptotic", "wilcoxon-normal"
    elif not (has_zeros or has_ties):
        method, name = "exact", "wilcoxon-exact"
    elif d.size <= 13:
        statistic, p_value = _sign_flip_test(d, zero_method)
        return statistic, p_value, "wilcoxon-permutation"
    else:
        method, name = "asymptotic", "wilcoxon-normal"
    result = stats.wilcoxon(d, zero_method=zero_method, method=method)
    return float(result.statistic), float(result.pvalue), name


def _sign_flip_test(d: _FloatArray, zero_method: str) -> tuple[float, float]:
    """The exact permutation test scipy's ``wilcoxon`` runs for n ≤ 13 with ties or zeros
    (``stats.PermutationMethod()``: all 2ⁿ sign patterns, two-sided, relative tolerance
    100·eps), enumerated here with one matrix product instead of 2ⁿ re-rankings."""
    ranks, plus, minus, offset = _signed_ranks(d, zero_method)
    observed = plus
    n = d.size
    flips = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    positive = np.where(flips, d < 0, d > 0)
    null = positive.astype(np.float64) @ ranks + offset
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    less = np.count_nonzero(null <= observed + gamma) / null.size
    greater = np.count_nonzero(null >= observed - gamma) / null.size
    return float(min(plus, minus)), float(np.clip(2 * min(less, greater), 0.0, 1.0))


def _signed_ranks(d: _FloatArray, zero_method: str) -> tuple[_FloatArray, float, float, float]:
    """Ranks of |d| under ``zero_method`` (zeros get rank 0 for ``wilcox``), the rank sums of
    the positive and negative differences, and the share of zero ranks added to each."""
    from scipy.stats import rankdata

    nonzero = d != 0
    ranks = np.zeros(d.size)
    if zero_method == "wilcox":
        ranks[nonzero] = rankdata(np.abs(d[nonzero]))
    else:
        ranks = rankdata(np.abs(d)).astype(np.float64)
    offset = 0.5 * float(ranks[~nonzero].sum()) if zero_method == "zsplit" else 0.0
    plus = float(ranks[d > 0].sum()) + offset
    minus = float(ranks[d < 0].sum()) + offset
    return ranks, plus, minus, offset


def _rank_biserial(d: _FloatArray, zero_method: str) -> float:
    if not np.any(d != 0):
        return math.nan
    ranks, plus, minus, _ = _signed_ranks(d, zero_method)
    return (plus - minus) / float(ranks.sum())


def _bootstrap_ci(
    d: _FloatArray, resamples: int, seed: int, key: tuple[str, str, str]
) -> tuple[float, float]:
    if resamples == 0 or d.size < 2:
        return math.nan, math.nan
    stream = zlib.crc32("\x00".join(key).encode())
    rng = np.random.default_rng([seed, stream])
    means = np.empty(resamples)
    for start in range(0, resamples, _BOOTSTRAP_BLOCK):
        stop = min(start + _BOOTSTRAP_BLOCK, resamples)
        index = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _adjust(p: _FloatArray, correction: str) -> _FloatArray:
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if correction == "none" or not tested.any():
        out[tested] = p[tested]
        return out
    values = p[tested]
    if correction == "bh":
        from scipy.stats import false_discovery_control

        out[tested] = false_discovery_control(values, method="bh")
        return out
    # Holm's step-down: the i-th smallest of m p-values times (m − i), made monotone, capped.
    m = values.size
    order = np.argsort(values, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(values[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    out[tested] = adjusted
    return out


# ---------------------------------------------------------------------------------- writing
#: The files :func:`write_comparison` writes into its folder (``interobserver.csv`` only with
#: an inter-observer reference).
COMPARISON_FILES = (
    "comparison.csv",
    "table2.md",
    "table2.tex",
    "table2.csv",
    "comparison.json",
    "interobserver.csv",
)


def write_comparison(
    comparison: pd.DataFrame,
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    table_metrics: Sequence[str] | None = None,
    interobserver: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``table2.md``, ``table2.tex``, ``table2.csv`` and
    ``comparison.json`` into the folder ``out`` (each file atomically).

    Parameters
    ----------
    comparison
        The result of :func:`compare`.
    source
        The metrics CSV compared: its SHA-256 and its sidecar's metric definitions are recorded.
    table_metrics
        Metric columns of Table 2 (default: DSC, 95HD, sensitivity, specificity).
    interobserver
        The result of :func:`interobserver`, when clinician sets were evaluated: written as
        ``interobserver.csv`` and shown in Table 2.

    Returns
    -------
    dict
        File kind → path.
    """
    from dlas.evaluation.tables import DEFAULT_TABLE_METRICS, TableFormat, render_table2
    from dlas.io.atomic import atomic_path, write_json, write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    info = dict(comparison.attrs.get("dlas", {}))
    metrics = list(table_metrics or DEFAULT_TABLE_METRICS)
    paths = {
        "comparison_csv": folder / "comparison.csv",
        "table2_md": folder / "table2.md",
        "table2_tex": folder / "table2.tex",
        "table2_csv": folder / "table2.csv",
        "comparison_json": folder / "comparison.json",
    }
    with atomic_path(paths["comparison_csv"]) as tmp:
        comparison.to_csv(tmp, index=False, na_rep="nan", lineterminator="\n")
    if interobserver is not None and len(interobserver):
        paths["interobserver_csv"] = folder / "interobserver.csv"
        with atomic_path(paths["interobserver_csv"]) as tmp:
            interobserver.to_csv(tmp, index=False, na_rep="nan", lineterminator="\n")
    else:
        interobserver = None
    formats: tuple[tuple[str, TableFormat], ...] = (
        ("table2_md", "markdown"),
        ("table2_tex", "latex"),
        ("table2_csv", "csv"),
    )
    for key, fmt in formats:
        text = render_table2(comparison, fmt, metrics=metrics, interobserver=interobserver)
        write_text(paths[key], text)
    input_info = _input_info(source)
    if interobserver is None:
        # a rewrite without observers must not leave an earlier run's file behind
        (folder / "interobserver.csv").unlink(missing_ok=True)
    write_json(
        paths["comparison_json"],
        {
            "kind": "dlas-comparison",
            "schema_version": 1,
            "software": _versions(),
            "input": input_info,
            "table2_metrics": metrics,
            "columns": list(COMPARISON_COLUMNS),
            "csv_conventions": "'nan' = not available (e.g. no pair, no test); p_adjusted "
            "equals p_value when correction is none",
            **_interobserver_info(interobserver),
            **_json_safe(info),
        },
    )
    return paths


def _input_info(source: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The metrics CSV compared: name, SHA-256 and its sidecar's metric options and
    definitions (empty when no source is given)."""
    if source is None:
        return {}
    src = Path(source)
    info: dict[str, Any] = {
        "metrics_csv": src.name,
        "metrics_csv_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
    }
    sidecar = src.with_suffix(".json")
    if sidecar.is_file():
        import json

        data = json.loads(sidecar.read_text(encoding="utf-8"))
        info["metric_options"] = data.get("options")
        info["metric_definitions"] = data.get("definitions")
    return info


def _interobserver_info(interobserver: pd.DataFrame | None) -> dict[str, Any]:
    """The ``interobserver`` entry of ``comparison.json`` (none without observers)."""
    if interobserver is None:
        return {}
    return {
        "interobserver": {
            "observers": list(dict.fromkeys(interobserver["model_a"])),
            "file": "interobserver.csv",
            "within": "the model's mean is at least as good as the observer's "
            "(higher DSC, sensitivity, specificity, surface DSC; lower distances; "
            "volume error closer to zero); p: paired Wilcoxon signed-rank test of "
            "the model against the observer, uncorrected",
        }
    }


def _versions() -> dict[str, str]:
    import pandas as pd
    import scipy

    return {
        "dlas": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
