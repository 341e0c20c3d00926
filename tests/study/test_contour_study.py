"""Studies on exported contours: evaluation only (no training) and `dlas evaluate --dicom`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from dlas.cli import main
from dlas.errors import StudyError
from dlas.evaluation import compute_metrics, read_metrics
from dlas.io import read_ct_series, write_rtstruct
from dlas.io.rtstruct import AlgorithmIdentification
from dlas.study import StudyConfig, load_study_config, run_study

COHORTS = {
    "p1": "ExVal",
    "p2": "ExVal",
    "p3": "ExVal",
    "p4": "GenEva",
    "p5": "GenEva",
    "p6": "GenEva",
}
# CTV of each set: the clinical one, the vendor's shifted by 2 voxels, LFT's by 1 (and per
# patient a different extent, so that no two pairs tie)
SHIFTS = {"clinical": 0, "VPM": 2, "LFT": 1}


def _ctv(shape: tuple[int, int, int], shift: int, n: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[2:8, 10 + shift : 18 + shift + n, 8:22] = True
    return mask


def _bladder(shape: tuple[int, int, int], n: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[3:7, 3 : 8 + n % 2, 12:18] = True
    return mask


def _write_patient(root: Path, name: str, n: int, sets: dict[str, int]) -> None:
    """A CT series of 10 x 32 x 32 voxels with one RTSTRUCT per contour set: the clinical one
    approved, the vendor's stamped RT-Mind, each model's labelled with its name."""
    from dlas.io import CTSeriesSpec, Volume, write_ct_series

    nz, ny, nx = 10, 32, 32
    _, yy, xx = np.mgrid[:nz, :ny, :nx]
    body = ((yy - 16) / 13.4) ** 2 + ((xx - 16) / 14.4) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    spec = CTSeriesSpec(
        patient_name=f"DOE^{name.upper()}", patient_id=f"PID-{name}", uid_seed=f"ct-{name}"
    )
    write_ct_series(
        Volume(hu, spacing=(2.5, 1.2, 1.2), origin=(-19.0, -19.0, -12.5)), root / name / "ct", spec
    )
    ct = read_ct_series(root / name / "ct")
    shape = ct.volume.shape
    for contour_set, shift in sets.items():
        path = root / name / f"RS_{contour_set}.dcm"
        # a second clinician draws the CTV one voxel wider than the reference
        ctv = _ctv(shape, 0, n + 1) if contour_set == "observer2" else _ctv(shape, shift, n)
        write_rtstruct(
            {"CTV": ctv, "Bladder": _bladder(shape, n)},
            ct,
            path,
            generation="MANUAL" if contour_set == "clinical" else "AUTOMATIC",
            algorithm=None
            if contour_set == "clinical"
            else AlgorithmIdentification(contour_set, "1"),
            label=contour_set,
            timestamp=dt.datetime(2024, 1, 1),
            uid_seed=f"{name}-{contour_set}",
        )
        ds = pydicom.dcmread(path)
        if contour_set == "clinical":
            ds.ApprovalStatus = "APPROVED"
        if contour_set == "VPM":
            ds.Manufacturer = "RT-Mind-AI Ltd"
        ds.save_as(path)


def _write_cohorts(root: Path, cohorts: dict[str, str]) -> None:
    (root / "cohorts.csv").write_text(
        "folder,cohort\n" + "".join(f"{k}/ct,{v}\n" for k, v in cohorts.items())
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six patients, each with the approved clinical RTSTRUCT and the vendor's and LFT's
    exported (unapproved) ones; cohorts from a CSV by folder."""
    root = tmp_path_factory.mktemp("contours") / "export"
    for n, name in enumerate(COHORTS):
        _write_patient(root, name, n, {**SHIFTS, "observer2": 0})
    _write_cohorts(root, COHORTS)
    return root


def _config(export: Path, **models: Any) -> dict[str, Any]:
    return {
        "name": "commissioning",
        "data": {
            "kind": "dicom",
            "path": str(export),
            "cohort_by": f"csv:{export / 'cohorts.csv'}",
            "contour_sets": {
                "clinical": "approved",
                "VPM": "manufacturer:rt-mind,unapproved",
                "LFT": "label:LFT,unapproved",
            },
            "reference_set": "clinical",
        },
        "cohorts": {"pretrain": None, "evaluate": ["ExVal", "GenEva"]},
        "models": {"vendor": "VPM", "finetuned": "LFT", **models},
        "statistics": {"bootstrap": 200},
        "report": {"viewer": False},
    }


@pytest.fixture(scope="module")
def study(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = _config(export, from_contours=["VPM", "LFT"])
    data["data"]["contour_sets"]["observer2"] = "label:observer2"
    data["observers"] = ["observer2"]
    config = StudyConfig.model_validate(data)
    out = tmp_path_factory.mktemp("study") / "commissioning"
    result = run_study(config, out, device="cpu")
    assert result.steps == {step: "ran" for step in result.steps}
    return out


def test_evaluation_only_study_trains_nothing_and_measures_the_sets(
    study: Path, export: Path
) -> None:
    assert not (study / "models").exists() and not (study / "predictions").exists()
    metrics = read_metrics(study / "metrics.csv")
    metrics = metrics[metrics["model"] != "observer2"]
    assert set(metrics["model"]) == {"VPM", "LFT"} and len(metrics) == 6 * 2 * 2
    # independent: the metric kernel on the masks this test wrote into the export
    spacing = (2.5, 1.2, 1.2)
    shape = (10, 32, 32)
    by_case = {
        metrics.loc[metrics["model"] == "VPM"].drop_duplicates("case_id")["case_id"].iloc[i]: i
        for i in range(6)
    }
    assert len(by_case) == 6
    expected = sorted(
        compute_metrics(_ctv(shape, 0, n), _ctv(shape, SHIFTS[m], n), spacing).dsc
        for n in range(6)
        for m in ("VPM", "LFT")
    )
    got = sorted(metrics.loc[metrics["structure"] == "CTV", "dsc"])
    assert np.allclose(got, expected)
    comparison = pd.read_csv(study / "comparison" / "comparison.csv")
    ctv = comparison[(comparison["structure"] == "CTV") & (comparison["metric"] == "dsc")]
    assert (ctv["mean_diff"] > 0).all()  # LFT (1 voxel off) beats VPM (2 voxels off)
    html = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "contour set VPM of the data set" in html
    for identifier in ("DOE^", "PID-"):
        assert identifier not in html
    steps = yaml.safe_load((study / ".steps" / "finetune.json").read_text())
    assert steps["contour_set"] == "LFT"


def test_dicom_export_to_metrics_in_one_command(
    study: Path, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            "--dicom",
            str(export),
            "--reference",
            str(tmp_path / "ds"),
            "--contour-set",
            "clinical=approved",
            "--contour-set",
            "VPM=manufacturer:rt-mind,unapproved",
            "--contour-set",
            "LFT=label:LFT,unapproved",
            "--reference-set",
            "clinical",
            "--out",
            str(tmp_path / "metrics.csv"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    direct = read_metrics(tmp_path / "metrics.csv")
    assert set(direct["model"]) == {"VPM", "LFT"} and set(direct["cohort"]) == {"all"}
    from_study = read_metrics(study / "metrics.csv")
    from_study = from_study[from_study["model"] != "observer2"]
    key = ["model", "structure", "dsc", "hd95_mm", "volume_cm3"]
    ordered = [direct[key].sort_values(key).to_numpy(), from_study[key].sort_values(key).to_numpy()]
    assert (ordered[0] == ordered[1]).all()
    # the same vendor masks as NIfTI prediction folders give the same numbers as its RTSTRUCTs
    from dlas.dataset import CaseDataset
    from dlas.evaluation import evaluate
    from dlas.io import write_mask

    dataset = CaseDataset.open(tmp_path / "ds")
    folder = tmp_path / "vpm-nifti"
    for case_id in dataset.case_ids():
        case = dataset.load_case(case_id)
        n = int(case.structures["CTV"].array.any(axis=(0, 2)).sum()) - 8  # the patient's index
        for name, mask in (
            ("CTV", _ctv(case.ct.shape, 2, n)),
            ("Bladder", _bladder(case.ct.shape, n)),
        ):
            write_mask(case.ct.with_array(mask), folder / case_id / "structures" / f"{name}.nii.gz")
    nifti = evaluate(dataset, {"VPM": folder}).table
    from_set = direct[direct["model"] == "VPM"].reset_index(drop=True)
    columns = ["case_id", "structure", "dsc", "hd95_mm", "sensitivity", "volume_cm3"]
    assert nifti[columns].equals(from_set[columns])


def test_evaluate_dicom_errors_are_one_line(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--reference", str(tmp_path / "ds"), "--out", str(tmp_path / "m.csv")]
    code = main([*base, "--dicom", str(export), "--contour-set", "clinical=approved"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "which contour set is the reference is not given" in err
    code = main([*base, "--contour-set", "clinical=approved", "--reference-set", "clinical"])
    err = capsys.readouterr().err
    assert code == 2 and "contour-set rules without a DICOM export" in err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "m.csv").exists()


def test_from_contours_needs_contour_sets_and_known_models(export: Path, tmp_path: Path) -> None:
    data = _config(export, from_contours=["VPM", "XYZ"])
    with pytest.raises(StudyError, match="from_contours names"):
        load_study_config(_write(tmp_path, data))
    data = _config(export, from_contours=["VPM", "LFT"])
    data["data"] = {"kind": "dicom", "path": str(export)}
    with pytest.raises(StudyError, match=r"models\.from_contours and observers need contour sets"):
        load_study_config(_write(tmp_path, data))
    data = _config(export, from_contours=["VPM", "LFT"])
    data["observers"] = ["VPM"]
    with pytest.raises(StudyError, match="must be distinct and differ from the models' names"):
        load_study_config(_write(tmp_path, data))
    data = _config(export, from_contours=["VPM", "LFT"])
    data["data"]["contour_sets"]["VPM"] = "colour:red"
    with pytest.raises(StudyError, match="cannot read the contour-set rule"):
        load_study_config(_write(tmp_path, data))


def test_a_set_missing_from_the_data_is_refused(export: Path, tmp_path: Path) -> None:
    data = _config(export, from_contours=["VPM", "LFT"])
    data["models"]["finetuned"] = "LFT2"
    data["models"]["from_contours"] = ["VPM", "LFT2"]
    config = StudyConfig.model_validate(data)
    with pytest.raises(StudyError, match=r"contour set not found in the data.*LFT2"):
        run_study(config, tmp_path / "study", device="cpu")


def test_inter_observer_reference_equals_the_pairwise_metrics(study: Path) -> None:
    """The observers' rows are the second clinician's own metrics; each model is compared with
    them case by case; Table 2 and the report show them."""
    from scipy.stats import wilcoxon

    metrics = read_metrics(study / "metrics.csv")
    agreement = pd.read_csv(study / "comparison" / "interobserver.csv")
    assert set(agreement["model_a"]) == {"observer2"}
    assert set(agreement["model_b"]) == {"VPM", "LFT"}
    for (cohort, model), rows in agreement[
        (agreement["structure"] == "CTV") & (agreement["metric"] == "dsc")
    ].groupby(["cohort", "model_b"]):
        in_cohort = metrics[(metrics["cohort"] == cohort) & (metrics["structure"] == "CTV")]
        obs = in_cohort[in_cohort["model"] == "observer2"].set_index("case_id")["dsc"]
        mod = in_cohort[in_cohort["model"] == model].set_index("case_id")["dsc"]
        row = rows.iloc[0]
        assert row["mean_a"] == pytest.approx(obs.mean())
        assert row["mean_b"] == pytest.approx(mod.mean())
        assert row["p_value"] == pytest.approx(wilcoxon(mod[obs.index] - obs).pvalue)
        assert not row["within"]  # the clinician's one-voxel widening beats both models
    bladder = agreement[(agreement["structure"] == "Bladder") & (agreement["metric"] == "dsc")]
    assert bladder["within"].all()  # every set has the reference's bladder: DSC 1 = 1
    table2 = (study / "comparison" / "table2.md").read_text(encoding="utf-8")
    assert "| Inter-observer (observer2) |" in table2
    assert "1.000 ± 0.000§" in table2 and "lies within the clinicians' own" in table2
    assert "$^\\S$" in (study / "comparison" / "table2.tex").read_text(encoding="utf-8")
    html = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "Inter-observer (observer2)" in html


@pytest.mark.slow
def test_mixed_study_fine_tunes_lft_and_compares_it_with_the_vendors_export(
    tmp_path: Path,
) -> None:
    """The vendor's contours come from its RTSTRUCT export; LFT is trained here (a base model
    pretrained on the vendor cohort, fine-tuned on the training cohort) and predicted."""
    root = tmp_path / "export"
    cohorts = {**COHORTS, "v1": "vendor", "v2": "vendor", "t1": "training", "t2": "training"}
    for n, name in enumerate(cohorts):
        sets = {"clinical": 0, "VPM": 2} if COHORTS.get(name) else {"clinical": 0}
        _write_patient(root, name, n % 6, sets)
    _write_cohorts(root, cohorts)
    data = _config(root, from_contours=["VPM"])
    data["data"]["contour_sets"].pop("LFT")
    recipe = {"base": "fast", "epochs": 1, "steps_per_epoch": 2, "patch_mm": 32.0}
    data["cohorts"] = {
        "pretrain": "vendor",
        "finetune": "training",
        "evaluate": ["ExVal", "GenEva"],
    }
    data["pretrain"] = {**recipe, "folds": 1}
    data["finetune"] = {**recipe, "folds": 2}
    data["prediction"] = {"rtstruct_sample": 0}
    out = tmp_path / "study"
    run_study(StudyConfig.model_validate(data), out, device="cpu")
    assert (out / "models" / "LFT" / "model.json").is_file()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["LFT"]
    metrics = read_metrics(out / "metrics.csv")
    assert set(metrics["model"]) == {"VPM", "LFT"} and len(metrics) == 6 * 2 * 2
    vendor = metrics[(metrics["model"] == "VPM") & (metrics["structure"] == "CTV")]
    shape, spacing = (10, 32, 32), (2.5, 1.2, 1.2)
    expected = sorted(
        compute_metrics(_ctv(shape, 0, n), _ctv(shape, 2, n), spacing).dsc for n in range(6)
    )
    assert np.allclose(sorted(vendor["dsc"]), expected)
    assert (out / "report" / "index.html").is_file()


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_report_reads_a_study_on_a_data_set_in_place(study: Path, tmp_path: Path) -> None:
    """A study with data.kind dataset reads its data set where it is (no data/ folder): the
    report finds it through the study layout, as the runner does."""
    import shutil

    from dlas.report import load_study
    from dlas.study_layout import StudyLayout

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    elsewhere = tmp_path / "shared-dataset"
    shutil.move(copy / "data", elsewhere)
    config = yaml.safe_load((copy / "study.yaml").read_text())
    config["data"] = {"kind": "dataset", "path": str(elsewhere)}
    (copy / "study.yaml").write_text(yaml.safe_dump(config))
    layout = StudyLayout.of(copy)
    assert layout.data == elsewhere and layout.metrics == copy / "metrics.csv"
    inputs = load_study(copy)
    assert inputs.dataset.root == elsewhere
    assert {m["name"] for m in inputs.models} == {"VPM", "LFT", "observer2"}
