"""Generating cohorts: determinism, independence of patients, DICOM and data-set output, import."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from dlas.dataset import CaseDataset, ImportOptions, import_source
from dlas.io import read_ct_series, read_rtstruct
from dlas.phantom import (
    PhantomError,
    generate,
    make_case,
    make_patient,
    parse_cohort_counts,
    preset,
    validate_config,
)
from dlas.phantom.styles import LOCAL, STRUCTURES, VENDOR
from dlas.structures import StructureSet

RECTAL = StructureSet.builtin("rectal")
ONE_EACH = {"vendor": 1, "training": 1, "ExVal": 1, "GenEva": 1}
Replica = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    """The demo preset with one patient per cohort, written as DICOM."""
    out = tmp_path_factory.mktemp("phantom") / "replica"
    manifest = generate(out, preset("demo").with_counts(ONE_EACH))
    return out, manifest


def test_same_seed_gives_identical_pixels_and_masks() -> None:
    config = preset("demo")
    a = make_case(config, "ExVal", 2)
    b = make_case(config, "ExVal", 2)
    assert np.array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.ct.origin, b.ct.origin)
    for name in STRUCTURES:
        assert np.array_equal(a.masks[name], b.masks[name])


def test_different_seeds_give_different_patients() -> None:
    a = make_case(preset("demo"), "ExVal", 0)
    b = make_case(preset("demo").with_seed(1), "ExVal", 0)
    assert not np.array_equal(a.ct.array, b.ct.array)
    assert not np.array_equal(a.masks["CTV"], b.masks["CTV"])


def test_patient_does_not_depend_on_cohort_sizes() -> None:
    small = preset("demo").with_counts({"training": 3, "vendor": 0})
    large = preset("demo").with_counts({"training": 40, "vendor": 100})
    a = make_patient(small, "training", 2)
    b = make_patient(large, "training", 2)
    assert a.anatomy.summary == b.anatomy.summary
    assert a.identity == b.identity
    assert a.uid_seed() == b.uid_seed()


def test_cohorts_are_independent_draws() -> None:
    config = preset("demo")
    summaries = [make_patient(config, name, 0).anatomy.summary for name in ONE_EACH]
    assert len({json.dumps(s, sort_keys=True) for s in summaries}) == len(summaries)


def test_same_anatomy_at_every_resolution() -> None:
    demo = make_patient(preset("demo"), "GenEva", 1)
    paper = make_patient(preset("paper"), "GenEva", 1)
    assert demo.anatomy.summary == paper.anatomy.summary
    assert demo.grid.spacing != paper.grid.spacing
    v_demo = demo.ground_truth()["Bladder"].sum() * np.prod(demo.grid.spacing)
    v_paper = paper.ground_truth()["Bladder"].sum() * np.prod(paper.grid.spacing)
    assert v_demo == pytest.approx(v_paper, rel=0.1)


def test_cohort_scanner_style_and_dates_follow_the_study() -> None:
    config = preset("demo")
    for name, scanners, style in (
        ("vendor", {"V1", "V2"}, "vendor"),
        ("training", {"A"}, "local"),
        ("ExVal", {"A"}, "local"),
        ("GenEva", {"B"}, "local"),
    ):
        for index in range(2):
            p = make_patient(config, name, index)
            assert p.scanner.key in scanners
            assert p.cohort.style == style
            assert p.cohort.start <= p.identity.study.date() <= p.cohort.end
    # Every date of a training patient precedes every ExVal date (cohort periods do not overlap).
    training, exval = config.cohort("training"), config.cohort("ExVal")
    assert training.end < exval.start
    assert config.cohort("GenEva").start >= dt.date(2023, 1, 1)  # after B's commissioning


def test_manifest_lists_every_patient_without_identifiers(replica: Replica) -> None:
    out, manifest = replica
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["seed"] == 0 and manifest["preset"] == "demo"
    assert manifest["config_sha256"] == preset("demo").with_counts(ONE_EACH).sha256()
    assert manifest["software"]["version"]
    assert [p["cohort"] for p in manifest["patients"]] == list(ONE_EACH)
    for p in manifest["patients"]:
        assert {"scanner", "style", "series_uid", "volumes_cm3", "case"} <= set(p)
        folder = out / p["cohort"] / p["case"]
        first = pydicom.dcmread(sorted(folder.glob("CT*.dcm"))[0], stop_before_pixels=True)
        text = json.dumps(manifest)
        for identifier in (
            str(first.PatientName),
            str(first.PatientID),
            str(first.PatientBirthDate),
        ):
            assert identifier not in text


def test_dicom_tags_are_realistic(replica: Replica) -> None:
    out, manifest = replica
    by_cohort = {p["cohort"]: p for p in manifest["patients"]}
    a = pydicom.dcmread(sorted((out / "ExVal" / "ExVal-000").glob("CT*.dcm"))[0])
    b = pydicom.dcmread(sorted((out / "GenEva" / "GenEva-000").glob("CT*.dcm"))[0])
    assert (a.Manufacturer, a.ManufacturerModelName, float(a.KVP)) == (
        "SIEMENS",
        "Sensation Open",
        120.0,
    )
    assert b.Manufacturer == "Philips" and b.ConvolutionKernel == "B"
    assert float(a.PixelSpacing[0]) > float(b.PixelSpacing[0])  # 65 cm vs 60 cm field of view
    assert float(a.SliceThickness) == preset("demo").grid.slice_mm
    assert a.StudyDate[:4] in ("2022", "2023") and b.StudyDate >= "20230201"
    assert a.PatientName and a.PatientID and a.PatientBirthDate and a.PatientSex in ("M", "F")
    assert by_cohort["GenEva"]["scanner"] == "B"


def test_rtstruct_is_manual_with_each_institutions_names(replica: Replica) -> None:
    out, _ = replica
    for cohort, style in (("vendor", VENDOR), ("training", LOCAL)):
        folder = out / cohort / f"{cohort}-000"
        rs = pydicom.dcmread(folder / "RS.dcm")
        names = [roi.ROIName for roi in rs.StructureSetROISequence]
        assert names == [style.roi_names[s] for s in STRUCTURES]
        assert {roi.ROIGenerationAlgorithm for roi in rs.StructureSetROISequence} == {"MANUAL"}
        assert all(RECTAL.match(n) == s for n, s in zip(names, STRUCTURES, strict=True))
    assert VENDOR.roi_names != LOCAL.roi_names


def test_rtstruct_rasterises_back_to_the_generated_masks(replica: Replica) -> None:
    out, _ = replica
    folder = out / "ExVal" / "ExVal-000"
    case = make_case(preset("demo"), "ExVal", 0)
    series = read_ct_series(folder)
    assert np.array_equal(series.volume.array, case.ct.array)
    data = read_rtstruct(folder / "RS.dcm", series)
    for roi in data.rois.values():
        canonical = RECTAL.match(roi.name)
        assert canonical is not None
        truth = case.masks[canonical]
        dsc = 2 * (roi.mask & truth).sum() / (roi.mask.sum() + truth.sum())
        assert dsc >= 0.97, (canonical, dsc)


def test_same_seed_gives_byte_identical_dicom(replica: Replica, tmp_path: Path) -> None:
    out, _ = replica
    again = tmp_path / "again"
    generate(
        again, preset("demo").with_counts({"vendor": 0, "training": 0, "ExVal": 0, "GenEva": 1})
    )
    first = sorted((out / "GenEva" / "GenEva-000").iterdir())
    second = sorted((again / "GenEva" / "GenEva-000").iterdir())
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_import_with_cohorts_csv_reproduces_the_cohorts(replica: Replica, tmp_path: Path) -> None:
    out, manifest = replica
    with (out / "cohorts.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["series_uid"] for r in rows] == [p["series_uid"] for p in manifest["patients"]]
    report = import_source(
        out,
        tmp_path / "ds",
        ImportOptions(structure_set=RECTAL, cohort_by=f"csv:{out / 'cohorts.csv'}"),
    )
    assert len(report.imported) == 4 and not report.unmatched_names()
    dataset = CaseDataset.open(tmp_path / "ds")
    assert {k: len(v) for k, v in dataset.cohorts().items()} == ONE_EACH
    for record in dataset.cases:
        assert set(record.structures) == set(STRUCTURES)


def test_import_by_scanner_separates_the_scanners(replica: Replica, tmp_path: Path) -> None:
    out, _ = replica
    import_source(out, tmp_path / "ds", ImportOptions(structure_set=RECTAL, cohort_by="scanner"))
    cohorts = CaseDataset.open(tmp_path / "ds").cohorts()
    assert len(cohorts["SIEMENS-Sensation-Open"]) == 2
    assert len(cohorts["Philips-Brilliance-Big-Bore"]) == 1


def test_nifti_format_writes_a_dataset(tmp_path: Path) -> None:
    config = preset("demo").with_counts({"vendor": 1, "training": 0, "ExVal": 0, "GenEva": 0})
    manifest = generate(tmp_path / "ds", config, fmt="nifti")
    dataset = CaseDataset.open(tmp_path / "ds")
    assert dataset.cohorts() == {"vendor": ["vendor-000"]}
    case = dataset.load_case("vendor-000")
    expected = make_case(config, "vendor", 0)
    assert np.array_equal(case.ct.array, expected.ct.array)
    for name in STRUCTURES:
        assert np.array_equal(case.structures[name].array != 0, expected.masks[name])
    assert case.info["style"] == "vendor"
    assert case.info["scanner"]["Manufacturer"] in ("GE MEDICAL SYSTEMS", "TOSHIBA")
    assert case.info["structures"]["Femur_Head_L"]["original_name"] == "Femur_Head_L"
    assert (tmp_path / "ds" / "manifest.json").exists()
    assert manifest["format"] == "nifti"


def test_parallel_generation_gives_the_same_data(tmp_path: Path) -> None:
    config = preset("demo").with_counts({"vendor": 0, "training": 2, "ExVal": 0, "GenEva": 0})
    one = generate(tmp_path / "one", config, fmt="nifti")
    two = generate(tmp_path / "two", config, fmt="nifti", workers=2)
    assert one["patients"] == two["patients"]
    a, b = CaseDataset.open(tmp_path / "one"), CaseDataset.open(tmp_path / "two")
    for case_id in a.case_ids():
        ca, cb = a.load_case(case_id), b.load_case(case_id)
        assert np.array_equal(ca.ct.array, cb.ct.array)
        for name in STRUCTURES:
            assert np.array_equal(ca.structures[name].array, cb.structures[name].array)


def test_non_empty_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(PhantomError, match="output folder is not empty"):
        generate(tmp_path, preset("demo").with_counts({"training": 1}))
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_all_empty_cohorts_are_refused(tmp_path: Path) -> None:
    config = preset("demo").with_counts({k: 0 for k in ONE_EACH})
    with pytest.raises(PhantomError, match="nothing to generate"):
        generate(tmp_path / "x", config)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="unknown output format"):
        generate(tmp_path / "x", preset("demo"), fmt="png")  # type: ignore[arg-type]


def test_zero_workers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match="invalid number of workers"):
        generate(tmp_path / "x", preset("demo"), workers=0)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(PhantomError, match="unknown phantom preset"):
        preset("huge")


def test_unknown_cohort_is_refused() -> None:
    with pytest.raises(PhantomError, match="unknown cohort"):
        preset("demo").with_counts({"exval": 3})
    with pytest.raises(PhantomError, match="unknown cohort"):
        make_patient(preset("demo"), "Validation", 0)


def test_malformed_cohort_size_is_refused() -> None:
    with pytest.raises(PhantomError, match="malformed cohort size"):
        parse_cohort_counts(["training:5"], preset("demo"))
    with pytest.raises(PhantomError, match="malformed cohort size"):
        parse_cohort_counts(["training=-1"], preset("demo"))
    assert parse_cohort_counts(["training=5", " GenEva = 2 "], preset("demo")) == {
        "training": 5,
        "GenEva": 2,
    }


def test_negative_patient_index_is_refused() -> None:
    with pytest.raises(PhantomError, match="negative patient index"):
        make_patient(preset("demo"), "training", -1)


def test_negative_seed_is_refused() -> None:
    with pytest.raises(PhantomError, match="seed out of range"):
        preset("demo").with_seed(-3)


def test_invalid_configuration_is_refused() -> None:
    data = preset("demo").to_data()
    assert validate_config(data) == preset("demo")
    data["cohorts"][0]["scanners"] = ["Z9"]
    with pytest.raises(PhantomError, match="invalid phantom configuration"):
        validate_config(data)


def test_written_dicom_passes_dciodvfy(
    replica: Replica, dciodvfy: Callable[[Path], list[str]]
) -> None:
    out, _ = replica
    folder = out / "GenEva" / "GenEva-000"
    for path in (folder / "CT0001.dcm", folder / "RS.dcm"):
        assert dciodvfy(path) == [], path.name


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_interrupted_phantom_leaves_no_replica_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # An interrupted `dlas phantom` left patients (and, as NIfTI, a data set listing them)
    # without manifest.json. Now the replica appears only when complete.
    import sys

    generate_module = sys.modules["dlas.phantom.generate"]
    real_job = generate_module._job
    calls = []

    def job(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_job(*args)

    monkeypatch.setattr(generate_module, "_job", job)
    config = preset("demo").with_counts({"vendor": 1, "training": 1, "ExVal": 0, "GenEva": 0})
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "out", config, fmt=fmt)  # type: ignore[arg-type]
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not any((tmp_path / "out").iterdir())
    monkeypatch.setattr(generate_module, "_job", real_job)
    generate(tmp_path / "out", config, fmt=fmt)  # type: ignore[arg-type]
    assert (tmp_path / "out" / "manifest.json").exists()
