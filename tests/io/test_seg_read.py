"""Reading DICOM SEG onto the CT grid: our writer's SEGs, highdicom-built binary, fractional and
label-map SEGs, frames in any order or orientation, and every geometry the reader refuses."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.coding import CodedConcept
from pydicom.pixels import pack_bits
from skimage.color import rgb2lab

from dlas.errors import RTStructError
from dlas.io import (
    AlgorithmIdentification,
    RTStructData,
    RTStructROI,
    SegData,
    SegROI,
    read_ct_series,
    read_seg,
    write_seg,
)
from dlas.structures import StructureSet

SHAPE = (8, 20, 24)
SPACING = (2.5, 1.2, 1.0)
ORIGIN = (-12.0, -11.4, -8.75)
ALGO = AlgorithmIdentification("test model", "1.0")
COLOURS = [(220, 20, 60), (30, 144, 255), (50, 205, 50)]


@pytest.fixture
def ct_series(synthetic_ct):
    """``ct_series(name, **spec)``: a CT series read back; same grid and frame of reference as
    the default one unless ``shape``, ``spacing``, ``origin`` or UIDs are given."""

    def make(name: str = "ct", **kw):
        kw.setdefault("shape", SHAPE)
        kw.setdefault("spacing", SPACING)
        kw.setdefault("origin", ORIGIN)
        folder, _, _ = synthetic_ct(name=name, **kw)
        return read_ct_series(folder)

    return make


@pytest.fixture
def ct(ct_series):
    return ct_series()


def _masks() -> dict[str, np.ndarray]:
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ball = ((zz - 3.5) * 2.5) ** 2 + ((yy - 9) * 1.2) ** 2 + (xx - 11) ** 2 < 7.5**2
    box = np.zeros(SHAPE, dtype=bool)
    box[5:7, 2:6, 15:22] = True
    corner = np.zeros(SHAPE, dtype=bool)
    corner[0, 0, 0] = corner[-1, -1, -1] = True  # the grid's two extreme voxels
    return {"Ball": ball, "Box": box, "Corner": corner, "Nothing": np.zeros(SHAPE, dtype=bool)}


def _write(ct, path: Path, masks: dict[str, np.ndarray], **kw) -> Path:
    write_seg(masks, ct, path, generation="AUTOMATIC", algorithm=ALGO, uid_seed="t", **kw)
    return path


def _description(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=CodedConcept("85756007", "SCT", "Tissue"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor(*rgb2lab(np.divide(COLOURS[(number - 1) % 3], 255))),
    )


def _highdicom_seg(source_images, pixel_array, labels, **kw) -> hd.seg.Segmentation:
    kw.setdefault("segmentation_type", hd.seg.SegmentationTypeValues.BINARY)
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segment_descriptions=[_description(n + 1, label) for n, label in enumerate(labels)],
        series_instance_uid=hd.UID(),
        series_number=5,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="other vendor",
        manufacturer_model_name="AutoContour",
        software_versions="9",
        device_serial_number="1",
        **kw,
    )


# ----------------------------------------------------------------------------- round trips


def test_round_trip_with_our_writer_is_exact(ct, tmp_path: Path) -> None:
    masks = _masks()
    path = _write(
        ct,
        tmp_path / "seg.dcm",
        masks,
        structure_set=StructureSet.builtin(),
        segment_descriptions={"Box": "QA: small"},
    )
    data = read_seg(path, ct)
    assert isinstance(data, SegData) and isinstance(data, RTStructData)  # one importer for both
    assert data.segmentation_type == "BINARY"
    assert data.frame_of_reference_uid == ct.frame_of_reference_uid
    assert [roi.name for roi in data.rois.values()] == list(masks)
    assert list(data.rois) == [1, 2, 3, 4]
    for roi, (name, mask) in zip(data.rois.values(), masks.items(), strict=True):
        assert isinstance(roi, SegROI) and isinstance(roi, RTStructROI)
        np.testing.assert_array_equal(roi.mask, mask, err_msg=name)
        assert roi.mask.dtype == bool and roi.mask.shape == ct.volume.shape
        assert roi.n_contours == int(mask.any(axis=(1, 2)).sum())  # one frame per slice used
    assert data.rois[2].description == "QA: small"
    nothing = data.rois[4]
    assert nothing.empty and nothing.n_contours == 0
    assert [(w.code, w.roi_name) for w in data.warnings] == [("empty-roi", "Nothing")]


def test_masks_equal_highdicoms_own_volume(ct, tmp_path: Path) -> None:
    """An independent path: highdicom stacks the frames itself; we map its volume onto the CT
    through its affine."""
    masks = _masks()
    path = _write(ct, tmp_path / "seg.dcm", masks)
    data = read_seg(path, ct)
    volume = hd.seg.segread(path).get_volume(segment_numbers=[1, 2, 3])
    affine = volume.affine
    np.testing.assert_allclose(affine[:3, 1:3], ct.volume.affine[:3, 1:3], atol=1e-6)
    for s in range(volume.spatial_shape[0]):
        centre = affine @ np.array([s, 0, 0, 1.0])
        k, j, i = np.rint(ct.volume.physical_to_index(centre[:3])).astype(int)
        assert (j, i) == (0, 0)
        for n in (1, 2, 3):
            np.testing.assert_array_equal(data.rois[n].mask[k], volume.array[s, :, :, n - 1] > 0)
    # and the slices highdicom does not hold are empty in ours
    covered = {
        int(np.rint(ct.volume.physical_to_index((affine @ [s, 0, 0, 1.0])[:3])[0]))
        for s in range(volume.spatial_shape[0])
    }
    for k in set(range(SHAPE[0])) - covered:
        assert not any(data.rois[n].mask[k].any() for n in (1, 2, 3))


def test_dataset_input_is_left_unchanged(ct, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(ct, tmp_path / "seg.dcm", _masks()))
    data = read_seg(ds, ct)
    assert not isinstance(ds, hd.seg.Segmentation)  # highdicom worked on a copy
    np.testing.assert_array_equal(data.rois[1].mask, _masks()["Ball"])


# ------------------------------------------------------------- segmentation types


def test_fractional_seg_is_inside_from_half_the_maximum_fractional_value(ct) -> None:
    fractions = np.array([0.0, 0.2, 0.49, 0.5, 0.51, 0.8, 1.0])
    rng = np.random.default_rng(3)
    pixels = fractions[rng.integers(0, len(fractions), size=SHAPE)].astype(np.float32)
    seg = _highdicom_seg(
        ct.headers,
        pixels,
        ["Probability"],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        max_fractional_value=100,
    )
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):  # 49, 50, 51 as written
        z = float(group.PlanePositionSequence[0].ImagePositionPatient[2])
        k = round((z - ORIGIN[2]) / SPACING[0])
        np.testing.assert_array_equal(seg.get_stored_frame(f + 1), np.rint(pixels[k] * 100))
    data = read_seg(seg, ct)
    assert data.segmentation_type == "FRACTIONAL"
    np.testing.assert_array_equal(data.rois[1].mask, pixels >= 0.5)
    assert data.rois[1].mask[pixels == np.float32(0.49)].sum() == 0
    assert data.rois[1].mask[pixels == np.float32(0.5)].all()


def test_fractional_threshold_scales_with_maximum_fractional_value(ct) -> None:
    pixels = np.zeros(SHAPE, dtype=np.float32)
    pixels[2, 5, 5] = 127 / 255  # stored 127 of 255: below half
    pixels[2, 5, 6] = 128 / 255  # stored 128 of 255: above half
    seg = _highdicom_seg(
        ct.headers,
        pixels,
        ["P"],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
    )
    assert int(seg.MaximumFractionalValue) == 255
    mask = read_seg(seg, ct).rois[1].mask
    assert np.argwhere(mask).tolist() == [[2, 5, 6]]


def test_label_map_seg_is_read_by_segment_number(ct) -> None:
    masks = _masks()
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[masks["Ball"]] = 1
    labels[masks["Box"]] = 2
    seg = _highdicom_seg(
        ct.headers,
        labels,
        ["Ball", "Box", "Absent"],
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
    )
    data = read_seg(seg, ct)
    assert data.segmentation_type == "LABELMAP"
    np.testing.assert_array_equal(data.rois[1].mask, masks["Ball"] & ~masks["Box"])
    np.testing.assert_array_equal(data.rois[2].mask, masks["Box"])
    assert data.rois[3].empty


# -------------------------------------------------------------------- frame placement


def _shuffle_frames(path: Path, out: Path, order: list[int]) -> None:
    """Rewrite a SEG with its frames (pixels and per-frame groups together) in ``order``."""
    seg = hd.seg.segread(path)
    frames = np.stack([seg.get_stored_frame(f + 1) for f in order])
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[f] for f in order]
    ds.PixelData = pack_bits(frames.ravel()) if ds.BitsAllocated == 1 else frames.tobytes()
    ds.save_as(out)


def test_frames_in_shuffled_order_land_by_their_position(ct, tmp_path: Path) -> None:
    masks = _masks()
    path = _write(ct, tmp_path / "seg.dcm", masks)
    n = int(pydicom.dcmread(path).NumberOfFrames)
    order = list(np.random.default_rng(5).permutation(n))
    assert order != sorted(order)
    _shuffle_frames(path, tmp_path / "shuffled.dcm", order)
    data = read_seg(tmp_path / "shuffled.dcm", ct)
    for roi, mask in zip(data.rois.values(), masks.values(), strict=True):
        np.testing.assert_array_equal(roi.mask, mask, err_msg=roi.name)


def test_seg_on_a_subset_of_slices_lands_on_those_slices(ct) -> None:
    slices = [6, 1, 3]
    pixels = np.zeros((len(slices), *SHAPE[1:]), dtype=np.uint8)
    for f, k in enumerate(slices):
        pixels[f, k : k + 2, k:12] = 1  # each frame different
    seg = _highdicom_seg([ct.headers[k] for k in slices], pixels, ["Part"])
    roi = read_seg(seg, ct).rois[1]
    mask = roi.mask
    assert roi.n_contours == 3
    assert roi.colour is not None  # RecommendedDisplayCIELabValue back to RGB
    assert np.abs(np.subtract(roi.colour, COLOURS[0])).max() <= 2
    expected = np.zeros(SHAPE, dtype=bool)
    expected[slices] = pixels.astype(bool)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    ("orientation", "corner", "flip"),
    [
        ([1, 0, 0, 0, -1, 0], (-1, 0), lambda a: a[:, ::-1, :]),  # rows run posterior → anterior
        ([-1, 0, 0, 0, 1, 0], (0, -1), lambda a: a[:, :, ::-1]),  # columns run left → right
        ([0, 1, 0, 1, 0, 0], (0, 0), lambda a: a.transpose(0, 2, 1)),  # rows and columns swapped
    ],
)
def test_frames_stored_flipped_or_transposed_are_reindexed_exactly(
    ct, orientation, corner, flip
) -> None:
    mask = _masks()["Ball"] | _masks()["Box"]
    pixels = np.ascontiguousarray(flip(mask.astype(np.uint8)))
    ny, nx = SHAPE[1:]
    j0, i0 = (ny - 1 if corner[0] else 0), (nx - 1 if corner[1] else 0)
    positions = [
        hd.PlanePositionSequence("PATIENT", list(ct.volume.index_to_physical([k, j0, i0])))
        for k in range(SHAPE[0])
    ]
    sy, sx = SPACING[1:]
    seg = _highdicom_seg(
        ct.headers,
        pixels,
        ["Both"],
        plane_positions=positions,
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", orientation),
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=[sx, sy] if orientation[1] else [sy, sx], slice_thickness=SPACING[0]
        ),
    )
    np.testing.assert_array_equal(read_seg(seg, ct).rois[1].mask, mask)


# -------------------------------------------------------------------------------- refusals


def test_seg_other_frame_of_reference_is_refused(ct, ct_series, tmp_path: Path) -> None:
    other = ct_series("other")  # same grid, its own frame of reference
    assert other.frame_of_reference_uid != ct.frame_of_reference_uid
    path = _write(other, tmp_path / "seg.dcm", _masks())
    with pytest.raises(
        RTStructError,
        match=rf"another frame of reference; expected FrameOfReferenceUID "
        rf"{ct.frame_of_reference_uid}.*found {other.frame_of_reference_uid}.*pair the SEG",
    ):
        read_seg(path, ct)


def _same_frame(ct, ct_series, name: str, **kw):
    return ct_series(name, frame_of_reference_uid=ct.frame_of_reference_uid, **kw)


def test_seg_on_other_pixel_spacing_is_refused(ct, ct_series, tmp_path: Path) -> None:
    other = _same_frame(ct, ct_series, "finer", spacing=(2.5, 1.0, 1.0))
    path = _write(other, tmp_path / "seg.dcm", _masks())
    with pytest.raises(
        RTStructError,
        match=r"frame \d+: SEG frame grid differs from the CT grid in-plane; expected axial "
        r"frames of the CT's 20x24 pixels of 1.2x1 mm.*found 20x24 pixels of 1x1 mm.*"
        r"dlas does not resample",
    ):
        read_seg(path, ct)


def test_seg_offset_by_half_a_pixel_is_refused(ct, ct_series, tmp_path: Path) -> None:
    other = _same_frame(ct, ct_series, "shifted", origin=(ORIGIN[0] + 0.5, *ORIGIN[1:]))
    path = _write(other, tmp_path / "seg.dcm", _masks())
    with pytest.raises(RTStructError, match=r"in-plane.*up to 0.5 pixels off"):
        read_seg(path, ct)


def test_seg_of_other_size_is_refused(ct, ct_series, tmp_path: Path) -> None:
    other = _same_frame(ct, ct_series, "wider", shape=(8, 20, 30))
    masks = {"Box": np.zeros((8, 20, 30), dtype=bool)}
    masks["Box"][2, 3:5, 3:5] = True
    path = _write(other, tmp_path / "seg.dcm", masks)
    with pytest.raises(RTStructError, match=r"frame size differs.*found 20x30 pixels"):
        read_seg(path, ct)


def test_seg_frames_between_ct_slices_are_refused(ct, ct_series, tmp_path: Path) -> None:
    other = _same_frame(ct, ct_series, "half", origin=(*ORIGIN[:2], ORIGIN[2] + 1.25))
    path = _write(other, tmp_path / "seg.dcm", _masks())
    with pytest.raises(
        RTStructError,
        match=r"between CT slices; expected frames within 0.25 mm \(0.1 of the slice spacing\)"
        r".*up to 1.25 mm from slice",
    ):
        read_seg(path, ct)


def test_seg_frames_beyond_the_ct_are_refused(ct, ct_series, tmp_path: Path) -> None:
    other = _same_frame(ct, ct_series, "above", origin=(*ORIGIN[:2], ORIGIN[2] + 50.0))
    path = _write(other, tmp_path / "seg.dcm", _masks())
    with pytest.raises(RTStructError, match=r"outside the CT; expected frames on the CT's 8"):
        read_seg(path, ct)


def test_sagittal_seg_is_refused(ct) -> None:
    pixels = np.zeros((SHAPE[2], SHAPE[1], SHAPE[0]), dtype=np.uint8)  # x slices of (y, z)
    pixels[3, 4:8, 2:5] = 1
    positions = [
        hd.PlanePositionSequence("PATIENT", list(ct.volume.index_to_physical([0, 0, i])))
        for i in range(SHAPE[2])
    ]
    seg = _highdicom_seg(
        [ct.headers[0]],
        pixels,
        ["Sagittal"],
        plane_positions=positions,
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", [0, 1, 0, 0, 0, 1]),
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=[SPACING[0], SPACING[1]], slice_thickness=SPACING[2]
        ),
    )
    with pytest.raises(RTStructError, match="not axial slices of the CT"):
        read_seg(seg, ct)


def test_not_a_seg_is_refused(ct) -> None:
    with pytest.raises(RTStructError, match=r"not a DICOM SEG.*found Modality CT"):
        read_seg(ct.files[0], ct)


def test_unreadable_seg_is_refused(ct, tmp_path: Path) -> None:
    path = tmp_path / "seg.dcm"
    path.write_bytes(b"not dicom at all")
    with pytest.raises(RTStructError, match="cannot read SEG"):
        read_seg(path, ct)


def test_duplicate_segment_labels_are_reported_not_merged(ct) -> None:
    masks = _masks()
    pixels = np.stack([masks["Ball"], masks["Box"]], axis=-1).astype(np.uint8)
    seg = _highdicom_seg(ct.headers, pixels, ["Organ", "organ"])
    data = read_seg(seg, ct)
    np.testing.assert_array_equal(data.rois[1].mask, masks["Ball"])
    np.testing.assert_array_equal(data.rois[2].mask, masks["Box"])
    assert [w.code for w in data.warnings] == ["duplicate-name"]


def test_truncated_seg_pixel_data_is_refused(ct, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(ct, tmp_path / "seg.dcm", _masks()))
    ds.PixelData = ds.PixelData[:8]
    with pytest.raises(RTStructError, match=r"frame \d+: cannot decode SEG frame"):
        read_seg(ds, ct)
