"""The inter-observer reference: each model against another clinician's agreement with the
reference, in interobserver.csv, Table 2 and `dlas compare`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dlas.cli import main
from dlas.evaluation import (
    INTEROBSERVER_COLUMNS,
    compare,
    interobserver,
    read_observers,
    render_table2,
    write_comparison,
)


def _metrics() -> pd.DataFrame:
    """Eight cases of one cohort: the observer agrees with the reference at DSC 0.85-0.92, the
    vendor model worse, the fine-tuned model better; 95HD the other way round."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(8):
        observer = 0.85 + 0.01 * i
        for model, dsc in (
            ("observer2", observer),
            ("VPM", observer - 0.05),
            ("LFT", observer + 0.02),
        ):
            noise = float(rng.normal(0, 0.004))
            rows.append(
                {
                    "case_id": f"C{i:02d}",
                    "cohort": "ExVal",
                    "model": model,
                    "structure": "CTV",
                    "dsc": dsc + noise,
                    "hd95_mm": 10 * (1 - dsc) + noise,
                    "sensitivity": dsc + 0.01,
                    "specificity": 0.99,
                    "volume_cm3": 100.0 + i + noise,
                    "flags": "",
                }
            )
    return pd.DataFrame(rows)


def test_figures_equal_the_pairwise_metrics_and_the_paired_test() -> None:
    table = _metrics()
    result = interobserver(table, ["observer2"], ["VPM", "LFT"])
    assert list(result.columns) == list(INTEROBSERVER_COLUMNS)
    for model, within_dsc in (("VPM", False), ("LFT", True)):
        for metric in ("dsc", "hd95_mm"):
            row = result[(result["model_b"] == model) & (result["metric"] == metric)].iloc[0]
            obs = table[table["model"] == "observer2"].set_index("case_id")[metric]
            mod = table[table["model"] == model].set_index("case_id")[metric]
            assert row["model_a"] == "observer2"
            assert row["mean_a"] == pytest.approx(obs.mean())
            assert row["mean_b"] == pytest.approx(mod.mean())
            assert row["p_value"] == pytest.approx(stats.wilcoxon(mod - obs[mod.index]).pvalue)
            # lower 95HD goes with higher DSC here, so "within" agrees for both metrics
            assert row["within"] is within_dsc
    volume = result[result["metric"] == "volume_cm3"]
    assert volume["within"].map(lambda v: isinstance(v, float) and math.isnan(v)).all()


def test_table2_shows_the_observer_row_and_marks_models_within() -> None:
    table = _metrics()
    comparison = compare(table, "VPM", "LFT", bootstrap=0)
    agreement = interobserver(table, ["observer2"], ["VPM", "LFT"])
    text = render_table2(comparison, "markdown", metrics=["dsc"], interobserver=agreement)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("|")}
    assert "Inter-observer (observer2)" in rows
    assert "§" in rows["LFT"] and "§" not in rows["VPM"]
    assert "§ The model's mean is at least as good as every observer's" in text
    latex = render_table2(comparison, "latex", metrics=["dsc"], interobserver=agreement)
    assert "$^\\S$" in latex and "§" not in latex.split("\\caption")[0]
    # without observers the table is the one it always was
    plain = render_table2(comparison, "markdown", metrics=["dsc"])
    assert "Inter-observer" not in plain and "§" not in plain


def test_compare_reads_the_observers_from_the_metrics_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "metrics.csv"
    _metrics().to_csv(metrics, index=False)
    metrics.with_suffix(".json").write_text(json.dumps({"observers": ["observer2"]}))
    assert read_observers(metrics) == ["observer2"]
    code = main(["compare", str(metrics), "--a", "VPM", "--b", "LFT", "--out", str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    saved = pd.read_csv(tmp_path / "c" / "interobserver.csv")
    assert set(saved["model_b"]) == {"VPM", "LFT"}
    assert "Inter-observer (observer2)" in (tmp_path / "c" / "table2.md").read_text()
    settings = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert settings["interobserver"]["observers"] == ["observer2"]
    # rewritten without observers: the earlier inter-observer file does not linger
    metrics.with_suffix(".json").write_text(json.dumps({}))
    write_comparison(compare(metrics, "VPM", "LFT", bootstrap=0), tmp_path / "c", source=metrics)
    assert not (tmp_path / "c" / "interobserver.csv").exists()


def test_evaluate_records_observers_and_refuses_unknown_ones(study: Any) -> None:
    from dlas.errors import EvaluationError
    from dlas.evaluation import evaluate

    folders = {"VPM": study.predictions["VPM"], "observer2": study.predictions["LFT"]}
    result = evaluate(study.dataset, folders, observers=["observer2"], cases=["EX001"])
    assert result.metadata["observers"] == ["observer2"]
    with pytest.raises(EvaluationError, match="observer is not among the predictions"):
        evaluate(study.dataset, {"VPM": study.predictions["VPM"]}, observers=["observer2"])


def test_interobserver_needs_observers_and_models() -> None:
    from dlas.errors import EvaluationError

    with pytest.raises(EvaluationError, match="nothing to compare with the observers"):
        interobserver(_metrics(), [], ["VPM"])
    with pytest.raises(EvaluationError, match="model not in the metrics table"):
        interobserver(_metrics(), ["observer9"], ["VPM"])
