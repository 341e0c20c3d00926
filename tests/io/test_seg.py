"""DICOM SEG written through highdicom: valid, referencing the CT, and readable back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from dlas.errors import RTStructError
from dlas.io import AlgorithmIdentification, read_ct_series, write_seg
from dlas.structures import StructureSet


def test_seg_round_trip_and_validation(synthetic_ct, tmp_path: Path, dciodvfy) -> None:
    folder, _, _ = synthetic_ct(shape=(6, 24, 24))
    ct = read_ct_series(folder)
    ctv = np.zeros(ct.volume.shape, dtype=bool)
    ctv[1:4, 5:15, 6:12] = True
    bladder = np.zeros_like(ctv)
    bladder[3:5, 15:20, 14:20] = True
    path = tmp_path / "seg.dcm"
    write_seg(
        {"CTV": ctv, "Bladder": bladder, "Bowel_Small": np.zeros_like(ctv)},
        ct,
        path,
        generation="AUTOMATIC",
        algorithm=AlgorithmIdentification("m", "1"),
        structure_set=StructureSet.builtin(),
        uid_seed="seg",
    )
    assert dciodvfy(path) == []
    seg = hd.seg.segread(path)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["CTV", "Bladder", "Bowel_Small"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "89837001"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.series_instance_uid
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ct.sop_instance_uids,
        segment_numbers=[1, 2, 3],
        ignore_spatial_locations=True,
    )
    np.testing.assert_array_equal(pixels[..., 0] > 0, ctv)
    np.testing.assert_array_equal(pixels[..., 1] > 0, bladder)
    assert not pixels[..., 2].any()


def test_automatic_seg_without_algorithm_is_refused(synthetic_ct, tmp_path: Path) -> None:
    folder, _, _ = synthetic_ct()
    ct = read_ct_series(folder)
    with pytest.raises(RTStructError, match="without algorithm identification"):
        write_seg(
            {"CTV": ct.volume.array > 0},
            ct,
            tmp_path / "seg.dcm",
            generation="AUTOMATIC",
            algorithm=None,
        )
