"""Integrity of a data set under the misuses a department will meet: two writers at once, a
second pseudonym key, ids and names that coincide once made safe, a failed first import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlas.dataset import CaseDataset, ImportOptions, import_source
from dlas.dataset.deid import KEY_FILE
from dlas.dataset.layout import writer_lock
from dlas.errors import DatasetError
from dlas.io import Volume, write_mask, write_nifti
from dlas.structures import StructureSet

RECTAL = StructureSet.builtin("rectal")


def _nifti_case(root: Path, name: str, masks: dict[str, np.ndarray] | None = None) -> None:
    grid = Volume(np.full((6, 8, 8), 30.0), spacing=(2.5, 3.9, 3.9), origin=(0, 0, 0))
    write_nifti(grid, root / name / "ct.nii.gz")
    (root / name / "structures").mkdir(parents=True, exist_ok=True)
    for structure, mask in (masks or {}).items():
        write_mask(grid.with_array(mask), root / name / "structures" / f"{structure}.nii.gz")


def _box() -> np.ndarray:
    mask = np.zeros((6, 8, 8), bool)
    mask[2:4, 2:5, 3:6] = True
    return mask


def _source(tmp_path: Path, names: list[str]) -> Path:
    src = tmp_path / "src"
    for name in names:
        _nifti_case(src, name, {"Bladder": _box()})
    return src


def test_second_writer_of_a_data_set_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1", "p2"])
    ds = tmp_path / "ds"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from dlas.dataset.layout import writer_lock\n"
            f"with writer_lock({str(ds)!r}):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatasetError, match="being written by another dlas process"):
            import_source(src, ds, ImportOptions(structure_set=RECTAL))
        assert not (ds / "dataset.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process: the next import goes through.
    report = import_source(src, ds, ImportOptions(structure_set=RECTAL))
    assert len(report.imported) == 2


def test_concurrent_imports_never_lose_a_case_from_dataset_json(tmp_path: Path) -> None:
    # Probe of the issue: two imports at once both exited 0 and left 8 case folders with 4 of
    # them in dataset.json. Now one of them may fail (clearly), but what is on disk is listed.
    src = _source(tmp_path, [f"p{i}" for i in range(6)])
    ds = tmp_path / "ds"
    code = (
        "import sys\n"
        "from dlas.cli import main\n"
        f"sys.exit(main(['--quiet', 'import', {str(src)!r}, {str(ds)!r}]))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    for rc, err in results:
        assert rc in (0, 2), err
        if rc == 2:
            assert "being written by another dlas process" in err
            assert len(err.strip().splitlines()) == 1
    listed = set(CaseDataset.open(ds).case_ids())
    on_disk = {p.name for p in (ds / "cases").iterdir() if not p.name.startswith(".")}
    assert listed == on_disk
    assert len(listed) == 6


def test_lock_is_released_after_an_import(tmp_path: Path) -> None:
    import_source(_source(tmp_path, ["p1"]), tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    with writer_lock(tmp_path / "ds"):
        pass


def test_second_pseudonym_key_is_refused(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1", "p2"])
    ds = tmp_path / "ds"
    import_source(src, ds, ImportOptions(structure_set=RECTAL))
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    with pytest.raises(DatasetError, match="pseudonym key does not belong to this data set"):
        import_source(src, ds, ImportOptions(structure_set=RECTAL, key_file=str(other)))
    # With the second key the same two patients would have come back as two new cases.
    assert len(CaseDataset.open(ds)) == 2


def test_missing_key_of_a_data_set_is_refused_not_recreated(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1"])
    ds = tmp_path / "ds"
    import_source(src, ds, ImportOptions(structure_set=RECTAL))
    (ds / KEY_FILE).unlink()
    with pytest.raises(DatasetError, match="the data set's pseudonym key is missing"):
        import_source(src, ds, ImportOptions(structure_set=RECTAL))
    assert not (ds / KEY_FILE).exists()


def test_external_key_binds_the_data_set(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1"])
    key = tmp_path / "site.key"
    key.write_text("cd" * 32 + "\n")
    ds = tmp_path / "ds"
    first = import_source(src, ds, ImportOptions(structure_set=RECTAL, key_file=str(key)))
    again = import_source(src, ds, ImportOptions(structure_set=RECTAL, key_file=str(key)))
    assert again.items[0].status == "exists"
    assert again.items[0].case_id == first.items[0].case_id
    with pytest.raises(DatasetError, match="the data set's pseudonym key is missing"):
        import_source(src, ds, ImportOptions(structure_set=RECTAL))


def test_keep_ids_patient_ids_that_collide_after_sanitising_are_both_kept(
    synthetic_ct, tmp_path: Path
) -> None:
    # PatientIDs 12/34 and 12_34 both become the folder name 12_34: one was silently dropped.
    synthetic_ct(name="export/a", patient_id="12/34")
    synthetic_ct(name="export/b", patient_id="12_34")
    report = import_source(
        tmp_path / "export", tmp_path / "ds", ImportOptions(structure_set=RECTAL, keep_ids=True)
    )
    ids = sorted(i.case_id or "" for i in report.imported)
    assert len(ids) == 2
    assert ids[0] == "12_34"
    assert ids[1].startswith("12_34-") and len(ids[1]) == len("12_34-") + 6
    renamed = next(i for i in report.imported if i.case_id == ids[1])
    assert [w["code"] for w in renamed.warnings if w["code"] == "case-id-collision"]
    # Deterministic: a second import into a new data set gives the same ids.
    again = import_source(
        tmp_path / "export", tmp_path / "ds2", ImportOptions(structure_set=RECTAL, keep_ids=True)
    )
    assert sorted(i.case_id or "" for i in again.imported) == ids
    # And into the same data set: both are recognised as present.
    third = import_source(
        tmp_path / "export", tmp_path / "ds", ImportOptions(structure_set=RECTAL, keep_ids=True)
    )
    assert sorted(i.status for i in third.items) == ["exists", "exists"]


def test_keep_ids_patient_that_collides_with_a_case_already_in_the_data_set(
    synthetic_ct, tmp_path: Path
) -> None:
    synthetic_ct(name="first/b", patient_id="12_34")
    synthetic_ct(name="second/a", patient_id="12/34")
    options = ImportOptions(structure_set=RECTAL, keep_ids=True)
    import_source(tmp_path / "first", tmp_path / "ds", options)
    report = import_source(tmp_path / "second", tmp_path / "ds", options)
    assert report.items[0].status == "imported"
    assert report.items[0].case_id != "12_34"
    assert len(CaseDataset.open(tmp_path / "ds")) == 2


def test_nifti_structures_that_collide_after_sanitising_are_both_kept(tmp_path: Path) -> None:
    a, b = _box(), np.roll(_box(), 2, axis=2)
    _nifti_case(tmp_path / "src", "p1", {"X ray": a, "X_ray": b})
    report = import_source(
        tmp_path / "src",
        tmp_path / "ds",
        ImportOptions(structure_set=RECTAL, keep_unmapped=True),
    )
    case_id = report.imported[0].case_id
    folder = tmp_path / "ds" / "cases" / str(case_id) / "structures"
    assert sorted(p.name for p in folder.iterdir()) == ["X_ray.nii.gz", "X_ray_2.nii.gz"]
    info = json.loads((folder.parent / "case.json").read_text())
    assert {r["original_name"] for r in info["extra_structures"].values()} == {"X ray", "X_ray"}
    assert any(w["code"] == "name-collision" for w in report.imported[0].warnings)


def test_failed_first_import_leaves_no_data_set_skeleton(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1"])
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    ds = tmp_path / "ds"
    with pytest.raises(DatasetError, match="malformed pseudonym key"):
        import_source(src, ds, ImportOptions(structure_set=RECTAL, key_file=str(bad_key)))
    assert not ds.exists()


def test_import_of_nothing_usable_leaves_only_its_report(tmp_path: Path) -> None:
    import nibabel as nib

    src = tmp_path / "src"
    (src / "p1" / "structures").mkdir(parents=True)
    ct = np.full((8, 8, 6), np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(ct, np.eye(4)), src / "p1" / "ct.nii.gz")
    ds = tmp_path / "ds"
    report = import_source(src, ds, ImportOptions(structure_set=RECTAL))
    assert report.skipped
    assert sorted(p.name for p in ds.iterdir() if not p.name.startswith(".")) == [
        "import-report.json"
    ]
    assert not (ds / KEY_FILE).exists()
    with pytest.raises(DatasetError, match="not a dlas data set"):
        CaseDataset.open(ds)
    # The folder takes a corrected import.
    _nifti_case(tmp_path / "good", "p1", {"Bladder": _box()})
    assert len(import_source(tmp_path / "good", ds, ImportOptions(structure_set=RECTAL)).imported)


def test_import_report_accumulates_runs(tmp_path: Path) -> None:
    src = _source(tmp_path, ["p1"])
    ds = tmp_path / "ds"
    import_source(src, ds, ImportOptions(structure_set=RECTAL))
    time.sleep(0.01)
    _nifti_case(src, "p2", {"Bladder": _box()})
    import_source(src, ds, ImportOptions(structure_set=RECTAL))
    data = json.loads((ds / "import-report.json").read_text())
    assert data["counts"]["imported"] == 1  # the last run
    assert len(data["earlier_runs"]) == 1
    assert data["earlier_runs"][0]["counts"]["imported"] == 1
    assert "earlier_runs" not in data["earlier_runs"][0]


def test_dicom_rois_that_collide_after_sanitising_are_both_kept(
    synthetic_ct, tmp_path: Path
) -> None:
    import datetime as dt

    from dlas.io import read_ct_series, write_rtstruct

    folder, _, _ = synthetic_ct(name="src/ct")
    ct = read_ct_series(folder)
    a = np.zeros(ct.volume.shape, bool)
    a[2:5, 5:10, 5:10] = True
    b = np.roll(a, 12, axis=2)
    write_rtstruct(
        {"X ray": a, "X_ray": b},
        ct,
        folder / "RS.dcm",
        generation="MANUAL",
        timestamp=dt.datetime(2024, 1, 1),
    )
    report = import_source(
        tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL, keep_unmapped=True)
    )
    (item,) = report.imported
    files = tmp_path / "ds" / "cases" / str(item.case_id) / "structures"
    assert sorted(p.name for p in files.iterdir()) == ["X_ray.nii.gz", "X_ray_2.nii.gz"]
    assert [w["code"] for w in item.warnings].count("name-collision") == 1


def test_keep_ids_nifti_folders_that_collide_after_sanitising_are_both_kept(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    _nifti_case(src / "a", "X ray", {"Bladder": _box()})
    _nifti_case(src / "b", "X_ray", {"Bladder": _box()})
    report = import_source(src, tmp_path / "ds", ImportOptions(structure_set=RECTAL, keep_ids=True))
    ids = sorted(i.case_id or "" for i in report.imported)
    assert ids[0] == "X_ray" and ids[1].startswith("X_ray-") and len(ids[1]) == len("X_ray-") + 6
    renamed = next(i for i in report.imported if i.case_id == ids[1])
    assert any(w["code"] == "case-id-collision" for w in renamed.warnings)


def test_unreadable_earlier_import_report_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _source(tmp_path, ["p1"])
    ds = tmp_path / "ds"
    import_source(src, ds, ImportOptions(structure_set=RECTAL))
    (ds / "import-report.json").write_text("{truncated", encoding="utf-8")
    with caplog.at_level("WARNING"):
        import_source(src, ds, ImportOptions(structure_set=RECTAL))
    assert "earlier import report" in caplog.text
    assert json.loads((ds / "import-report.json").read_text())["earlier_runs"] == []


def test_unexpected_error_reading_a_case_refuses_that_case_only(
    synthetic_ct, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlas.dataset import importer

    synthetic_ct(name="src/a", patient_id="P1")
    synthetic_ct(name="src/b", patient_id="P2")
    real = importer.read_ct_series
    calls: list[int] = []

    def flaky(files: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("something dlas does not recognise yet")
        return real(files)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "read_ct_series", flaky)
    report = import_source(tmp_path / "src", tmp_path / "ds", ImportOptions(structure_set=RECTAL))
    assert len(report.imported) == 1
    (refused,) = report.skipped
    assert "unexpected error while reading this case" in refused.reason
    assert "ValueError: something dlas does not recognise yet" in refused.reason
