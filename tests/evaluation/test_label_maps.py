"""Predictions given as label maps (nnU-Net, TotalSegmentator, MONAI) with their label table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlas.cli import main
from dlas.dataset import CaseDataset
from dlas.errors import EvaluationError
from dlas.evaluation import PredictionSource, evaluate, read_metrics
from dlas.io import read_mask, write_nifti

#: TotalSegmentator-style names: matched to the rectal set like ROI names; liver matches nothing
TABLE = {"1": "urinary_bladder", "2": "femur_head_left", "3": "liver"}
STRUCTURES = ["Bladder", "Femur_Head_L"]


def _label_maps(study: Any, model: str, out: Path) -> Path:
    """The model's mask folders of the fixture as one label map per case, with a table."""
    dataset = CaseDataset.open(study.dataset)
    out.mkdir(parents=True)
    for case_id in dataset.case_ids():
        folder = study.predictions[model] / case_id / "structures"
        first = read_mask(folder / "Bladder.nii.gz")
        labels = np.zeros(first.shape, dtype=np.uint8)
        for label, name in ((1, "Bladder"), (2, "Femur_Head_L")):
            if (folder / f"{name}.nii.gz").is_file():
                labels[read_mask(folder / f"{name}.nii.gz").array] = label
        labels[0, 0, 0] = 3  # a "liver" voxel: a label no structure of the set takes
        write_nifti(first.with_array(labels), out / f"{case_id}.nii.gz")
    (out / "classes.json").write_text(json.dumps(TABLE))
    return out


def test_label_maps_evaluate_like_the_same_masks_in_folders(study: Any, tmp_path: Path) -> None:
    folder = _label_maps(study, "LFT", tmp_path / "ts")
    source = PredictionSource("LFT", folder, labels=folder / "classes.json")
    from_maps = evaluate(study.dataset, [source], structures=STRUCTURES)
    from_masks = evaluate(study.dataset, {"LFT": study.predictions["LFT"]}, structures=STRUCTURES)
    columns = ["case_id", "structure", "dsc", "hd95_mm", "volume_cm3", "flags"]
    assert from_maps.table[columns].equals(from_masks.table[columns])
    assert (from_maps.table["flags"] == "prediction_empty").sum() == 1  # EX002's missed bladder
    assert from_maps.metadata["predictions"]["LFT"]["label_table"] == "classes.json"


def test_a_structure_without_a_label_is_refused_before_any_work(study: Any, tmp_path: Path) -> None:
    folder = _label_maps(study, "LFT", tmp_path / "ts")
    source = PredictionSource("LFT", folder, labels=folder / "classes.json")
    with pytest.raises(EvaluationError) as info:
        evaluate(study.dataset, [source])  # CTV has no label in the table
    assert info.value.what == "label table has no label for a reference structure"
    assert "none for CTV" in str(info.value.found)
    (folder / "EX001.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="label map missing"):
        evaluate(study.dataset, [source], structures=STRUCTURES)


def test_cli_labels_option(study: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _label_maps(study, "LFT", tmp_path / "ts")
    base = ["evaluate", "--reference", str(study.dataset), "--prediction", f"TS={folder}"]
    out = ["--structure", "Bladder", "--out", str(tmp_path / "m.csv")]
    code = main([*base, "--labels", f"TS={folder / 'classes.json'}", *out])
    assert code == 0, capsys.readouterr().err
    assert set(read_metrics(tmp_path / "m.csv")["model"]) == {"TS"}
    code = main([*base, "--labels", f"XX={folder / 'classes.json'}", *out, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot read the label-table option" in err


@pytest.mark.realdata
def test_totalsegmentator_label_map_evaluates_against_its_organs_placed_independently(
    shared_data, tmp_path: Path
) -> None:
    """The real TotalSegmentator map of the Siemens series (stored y-flipped), read through
    its classes.json as a prediction, against reference masks of the same labels placed on the
    CT by physical coordinates, voxel by voxel (an independent path): DSC exactly 1 only if the
    map is put on the CT the right way round; the volumes equal the labels' voxel counts."""
    from dlas.dataset import ImportOptions, import_source
    from dlas.io import read_ct_series, read_nifti, write_mask
    from dlas.structures import StructureSet

    root = shared_data("ts-abdomen-dicom")
    ct = read_ct_series(root / "ct").volume
    classes = root / "classes.json"
    labels = read_nifti(root / "labels.nii.gz")
    ids = {v: int(k) for k, v in json.loads(classes.read_text()).items()}
    case = tmp_path / "export" / "ts-case"
    write_nifti(ct, case / "ct.nii.gz")
    voxels = {}
    for structure, name in (("Liver", "liver"), ("Spleen", "spleen")):
        idx = np.argwhere(labels.array == ids[name])
        k, j, i = np.rint(ct.physical_to_index(labels.index_to_physical(idx))).astype(int).T
        mask = np.zeros(ct.shape, dtype=bool)
        mask[k, j, i] = True
        voxels[structure] = len(idx)
        write_mask(ct.with_array(mask), case / "structures" / f"{structure}.nii.gz")
    organs = StructureSet.from_data(
        {
            "schema_version": 1,
            "name": "abdomen",
            "structures": [
                {"name": "Liver", "synonyms": ["liver"]},
                {"name": "Spleen", "synonyms": ["spleen"]},
            ],
        }
    )
    report = import_source(
        tmp_path / "export", tmp_path / "ds", ImportOptions(structure_set=organs)
    )
    (item,) = report.imported
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / f"{item.case_id}.nii.gz").symlink_to(root / "labels.nii.gz")
    result = evaluate(tmp_path / "ds", [PredictionSource("TS", maps, labels=classes)])
    table = result.table.set_index("structure")
    assert list(table["dsc"]) == [1.0, 1.0]
    voxel_cm3 = ct.voxel_volume_mm3 / 1000
    for structure, count in voxels.items():
        assert table.loc[structure, "volume_cm3"] == pytest.approx(count * voxel_cm3, rel=1e-9)


def test_label_table_errors(study: Any, tmp_path: Path) -> None:
    folder = _label_maps(study, "LFT", tmp_path / "ts")
    doubled = folder / "doubled.json"
    doubled.write_text(json.dumps({"1": "urinary_bladder", "2": "Bladder"}))
    with pytest.raises(EvaluationError) as info:
        evaluate(study.dataset, [PredictionSource("LFT", folder, labels=doubled)])
    assert info.value.what == "two labels map to one structure"
    assert "labels 1 and 2 both map to Bladder" in str(info.value.found)
    on_a_set = PredictionSource("VPM", study.dataset, contour_set="VPM", labels=doubled)
    with pytest.raises(EvaluationError, match="a label table for a contour set"):
        evaluate(study.dataset, [on_a_set])
