"""Contour sets: the clinical, the vendor model's and a second observer's contours of one CT."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dlas.dataset import CaseDataset, ContourSetRule, ContourSetRules, ImportOptions, import_source
from dlas.dataset.inspect import inspect_path
from dlas.errors import DatasetError, EvaluationError
from dlas.evaluation import compute_metrics, evaluate, parse_prediction
from dlas.io import read_ct_series, read_mask, write_rtstruct
from dlas.io.rtstruct import AlgorithmIdentification
from dlas.structures import StructureSet

RECTAL = StructureSet.builtin("rectal")
NAMES = {"clinical": "CTV_Rectum", "VPM": "CTV", "observer2": "ctv"}
RULES = ["clinical=approved", "VPM=manufacturer:rt-mind"]


def _ctv(shape: tuple[int, int, int], shift: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[2:8, 10 + shift : 20 + shift, 8:22] = True
    return mask


def _bladder(shape: tuple[int, int, int], grow: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[3:7, 4 - grow : 9 + grow, 12:18] = True
    return mask


def _restamp(path: Path, **attributes: str) -> None:
    ds = pydicom.dcmread(path)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.fixture
def export(synthetic_ct, tmp_path: Path) -> Path:
    """Two patients; each CT has the approved clinical RTSTRUCT and the vendor model's
    unapproved one (CTV shifted by 2 voxels, bladder grown); patient a also an older
    clinical draft (unapproved, from the TPS) that no rule but 'unapproved' would take."""
    root = tmp_path / "export"
    for name, pid in (("a", "PID-0001"), ("b", "PID-0002")):
        folder, _, _ = synthetic_ct(name=f"export/{name}/ct", patient_id=pid)
        ct = read_ct_series(folder)
        shape = ct.volume.shape
        write_rtstruct(
            {"CTV_Rectum": _ctv(shape, 0), "Bladder": _bladder(shape, 0)},
            ct,
            root / name / "RS_clinical.dcm",
            generation="MANUAL",
            timestamp=dt.datetime(2024, 1, 2),
            uid_seed=f"{name}-clinical",
        )
        _restamp(
            root / name / "RS_clinical.dcm",
            ApprovalStatus="APPROVED",
            Manufacturer="Varian Medical Systems",
            StructureSetLabel="Clinical",
        )
        write_rtstruct(
            {"CTV": _ctv(shape, 2), "Urinary bladder": _bladder(shape, 1)},
            ct,
            root / name / "RS_vendor.dcm",
            generation="AUTOMATIC",
            algorithm=AlgorithmIdentification("RT-Mind pelvis", "2.1"),
            timestamp=dt.datetime(2024, 1, 1),
            uid_seed=f"{name}-vendor",
        )
        _restamp(root / name / "RS_vendor.dcm", Manufacturer="RT-Mind-AI Ltd")
    return root


def _import(export: Path, root: Path, rules: list[str] = RULES, **kw: object) -> object:
    options = ImportOptions(
        structure_set=RECTAL,
        contour_sets=ContourSetRules.from_options(rules, "clinical"),
        **kw,  # type: ignore[arg-type]
    )
    return import_source(export, root, options)


def test_every_object_lands_in_its_set(export: Path, tmp_path: Path) -> None:
    report = _import(export, tmp_path / "ds")
    assert len(report.imported) == 2 and not report.skipped_files  # type: ignore[attr-defined]
    dataset = CaseDataset.open(tmp_path / "ds")
    assert dataset.reference_set == "clinical"
    assert dataset.contour_sets() == {"VPM": 2}
    for case_id in dataset.case_ids():
        record = dataset.record(case_id)
        assert record.structures == ("CTV", "Bladder")
        assert record.sets == {"VPM": ("CTV", "Bladder")}
        clinical = dataset.load_case(case_id)
        vendor = dataset.load_case(case_id, contour_set="VPM")
        shape = clinical.ct.shape
        assert np.array_equal(clinical.structures["CTV"].array, _ctv(shape, 0))
        assert np.array_equal(vendor.structures["CTV"].array, _ctv(shape, 2))
        assert np.array_equal(vendor.structures["Bladder"].array, _bladder(shape, 1))
        info = dataset.case_info(case_id)
        sets = info["contour_sets"]
        assert info["reference_set"] == "clinical"
        assert sets["VPM"]["object"]["manufacturer"] == "RT-Mind-AI Ltd"
        assert sets["VPM"]["object"]["approved"] is False
        assert sets["VPM"]["rule"] == "manufacturer:rt-mind"
        assert sets["VPM"]["structures"]["Bladder"]["original_name"] == "Urinary bladder"
        assert sets["clinical"]["object"]["approved"] is True
        assert sets["VPM"]["object"]["sop"].startswith("hmac:")
    saved = json.loads((tmp_path / "ds" / "import-report.json").read_text())
    entry = saved["cases"][0]["contour_sets"]
    assert set(entry) == {"clinical", "VPM"}
    assert entry["VPM"]["structures"] == ["CTV", "Bladder"]
    text = "".join(p.read_text() for p in (tmp_path / "ds").rglob("*.json"))
    for identifier in ("DOE^JANE", "PID-0001", "PID-0002", "19600214"):
        assert identifier not in text


def test_default_import_is_unchanged_and_takes_the_approved_rtstruct(
    export: Path, tmp_path: Path
) -> None:
    report = import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    dataset = CaseDataset.open(tmp_path / "ds")
    assert dataset.reference_set == "reference" and dataset.contour_sets() == {}
    assert "reference_set" not in json.loads((tmp_path / "ds" / "dataset.json").read_text())["meta"]
    reasons = [s.reason for s in report.skipped_files]
    assert reasons == ["another RTSTRUCT of the same series was preferred (approved or newer)"] * 2
    case_id = dataset.case_ids()[0]
    case = dataset.load_case(case_id)
    assert np.array_equal(case.structures["CTV"].array, _ctv(case.ct.shape, 0))
    assert "contour_sets" not in dataset.case_info(case_id)


def test_an_object_matching_two_rules_stops_the_import_before_writing(
    export: Path, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError) as info:
        _import(export, tmp_path / "ds", ["clinical=any", "VPM=manufacturer:rt-mind"])
    assert info.value.what == "a contour object matches the rules of two sets"
    assert "clinical, VPM" in str(info.value.found)
    assert not (tmp_path / "ds").exists()


def test_a_rule_matching_nothing_is_an_error(export: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        _import(export, tmp_path / "ds", [*RULES, "observer2=kind:seg"])
    assert info.value.what == "a contour-set rule matches no RTSTRUCT or SEG in the source"
    assert "observer2=kind:seg" in str(info.value.where)
    assert "RT-Mind-AI Ltd" in str(info.value.found)  # what the objects do carry
    assert not (tmp_path / "ds").exists()


def test_objects_matching_no_rule_are_listed_as_unused(export: Path, tmp_path: Path) -> None:
    report = _import(export, tmp_path / "ds", ["clinical=approved"])
    reasons = [s.reason for s in report.skipped_files]  # type: ignore[attr-defined]
    assert (
        reasons
        == [
            "matches no --contour-set rule: rtstruct, manufacturer 'RT-Mind-AI Ltd', "
            "model 'dlas', not approved"
        ]
        * 2
    )
    assert CaseDataset.open(tmp_path / "ds").contour_sets() == {}
    # the stored report holds neither the object's free-text label nor its real date
    saved = (tmp_path / "ds" / "import-report.json").read_text()
    assert "20240101" not in saved and "matches no --contour-set rule" in saved


@pytest.mark.parametrize(
    ("spec", "found"),
    [
        ("VPM", "'VPM'"),
        ("VPM=", "'VPM='"),
        ("V PM=any", "set name 'V PM'"),
        ("VPM=vendor:x", "condition 'vendor:x'"),
        ("VPM=manufacturer:", "condition 'manufacturer:'"),
        ("VPM=date:2024", "condition 'date:2024'"),
        ("VPM=kind:rtdose", "condition 'kind:rtdose'"),
    ],
)
def test_malformed_rules_are_refused(spec: str, found: str) -> None:
    with pytest.raises(DatasetError) as info:
        ContourSetRule.parse(spec)
    assert info.value.what == "cannot read the contour-set rule"
    assert info.value.found == found


def test_rule_conditions() -> None:
    ds = pydicom.Dataset()
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "RT-Mind-AI Ltd"
    ds.StructureSetLabel = "AI contours"
    ds.StructureSetDate = "20240315"
    ds.ApprovalStatus = "UNAPPROVED"
    assert ContourSetRule.parse("x=manufacturer:rt-mind,label:AI").matches(ds)
    assert ContourSetRule.parse("x=unapproved,kind:rtstruct,date:20240101-20241231").matches(ds)
    assert ContourSetRule.parse("x=date:20240315").matches(ds)
    assert not ContourSetRule.parse("x=date:20240316-20240401").matches(ds)
    assert not ContourSetRule.parse("x=approved").matches(ds)
    assert not ContourSetRule.parse("x=manufacturer:rt-mind,kind:seg").matches(ds)


def test_reference_set_must_be_explicit_and_named_by_a_rule() -> None:
    with pytest.raises(DatasetError, match="which contour set is the reference is not given"):
        ContourSetRules.from_options(RULES, None)
    with pytest.raises(DatasetError, match="reference set has no rule"):
        ContourSetRules.from_options(RULES, "observer2")
    with pytest.raises(DatasetError, match="contour set named twice"):
        ContourSetRules.from_options(["a=any", "a=approved"], "a")
    with pytest.raises(DatasetError, match="reference set named but no contour-set rules"):
        ContourSetRules.from_options([], "clinical")


def test_a_data_set_keeps_its_reference_set(export: Path, tmp_path: Path) -> None:
    import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    with pytest.raises(DatasetError) as info:
        _import(export, tmp_path / "ds")
    assert info.value.what == "data set has another reference contour set"
    assert "--reference-set reference" in str(info.value.expected)


def test_inspect_shows_which_set_each_object_joins(export: Path) -> None:
    rules = [ContourSetRule.parse(r) for r in RULES]
    data = inspect_path(export / "a", RECTAL, rules=rules)
    joins = {e["file"]: e["contour_set"] for e in data["rtstructs"]}
    assert joins == {"RS_clinical.dcm": "clinical", "RS_vendor.dcm": "VPM"}
    describe = {e["file"]: e["describe"] for e in data["rtstructs"]}
    assert "manufacturer 'RT-Mind-AI Ltd'" in describe["RS_vendor.dcm"]
    assert "not approved" in describe["RS_vendor.dcm"]


def test_evaluate_a_contour_set_against_the_reference(export: Path, tmp_path: Path) -> None:
    _import(export, tmp_path / "ds")
    dataset = CaseDataset.open(tmp_path / "ds")
    result = evaluate(dataset, [parse_prediction("VPM", dataset)])
    table = result.table
    assert set(table["model"]) == {"VPM"} and len(table) == 4
    # independent: the metric kernel on the masks written by this test
    shape = dataset.load_case(dataset.case_ids()[0]).ct.shape
    spacing = dataset.load_case(dataset.case_ids()[0]).ct.spacing
    expected = compute_metrics(_ctv(shape, 0), _ctv(shape, 2), spacing).dsc
    assert np.allclose(table.loc[table["structure"] == "CTV", "dsc"], expected)
    assert result.metadata["reference"]["contour_set"] == "clinical"
    assert result.metadata["predictions"]["VPM"]["contour_set"] == "VPM"


def test_evaluate_against_another_set_equals_the_swapped_pairs(
    export: Path, tmp_path: Path
) -> None:
    _import(export, tmp_path / "ds")
    dataset = CaseDataset.open(tmp_path / "ds")
    # clinical masks as a prediction folder, measured against the vendor's set
    pred = tmp_path / "pred"
    for case_id in dataset.case_ids():
        target = pred / case_id / "structures"
        target.mkdir(parents=True)
        for name in ("CTV", "Bladder"):
            src = dataset.case_dir(case_id) / "structures" / f"{name}.nii.gz"
            (target / f"{name}.nii.gz").write_bytes(src.read_bytes())
    forward = evaluate(dataset, [parse_prediction("VPM", dataset)]).table
    backward = evaluate(dataset, [parse_prediction(f"clinical={pred}")], reference_set="VPM").table
    assert np.allclose(forward["dsc"], backward["dsc"])  # DSC is symmetric
    assert np.allclose(forward["sensitivity"][forward["structure"] == "Bladder"], 1.0)
    assert not np.allclose(backward["sensitivity"][backward["structure"] == "Bladder"], 1.0)
    with pytest.raises(EvaluationError, match="contour set is both reference and prediction"):
        evaluate(dataset, [parse_prediction("VPM", dataset)], reference_set="VPM")
    with pytest.raises(EvaluationError, match="no such contour set in the data set"):
        evaluate(dataset, [parse_prediction("VPM", dataset)], reference_set="observer9")


def test_set_masks_match_their_files(export: Path, tmp_path: Path) -> None:
    _import(export, tmp_path / "ds")
    dataset = CaseDataset.open(tmp_path / "ds")
    case_id = dataset.case_ids()[0]
    folder = dataset.set_dir(case_id, "VPM") / "structures"
    assert folder == tmp_path / "ds" / "cases" / case_id / "sets" / "VPM" / "structures"
    info = dataset.case_info(case_id)["contour_sets"]["VPM"]["structures"]
    for name, entry in info.items():
        assert read_mask(folder / f"{name}.nii.gz").array.sum() == entry["voxels"]
        assert entry["file"] == f"sets/VPM/structures/{name}.nii.gz"


def test_a_second_observers_seg_becomes_its_own_set(export: Path, tmp_path: Path) -> None:
    """A DICOM SEG of another clinician (written by the project's own SEG writer from a
    perturbed mask) is imported as set observer2 through the SEG reader."""
    from dlas.io.seg import write_seg

    for name in ("a", "b"):
        ct = read_ct_series(export / name / "ct")
        shape = ct.volume.shape
        write_seg(
            {"CTV": _ctv(shape, -1), "Bladder": _bladder(shape, 0)},
            ct,
            export / name / "SEG_observer2.dcm",
            generation="MANUAL",
            algorithm=None,
            structure_set=RECTAL,
            uid_seed=f"{name}-observer2",
        )
    report = _import(export, tmp_path / "ds", [*RULES, "observer2=kind:seg"])
    assert not report.skipped_files  # type: ignore[attr-defined]
    dataset = CaseDataset.open(tmp_path / "ds")
    assert dataset.contour_sets() == {"VPM": 2, "observer2": 2}
    case_id = dataset.case_ids()[0]
    observer = dataset.load_case(case_id, contour_set="observer2")
    shape = observer.ct.shape
    assert np.array_equal(observer.structures["CTV"].array, _ctv(shape, -1))
    assert dataset.case_info(case_id)["contour_sets"]["observer2"]["object"]["kind"] == "seg"
    # without rules a SEG is listed as not read, never silently dropped
    plain = import_source(export, tmp_path / "plain", ImportOptions(structure_set=RECTAL))
    reasons = [s.reason for s in plain.skipped_files]
    assert (
        sum(r.startswith("DICOM SEG (not read without --contour-set rules)") for r in reasons) == 2
    )


def test_cli_import_with_rules_and_its_one_line_errors(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlas.cli import main

    base = ["import", str(export), str(tmp_path / "ds")]
    rules = ["--contour-set", "clinical=approved", "--contour-set", "VPM=manufacturer:rt-mind"]
    assert (
        main([*base, *rules, "--contour-set", "VPM=vendor:x", "--reference-set", "clinical"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the contour-set rule" in err
    assert main([*base, *rules]) == 2
    assert "which contour set is the reference is not given" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    assert main([*base, *rules, "--reference-set", "clinical"]) == 0
    out = capsys.readouterr().out
    assert "contour sets (cases): VPM (2), clinical (2)" in out
    assert main(["inspect", str(tmp_path / "ds")]) == 0
    assert "reference contour set: clinical; other sets (cases): VPM (2)" in capsys.readouterr().out


def test_a_set_on_another_frame_of_reference_refuses_the_case(export: Path, tmp_path: Path) -> None:
    """A vendor SEG that claims another frame of reference than its CT is not placed by guess:
    the case is refused with the reader's reason, the other case imports."""
    from dlas.io.seg import write_seg

    for name in ("a", "b"):
        ct = read_ct_series(export / name / "ct")
        path = export / name / "SEG_observer2.dcm"
        write_seg(
            {"CTV": _ctv(ct.volume.shape, -1)},
            ct,
            path,
            generation="MANUAL",
            algorithm=None,
            structure_set=RECTAL,
            uid_seed=f"{name}-observer2",
        )
        if name == "a":
            ds = pydicom.dcmread(path)
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
            ds.save_as(path)
    report = _import(export, tmp_path / "ds", [*RULES, "observer2=kind:seg"])
    (refused,) = report.skipped  # type: ignore[attr-defined]
    assert "frame of reference" in refused.reason.lower()
    assert len(report.imported) == 1  # type: ignore[attr-defined]


def test_evaluate_refuses_sets_it_cannot_use(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlas.cli import main
    from dlas.evaluation import PredictionSource

    _import(export, tmp_path / "ds")
    _import(export, tmp_path / "other")
    dataset = CaseDataset.open(tmp_path / "ds")
    foreign = PredictionSource("VPM", tmp_path / "other", contour_set="VPM")
    with pytest.raises(EvaluationError, match="contour set of another data set"):
        evaluate(dataset, [foreign])
    # a set that some selected cases lack
    lacking = tmp_path / "lacking"
    import shutil

    shutil.copytree(tmp_path / "ds", lacking)
    case_id = dataset.case_ids()[0]
    shutil.rmtree(lacking / "cases" / case_id / "sets" / "VPM")
    with pytest.raises(EvaluationError) as info:
        evaluate(lacking, [PredictionSource("VPM", lacking, contour_set="VPM")])
    assert info.value.what == "contour set missing for some cases"
    # no --prediction and no set besides the reference
    plain = tmp_path / "plain"
    import_source(export, plain, ImportOptions(structure_set=RECTAL))
    code = main(["evaluate", "--reference", str(plain), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "no prediction given" in err and err.count("\n") == 1
