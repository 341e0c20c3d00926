"""`dlas study` end to end on the tiny replica: artefacts, resume, report in a browser, errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from dlas.cli import main
from dlas.errors import StudyError
from dlas.study import StudyConfig, load_study_config, preset_config, run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny study that is killed after fine-tuning, then resumed from the command line."""
    out = tmp_path_factory.mktemp("study") / "tiny"

    def killed(_: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    args = ["study", "--preset", "tiny", "--out", str(out), "--device", "cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dlas.study.runner._step_predict", killed)
        interrupted = main(args)
    stdout = io.StringIO()
    stderr = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*args, "--resume"])
    return {
        "out": out,
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "interrupted": interrupted,
    }


def test_resume_skips_completed_steps(tiny: dict[str, Any]) -> None:
    assert tiny["interrupted"] == 130
    assert tiny["code"] == 0
    assert "already complete, skipped: data, pretrain, finetune" in tiny["stdout"]
    assert "ran: predict, evaluate, compare, report" in tiny["stdout"]


def test_step_log_goes_to_the_study_log_not_the_console(tiny: dict[str, Any]) -> None:
    log = (tiny["out"] / "study.log").read_text(encoding="utf-8")
    assert "step predict finished" in log
    assert "finetune: fold 2/2 epoch 1/1: train loss" in log
    assert "step predict finished" not in tiny["stderr"]
    assert "INFO" not in tiny["stderr"]


def test_every_artefact_exists(tiny: dict[str, Any]) -> None:
    out: Path = tiny["out"]
    for path in [
        "study.yaml",
        "study.log",
        "data/dataset.json",
        "models/VPM/model.json",
        "models/LFT/model.json",
        "models/LFT/cv.json",
        "metrics.csv",
        "metrics.json",
        "comparison/comparison.csv",
        "comparison/table2.md",
        "comparison/table2.tex",
        "report/index.html",
        "report/viewer/ExVal.html",
        "report/viewer/GenEva.html",
    ]:
        assert (out / path).is_file(), path
    for model in ("VPM", "LFT"):
        cases = sorted(p.name for p in (out / "predictions" / model).iterdir() if p.is_dir())
        assert len(cases) == 6  # ExVal 3 + GenEva 3
        assert (out / "predictions" / model / cases[0] / "structures" / "CTV.nii.gz").is_file()
    steps = sorted(p.stem for p in (out / ".steps").glob("*.json"))
    assert steps == sorted(
        ["data", "pretrain", "finetune", "predict", "evaluate", "compare", "report"]
    )


def test_configuration_and_provenance_are_recorded(tiny: dict[str, Any]) -> None:
    out: Path = tiny["out"]
    text = (out / "study.yaml").read_text()
    config = StudyConfig.model_validate(yaml.safe_load(text))
    assert f"# config_sha256: {config.sha256()}" in text
    assert config == preset_config("tiny")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["hd95"] == "pooled"
    finetune = json.loads((out / ".steps" / "finetune.json").read_text())
    model = json.loads((out / "models" / "LFT" / "model.json").read_text())
    assert finetune["model_sha256"] == model["model_sha256"]


def test_outputs_hold_no_patient_identifiers(tiny: dict[str, Any]) -> None:
    out: Path = tiny["out"]
    manifest = json.loads((out / "source" / "manifest.json").read_text())
    names = set()
    for cohort in ("ExVal", "GenEva", "training", "vendor"):
        for folder in (out / "source" / cohort).iterdir():
            ds = pydicom.dcmread(next(folder.glob("CT*.dcm")), stop_before_pixels=True)
            names |= {str(ds.PatientName), str(ds.PatientID)}
    assert manifest["patients"] and names
    for path in [
        *(out / "data").rglob("*.json"),
        out / "metrics.csv",
        out / "report" / "index.html",
        *(out / "report" / "viewer").glob("*.html"),
    ]:
        text = path.read_text(errors="ignore")
        assert not [n for n in names if n in text], path


def test_rtstruct_sample_loads_back_onto_its_ct(tiny: dict[str, Any], dciodvfy) -> None:
    out: Path = tiny["out"]
    sample = sorted((out / "predictions" / "rtstruct-sample").rglob("*.dcm"))
    rtstructs = [
        p for p in sample if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT"
    ]
    assert len(rtstructs) == 2  # one case of each evaluation cohort
    for path in rtstructs:
        assert dciodvfy(path) == []
        ds = pydicom.dcmread(path)
        roi = ds.StructureSetROISequence[0]
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert roi.ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmName == "LFT"


@pytest.mark.browser
def test_report_opens_in_chromium(tiny: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from helpers.browser import assert_offline_and_clean, open_page

    open_page(browser, tiny["out"] / "report" / "index.html")
    assert_offline_and_clean(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "#table2 tbody tr")
    assert browser.find_elements(By.CSS_SELECTOR, "figure img")


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_invalid_study_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"at colour: invalid study configuration"):
        load_study_config(_write(tmp_path, {"colour": "red"}))
    with pytest.raises(StudyError, match="study configuration file not found"):
        load_study_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study_config(tmp_path / "bad.yaml")


def test_cohort_playing_two_parts_is_refused(tmp_path: Path) -> None:
    data = {
        "cohorts": {
            "pretrain": "vendor",
            "finetune": "training",
            "evaluate": ["training", "GenEva"],
        }
    }
    with pytest.raises(StudyError, match=r"a cohort plays two parts.*leak"):
        load_study_config(_write(tmp_path, data))


def test_relative_paths_are_relative_to_the_configuration(tmp_path: Path) -> None:
    data = {
        "data": {"kind": "dicom", "path": "export", "cohort_by": "csv:cohorts.csv"},
        "pretrained_model": "models/vendor",
    }
    config = load_study_config(_write(tmp_path, data))
    assert config.data.path == tmp_path / "export"  # type: ignore[union-attr]
    assert config.data.cohort_by == f"csv:{tmp_path / 'cohorts.csv'}"  # type: ignore[union-attr]
    assert config.pretrained_model == tmp_path / "models" / "vendor"


def test_cohort_missing_from_the_data_is_refused(tmp_path: Path, synthetic_ct) -> None:
    from dlas.dataset import ImportOptions, import_source
    from dlas.structures import StructureSet

    folder, _, _ = synthetic_ct(name="export/ct")
    import_source(
        folder.parent,
        tmp_path / "ds",
        ImportOptions(structure_set=StructureSet.builtin(), cohort_by="none"),
    )
    config = StudyConfig.model_validate({"data": {"kind": "dataset", "path": str(tmp_path / "ds")}})
    with pytest.raises(StudyError, match=r"cohort not found.*all \(1\)"):
        run_study(config, tmp_path / "study", device="cpu")


def test_existing_study_needs_resume_and_the_same_configuration(tiny: dict[str, Any]) -> None:
    out: Path = tiny["out"]
    with pytest.raises(StudyError, match=r"already holds a study.*--resume"):
        run_study(preset_config("tiny"), out, device="cpu")
    other = preset_config("tiny").model_copy(update={"name": "other"})
    with pytest.raises(StudyError, match="configuration changed since the study started"):
        run_study(other, out, device="cpu", resume=True)


def test_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["study", "--preset", "tiny", "--out", str(tmp_path)])
    assert code == 2


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(StudyError, match="unknown study preset"):
        preset_config("huge")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str, tmp_path: Path) -> Path:
    """The packaged example, written where a user would put it."""
    from dlas.study import example_config

    path = tmp_path / f"{name}.yaml"
    path.write_text(example_config(name))
    return path


def test_example_config_command_prints_the_packaged_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["example-config", "hospital"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# A study on a department's own data")
    (tmp_path / "mine.yaml").write_text(text)
    assert load_study_config(tmp_path / "mine.yaml").name == "rectal-lft-2024"
    assert main(["example-config", "nnunet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown example configuration" in err
    assert "hospital, contours" in err


def test_contour_set_example_is_valid(tmp_path: Path) -> None:
    config = load_study_config(_example("contours", tmp_path))
    assert config.models.from_contours == ("VPM", "LFT") and not config.models.trains
    rules = config.data.contour_set_rules()  # type: ignore[union-attr]
    assert rules.reference == "clinical"
    assert [r.name for r in rules.rules] == ["clinical", "VPM", "LFT"]


@pytest.mark.parametrize("name", ["hospital", "openkbp-hn/study.yaml"])
def test_example_configurations_are_valid(name: str, tmp_path: Path) -> None:
    from dlas.structures import load_structure_set
    from dlas.training.config import load_recipe

    path = EXAMPLES / name if name.endswith(".yaml") else _example(name, tmp_path)
    config = load_study_config(path)
    assert config.cohorts.finetune == "training"
    assert config.cohorts.evaluate == ("ExVal", "GenEva")
    # The recipe sections must be valid recipes for the example's structure set, not only YAML.
    classes = 1 + len(load_structure_set(config.structures).structures)
    for section in (config.pretrain, config.finetune):
        recipe = load_recipe({"schema_version": 1, **section})
        weights = recipe.class_weights
        assert isinstance(weights, str) or len(weights) == classes


def test_openkbp_example_names_every_patient_of_the_shared_data_once() -> None:
    config = load_study_config(EXAMPLES / "openkbp-hn" / "study.yaml")
    source = config.data.path  # type: ignore[union-attr]
    if not source.is_dir():
        pytest.skip(f"the real data is not at {source}")
    patients = {p.name for p in source.iterdir() if (p / "ct.nii.gz").is_file()}
    rows = (EXAMPLES / "openkbp-hn" / "cohorts.csv").read_text().splitlines()[1:]
    folders = [row.split(",")[0] for row in rows]
    assert sorted(folders) == sorted(patients)
    cohorts = {row.split(",")[1] for row in rows}
    assert cohorts == {"vendor", "training", "ExVal", "GenEva"}


def test_replica_case_ids_are_the_same_in_every_run(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Case ids decide the order in which training meets the cases: a second run of the same
    preset must import the replica under the same ids (else its numbers differ)."""

    def stop(_: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dlas.study.runner._step_pretrain", stop)
        with pytest.raises(KeyboardInterrupt):
            run_study(preset_config("tiny"), tmp_path / "again", device="cpu")
    first = json.loads((tiny["out"] / "data" / "dataset.json").read_text())
    again = json.loads((tmp_path / "again" / "data" / "dataset.json").read_text())
    assert again["cases"] == first["cases"]
    assert len(first["cases"]) == 14


def test_a_given_vendor_model_lacking_a_structure_is_refused_before_fine_tuning(
    tmp_path: Path,
) -> None:
    """The evaluation needs the vendor model's prediction of every structure: a model that
    lacks one is refused at the pretrain step, naming it, before anything is fine-tuned."""
    from dlas.training import train
    from helpers import synthetic_data

    vendor = synthetic_data.make_dataset(tmp_path / "vendor", 2)  # no Rod
    recipe = {"folds": 1, "epochs": 1, "steps_per_epoch": 1, "batch_size": 2,
              "model": synthetic_data.TINY_NETWORK}  # fmt: skip
    train(vendor, tmp_path / "vendor-model", config=recipe, device="cpu")
    data = tmp_path / "ds"
    synthetic_data.make_dataset(data, 6, with_rod=True, cohorts=("training", "ExVal", "GenEva"))
    config = StudyConfig.model_validate(
        {
            "data": {"kind": "dataset", "path": str(data)},
            "cohorts": {"pretrain": None},
            "pretrained_model": str(tmp_path / "vendor-model"),
        }
    )
    with pytest.raises(
        StudyError, match=r"vendor model does not contour every structure.*found no Rod"
    ):
        run_study(config, tmp_path / "study", device="cpu")
    assert not (tmp_path / "study" / "models" / "LFT").exists()
