"""Writing masks on a CT grid as a DICOM Segmentation (binary), through highdicom.

highdicom builds and validates the Segmentation IOD; this module supplies the segment
descriptions (codes and colours from the structure set) and the algorithm identification that
highdicom requires for automatic segments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from dlas import __version__
from dlas.errors import RTStructError
from dlas.io.atomic import atomic_path
from dlas.io.ct import CTSeries
from dlas.io.ct_writer import make_uid
from dlas.io.rtstruct import AlgorithmIdentification, ROIGenerationAlgorithm
from dlas.io.volume import Volume
from dlas.structures import Code, StructureSet

__all__ = ["write_seg"]

_FALLBACK_TYPE = Code(scheme="SCT", value="85756007", meaning="Tissue")


def _coded(code: Code):  # type: ignore[no-untyped-def]
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def write_seg(
    masks: Mapping[str, npt.ArrayLike | Volume],
    ct: CTSeries,
    path: str | os.PathLike[str],
    *,
    generation: ROIGenerationAlgorithm,
    algorithm: AlgorithmIdentification | None,
    structure_set: StructureSet | None = None,
    series_number: int = 901,
    uid_seed: str | None = None,
    series_description: str | None = None,
    segment_descriptions: Mapping[str, str] | None = None,
) -> None:
    """Write masks (z, y, x) on ``ct``'s grid as a binary DICOM SEG referencing the series.

    Empty structures are kept as segments without frames so that segment numbers stay stable.
    ``series_description`` (Series Description) and ``segment_descriptions`` (structure name →
    Segment Description (0062,0006), e.g. prediction QA flags) are cut to 64 characters.
    """
    import highdicom as hd

    generation = ROIGenerationAlgorithm(generation)
    if generation is not ROIGenerationAlgorithm.MANUAL and algorithm is None:
        raise RTStructError(
            "automatic segmentation without algorithm identification",
            where=str(path),
            expected="the name and version of the model that produced the segments",
            found=f"generation {generation.value} and no algorithm",
            fix="pass algorithm=AlgorithmIdentification(name=..., version=...)",
        )
    if not ct.referenceable:
        raise RTStructError(
            "CT series lacks the UIDs needed to reference it",
            where=str(path),
            expected="SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID and SOPInstanceUIDs",
            found="some of them empty (the export was anonymised by blanking UIDs)",
            fix="re-export the CT with UIDs (replaced UIDs are fine, empty ones are not)",
        )
    volume = ct.volume
    names = list(masks)
    if not names:
        raise RTStructError(
            "nothing to write",
            where=str(path),
            expected="at least one structure",
            found="no masks",
            fix="pass the masks to write",
        )
    stack = np.zeros((*volume.shape, len(names)), dtype=np.uint8)
    descriptions = []
    algo = (
        hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64],
            family=_coded(algorithm.family),
            version=algorithm.version[:64],
        )
        if algorithm is not None
        else None
    )
    for s, name in enumerate(names):
        mask = masks[name]
        array = np.asarray(mask.array if isinstance(mask, Volume) else mask) != 0
        if array.shape != volume.shape or (isinstance(mask, Volume) and not mask.same_grid(volume)):
            raise RTStructError(
                "mask grid differs from the CT grid",
                where=f"structure {name!r}",
                expected=volume.grid_description(),
                found=f"shape {array.shape}",
                fix="resample the mask onto the CT before writing",
            )
        stack[..., s] = array
        definition = structure_set[name] if structure_set and name in structure_set else None
        category = (
            definition.category
            if definition
            else Code(scheme="SCT", value="91723000", meaning="Anatomical Structure")
        )
        prop = (definition.property_type if definition else None) or _FALLBACK_TYPE
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=s + 1,
                segment_label=name[:64],
                segmented_property_category=_coded(category),
                segmented_property_type=_coded(prop),
                algorithm_type=(
                    hd.seg.SegmentAlgorithmTypeValues.MANUAL
                    if generation is ROIGenerationAlgorithm.MANUAL
                    else hd.seg.SegmentAlgorithmTypeValues(generation.value)
                ),
                algorithm_identification=algo,
            )
        )
    # highdicom pairs frames with source images in the order given, in their stored pixel
    # layout; undo the reader's canonical flips.
    row_dir = ct.original_orientation[:3]
    col_dir = ct.original_orientation[3:]
    if row_dir[0] < 0:
        stack = stack[:, :, ::-1, :]
    if col_dir[1] < 0:
        stack = stack[:, ::-1, :, :]
    seed = (uid_seed,) if uid_seed is not None else ()
    seg = hd.seg.Segmentation(
        source_images=ct.headers,
        pixel_array=np.ascontiguousarray(stack),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=make_uid(*seed, "seg-series") if seed else make_uid(),
        series_number=series_number,
        sop_instance_uid=make_uid(*seed, "seg-sop") if seed else make_uid(),
        instance_number=1,
        manufacturer="dlas",
        manufacturer_model_name="dlas",
        software_versions=f"dlas {__version__}",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    if series_description:
        seg.SeriesDescription = series_description[:64]
    for s, name in enumerate(names):
        text = (segment_descriptions or {}).get(name)
        if text:
            seg.SegmentSequence[s].SegmentDescription = text[:64]
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
