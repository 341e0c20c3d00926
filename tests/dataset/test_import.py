"""`dlas import`: a messy export becomes a clean, de-identified data set; nothing is lost."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dlas.dataset import CaseDataset, ImportOptions, import_source
from dlas.dataset import importer as importer_module
from dlas.errors import DatasetError
from dlas.io import (
    Volume,
    read_ct_series,
    read_mask,
    write_mask,
    write_nifti,
    write_rtstruct,
)
from dlas.structures import StructureSet

RECTAL = StructureSet.builtin("rectal")
IDENTIFIERS = [
    "DOE^JANE",
    "ROE^RICHARD",
    "PID-0001",
    "PID-0002",
    "PID-0003",
    "19600214",
    "19550101",
]


def _masks(shape: tuple[int, int, int], names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for n, name in enumerate(names):
        mask = np.zeros(shape, dtype=bool)
        if name != "Empty_ROI":
            mask[1 + n % 3 : 6, 4 + 3 * n : 7 + 3 * n, 5:15] = True
        out[name] = mask
    return out


@pytest.fixture
def export(synthetic_ct, tmp_path: Path) -> Path:
    """A planning-system export: two scanners, two naming habits, junk and a broken series."""
    root = tmp_path / "export"
    patients = [
        (
            "a",
            dict(
                patient_name="DOE^JANE",
                patient_id="PID-0001",
                patient_sex="F",
                patient_birth_date="19600214",
                study_date="20210310",
                manufacturer="SIEMENS",
                manufacturer_model_name="Sensation Open",
                kvp=120,
            ),
            ["CTV_Rectum", "Femur_Head_L", "Bladder", "PTV_50"],
        ),
        (
            "b",
            dict(
                patient_name="ROE^RICHARD",
                patient_id="PID-0002",
                patient_sex="M",
                patient_birth_date="19550101",
                study_date="20230215",
                manufacturer="Philips",
                manufacturer_model_name="Big Bore",
                kvp=120,
            ),
            ["CTV", "FemoralHead L", "Bowel_Small", "Empty_ROI"],
        ),
    ]
    for name, spec, roi_names in patients:
        folder, _, _ = synthetic_ct(name=f"export/{name}/ct", **spec)
        ct = read_ct_series(folder)
        masks = _masks(ct.volume.shape, roi_names)
        write_rtstruct(
            masks,
            ct,
            root / name / "RS.dcm",
            generation="MANUAL",
            timestamp=dt.datetime(2024, 1, 1),
            uid_seed=name,
        )
    # a series with a missing slice, whose RTSTRUCT therefore cannot be used either
    folder, files, _ = synthetic_ct(
        name="export/c/ct", patient_id="PID-0003", study_date="20220601"
    )
    files[4].unlink()
    (root / "notes.txt").write_text("exported by the TPS")
    return root


def _all_text(root: Path) -> str:
    chunks = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".md"):
            chunks.append(path.read_text())
    return "\n".join(chunks)


def test_import_maps_names_and_reports_everything(export: Path, tmp_path: Path) -> None:
    report = import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert len(report.imported) == 2
    (skipped,) = report.skipped
    assert "missing slice" in skipped.reason and skipped.source == "c/ct"
    reasons = {s.reason for s in report.skipped_files}
    assert "not a DICOM file" in reasons
    assert any("RTSTRUCT whose CT series" in r for r in reasons) is False  # c has no RTSTRUCT
    assert report.unmatched_names() == {"PTV_50": 1, "Empty_ROI": 1}
    assert report.warning_counts()["empty-roi"] == 1

    dataset = CaseDataset.open(tmp_path / "ds")
    assert len(dataset) == 2
    structures = sorted(s for record in dataset.cases for s in record.structures)
    assert structures == ["Bladder", "Bowel_Small", "CTV", "CTV", "Femur_Head_L", "Femur_Head_L"]
    for record in dataset.cases:
        case = dataset.load_case(record.case_id)
        info = case.info
        for canonical, entry in info["structures"].items():
            assert RECTAL.match(entry["original_name"]) == canonical
            assert case.structures[canonical].array.sum() == entry["voxels"]
        assert info["scanner"]["KVP"] == 120.0
        assert info["patient"]["sex"] in ("F", "M")
    saved = json.loads((tmp_path / "ds" / "import-report.json").read_text())
    assert saved["counts"] == {
        "imported": 2,
        "already_present": 0,
        "skipped_cases": 1,
        "skipped_files": 1,
    }


def test_import_output_holds_no_patient_identifiers(export: Path, tmp_path: Path) -> None:
    import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    text = _all_text(tmp_path / "ds")
    for identifier in IDENTIFIERS:
        assert identifier not in text
    dataset = CaseDataset.open(tmp_path / "ds")
    dates = [dataset.case_info(c)["source"]["study_date"] for c in dataset.case_ids()]
    assert "20210310" not in dates and "20230215" not in dates
    # one shift for the whole data set: the interval between the two studies survives
    d = sorted(dt.datetime.strptime(x, "%Y%m%d") for x in dates)
    assert (d[1] - d[0]).days == (dt.date(2023, 2, 15) - dt.date(2021, 3, 10)).days
    ages = sorted(dataset.case_info(c)["patient"]["age_years"] for c in dataset.case_ids())
    assert ages == [61, 68]


def test_case_ids_are_stable_pseudonyms(export: Path, tmp_path: Path) -> None:
    first = import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    again = import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert [i.case_id for i in first.imported] == [
        i.case_id for i in again.items if i.status == "exists"
    ]
    other = import_source(export, tmp_path / "ds2", ImportOptions(structure_set=RECTAL))
    # another data set has another key: its pseudonyms cannot be linked to the first
    assert {i.case_id for i in other.imported}.isdisjoint({i.case_id for i in first.imported})


def test_keep_ids_and_keep_unmapped(export: Path, tmp_path: Path) -> None:
    options = ImportOptions(structure_set=RECTAL, keep_ids=True, keep_unmapped=True)
    import_source(export, tmp_path / "ds", options)
    dataset = CaseDataset.open(tmp_path / "ds")
    assert dataset.case_ids() == ["PID-0001", "PID-0002"]
    extra = tmp_path / "ds" / "cases" / "PID-0001" / "structures" / "PTV_50.nii.gz"
    assert read_mask(extra).array.any()
    assert dataset.record("PID-0001").structures == ("CTV", "Bladder", "Femur_Head_L")
    assert dataset.case_info("PID-0001")["source"]["study_date"] == "20210310"


@pytest.mark.parametrize(
    ("rule", "cohorts"),
    [
        ("none", {"all": 2}),
        ("scanner", {"Philips-Big-Bore": 1, "SIEMENS-Sensation-Open": 1}),
        ("date", {"2021": 1, "2023": 1}),
        ("date:2022-11-01", {"before-2022-11-01": 1, "from-2022-11-01": 1}),
        ("date:2020-01-01,2022-11-01", {"2020-01-01-to-2022-11-01": 1, "from-2022-11-01": 1}),
    ],
)
def test_cohorts(export: Path, tmp_path: Path, rule: str, cohorts: dict[str, int]) -> None:
    import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL, cohort_by=rule))
    dataset = CaseDataset.open(tmp_path / "ds")
    assert {k: len(v) for k, v in dataset.cohorts().items()} == cohorts


def test_cohorts_from_csv(export: Path, tmp_path: Path) -> None:
    table = tmp_path / "cohorts.csv"
    table.write_text("folder,cohort\na/ct,training\n")
    report = import_source(
        export, tmp_path / "ds", ImportOptions(structure_set=RECTAL, cohort_by=f"csv:{table}")
    )
    assert [i.cohort for i in report.imported] == ["training"]
    assert any("not listed in the cohort file" in i.reason for i in report.skipped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("folder,group\na,b\n", "wrong columns"),
        ("patient_id,cohort\nPID-1,\n", "empty cell"),
        ("patient_id,cohort\nPID-1,a\nPID-1,b\n", "listed twice"),
        ("patient_id,cohort\nPID-1,a b\n", "invalid cohort name"),
    ],
)
def test_malformed_cohort_csv_is_refused(
    export: Path, tmp_path: Path, text: str, message: str
) -> None:
    table = tmp_path / "cohorts.csv"
    table.write_text(text)
    with pytest.raises(DatasetError, match=message):
        import_source(
            export, tmp_path / "ds", ImportOptions(structure_set=RECTAL, cohort_by=f"csv:{table}")
        )
    assert not (tmp_path / "ds").exists()


def test_unknown_cohort_rule_is_refused(export: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown --cohort-by rule"):
        import_source(
            export, tmp_path / "ds", ImportOptions(structure_set=RECTAL, cohort_by="site")
        )


def test_empty_source_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no CT found to import.*an empty folder"):
        import_source(tmp_path / "empty", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert not (tmp_path / "ds").exists()


def test_data_set_of_another_structure_set_is_refused(export: Path, tmp_path: Path) -> None:
    import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    other = StructureSet.from_data({"name": "other", "structures": [{"name": "Bladder"}]})
    with pytest.raises(DatasetError, match="data set uses another structure set"):
        import_source(export, tmp_path / "ds", ImportOptions(structure_set=other))


def test_failed_case_leaves_nothing_half_written(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_source(export / "a", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    before = (tmp_path / "ds" / "dataset.json").read_text()
    calls = {"n": 0}
    real = importer_module.CaseDataset.write_case

    def flaky_write_mask(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return write_mask(*args, **kwargs)

    monkeypatch.setattr("dlas.dataset.layout.write_mask", flaky_write_mask)
    with pytest.raises(OSError, match="disk full"):
        real(
            CaseDataset.open(tmp_path / "ds"),
            "new-case",
            "all",
            read_ct_series(export / "b" / "ct").volume,
            {
                "CTV": read_ct_series(export / "b" / "ct").volume.with_array(
                    np.ones((10, 32, 32), bool)
                )
            },
            {},
            extra_masks={
                "X": read_ct_series(export / "b" / "ct").volume.with_array(
                    np.ones((10, 32, 32), bool)
                )
            },
        )
    cases = sorted(p.name for p in (tmp_path / "ds" / "cases").iterdir())
    assert len(cases) == 1 and not cases[0].startswith(".")  # no new case, no temporary folder
    assert (tmp_path / "ds" / "dataset.json").read_text() == before


def test_two_rois_of_one_structure_are_not_merged(synthetic_ct, tmp_path: Path) -> None:
    folder, _, _ = synthetic_ct(name="src/ct")
    ct = read_ct_series(folder)
    masks = _masks(ct.volume.shape, ["Bladder", "bladder ", "CTV"])
    write_rtstruct(masks, ct, tmp_path / "src" / "RS.dcm", generation="MANUAL")
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    (item,) = report.imported
    assert item.structures == ["CTV"]
    assert any(
        w["code"] == "duplicate-structure" and "none of them" in w["message"] for w in item.warnings
    )


def test_ambiguous_name_mapping_skips_the_case(synthetic_ct, tmp_path: Path) -> None:
    folder, _, _ = synthetic_ct(name="src/ct")
    ct = read_ct_series(folder)
    write_rtstruct(
        _masks(ct.volume.shape, ["Bowel"]), ct, tmp_path / "src" / "RS.dcm", generation="MANUAL"
    )
    greedy = StructureSet.from_data(
        {
            "name": "greedy",
            "structures": [
                {"name": "Bowel_Small", "patterns": ["bowel.*"]},
                {"name": "Bowel_Large", "patterns": [".*bowel"]},
            ],
        }
    )
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=greedy))
    assert "ambiguous structure name" in report.skipped[0].reason
    assert "Bowel_Large and Bowel_Small" in report.skipped[0].reason


def test_rtstruct_of_another_frame_of_reference_skips_the_case(
    synthetic_ct, tmp_path: Path
) -> None:
    folder, _, _ = synthetic_ct(name="src/ct")
    ct = read_ct_series(folder)
    path = tmp_path / "src" / "RS.dcm"
    write_rtstruct(_masks(ct.volume.shape, ["CTV"]), ct, path, generation="MANUAL")
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(path)
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert "another frame of reference" in report.skipped[0].reason


def test_rtstruct_without_its_ct_is_reported(export: Path, tmp_path: Path) -> None:
    shutil.rmtree(export / "b" / "ct")
    report = import_source(export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert any(
        "RTSTRUCT whose CT series is not in the source" in s.reason for s in report.skipped_files
    )


def _nifti_case(root: Path, name: str, ct: np.ndarray, masks: dict[str, Volume]) -> None:
    volume = Volume(ct, spacing=(2.5, 3.9, 3.9), origin=(0, 0, 0))
    write_nifti(volume, root / name / "ct.nii.gz")
    for structure, mask in masks.items():
        write_mask(mask, root / name / "structures" / f"{structure}.nii.gz")


def test_nifti_cases_import(tmp_path: Path) -> None:
    grid = Volume(np.zeros((6, 8, 8)), spacing=(2.5, 3.9, 3.9), origin=(0, 0, 0))
    mask = np.zeros((6, 8, 8), bool)
    mask[2:4, 2:5, 3:6] = True
    _nifti_case(
        tmp_path / "src",
        "pt_1",
        np.full((6, 8, 8), 30.0),
        {"Bladder": grid.with_array(mask), "Liver": grid.with_array(mask)},
    )
    report = import_source(
        tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL, keep_ids=True)
    )
    assert report.imported[0].case_id == "pt_1"
    assert report.imported[0].unmatched == ["Liver"]
    case = CaseDataset.open(tmp_path / "ds").load_case("pt_1")
    np.testing.assert_array_equal(case.structures["Bladder"].array, mask)


def test_nifti_with_nan_is_reported(tmp_path: Path) -> None:
    ct = np.zeros((6, 8, 8), dtype=np.float32)
    ct[3, 4, 5] = np.nan
    (tmp_path / "src" / "pt_1" / "structures").mkdir(parents=True)
    import nibabel as nib

    nib.save(
        nib.Nifti1Image(ct.transpose(2, 1, 0), np.eye(4)), tmp_path / "src" / "pt_1" / "ct.nii.gz"
    )
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert "NaN" in report.skipped[0].reason


def test_nifti_mask_on_another_grid_is_reported(tmp_path: Path) -> None:
    other = Volume(np.ones((6, 8, 9), bool), spacing=(2.5, 3.9, 3.9), origin=(0, 0, 0))
    _nifti_case(tmp_path / "src", "pt_1", np.zeros((6, 8, 8)), {"Bladder": other})
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert "mask grid differs from the CT grid" in report.skipped[0].reason


def test_two_series_in_one_folder_become_two_cases(synthetic_ct, tmp_path: Path) -> None:
    a, _, _ = synthetic_ct(name="a", patient_id="PID-0001")
    b, _, _ = synthetic_ct(name="b", patient_id="PID-0001", series_number=2)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for folder, prefix in ((a, "A"), (b, "B")):
        for path in folder.iterdir():
            shutil.copy(path, mixed / f"{prefix}{path.name}")
    report = import_source(mixed, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert len(report.imported) == 2
    ids = [i.case_id for i in report.imported]
    assert ids[0].split("-")[0] == ids[1].split("-")[0]  # one patient, two series
    assert all(w["code"] == "no-rtstruct" for i in report.imported for w in i.warnings)


PLANTED = ["ELLISON", "LR270001003", "SMITH^ANNA", "LR270001004", "19481107", "ACC-778899"]


@pytest.fixture
def named_export(synthetic_ct, tmp_path: Path) -> Path:
    """An export whose folders, files, attributes and private tags carry patients' names and
    ids: one good patient, one refused series (missing slice), one truncated copy of the good
    patient's RTSTRUCT in the refused patient's folder."""
    root = tmp_path / "named"
    folder, files, _ = synthetic_ct(
        name="named/ELLISON^NILS_LR270001003/CT_ELLISON",
        patient_name="ELLISON^NILS",
        patient_id="LR270001003",
        patient_birth_date="19481107",
    )
    renamed = []
    for k, path in enumerate(sorted(files)):
        header = pydicom.dcmread(path)
        header.AccessionNumber = "ACC-778899"
        header.OtherPatientIDs = "LR270001003"
        block = header.private_block(0x0011, "ACME HIS", create=True)
        block.add_new(0x01, "LO", "ELLISON^NILS LR270001003")
        target = path.with_name(f"LR270001003_CT_{k:03d}.dcm")
        header.save_as(target)
        path.unlink()
        renamed.append(target)
    ct = read_ct_series(folder)
    write_rtstruct(
        _masks(ct.volume.shape, ["CTV", "Bladder"]),
        ct,
        folder.parent / "RS_ELLISON_LR270001003.dcm",
        generation="MANUAL",
        timestamp=dt.datetime(2024, 1, 1),
        uid_seed="ellison",
    )
    _, files, _ = synthetic_ct(
        name="named/SMITH^ANNA_LR270001004/ct",
        patient_name="SMITH^ANNA",
        patient_id="LR270001004",
        patient_birth_date="19481107",
    )
    files[4].unlink()
    rs = root / "SMITH^ANNA_LR270001004" / "RS_LR270001004.dcm"
    rs.write_bytes((folder.parent / "RS_ELLISON_LR270001003.dcm").read_bytes()[:600])
    return root


def _all_bytes(root: Path) -> bytes:
    import gzip

    chunks = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            chunks.append(gzip.decompress(data) if path.name.endswith(".gz") else data)
    return b"\n".join(chunks)


def test_refused_case_reason_and_fingerprints_name_no_patient(
    named_export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: folder and file names, UIDs and identifying attributes of refused and
    imported cases never reach a de-identified data set or the log; fingerprints are keyed."""
    import hashlib
    import logging

    uids = set()
    for path in named_export.rglob("*.dcm"):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the truncated RTSTRUCT
            continue
        for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"):
            if keyword in header:
                uids.add(str(header.get(keyword)))
    caplog.set_level(logging.DEBUG)
    report = import_source(named_export, tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert len(report.imported) == 1 and len(report.skipped) == 1
    (refused,) = report.skipped
    # still says what is wrong, and where in pseudonymous terms
    assert "missing slice" in refused.reason and f"case {refused.case_id}" in refused.reason
    stored = _all_bytes(tmp_path / "ds") + caplog.text.encode()
    for secret in [*PLANTED, *uids]:
        assert secret.encode() not in stored, secret
    saved = json.loads((tmp_path / "ds" / "import-report.json").read_text())
    assert len(saved["skipped_files"]) == 1  # the truncated copy of the RTSTRUCT
    # no bare hash of a folder name: that is reversed by trying candidate patient ids
    for folder in ("ELLISON^NILS_LR270001003/CT_ELLISON", "SMITH^ANNA_LR270001004/ct"):
        assert hashlib.sha256(folder.encode()).hexdigest()[:12].encode() not in stored
    other = import_source(named_export, tmp_path / "ds2", ImportOptions(structure_set=RECTAL))
    again = json.loads((tmp_path / "ds2" / "import-report.json").read_text())
    assert {c["source"] for c in saved["cases"]}.isdisjoint({c["source"] for c in again["cases"]})
    assert len(other.imported) == 1
