"""`dlas inspect`: what a DICOM folder, a lone RTSTRUCT or a data set holds, as plain data.

For each RTSTRUCT and SEG it lists the attributes contour-set rules look at
(:mod:`dlas.dataset.contour_sets`) and, given rules, the set the object would join.

Patient names, ids and birth dates are never part of the result.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from dlas.dataset.contour_sets import (
    ContourSetRule,
    describe_object,
    object_kind,
    referenced_series,
)
from dlas.dataset.layout import CaseDataset
from dlas.errors import DatasetError, StructureSetError
from dlas.io.dicom_scan import scan_dicom
from dlas.io.rtstruct import summarize_rtstruct
from dlas.structures import StructureSet

__all__ = ["inspect_path"]


def _maps_to(name: str, structure_set: StructureSet) -> dict[str, Any]:
    entry: dict[str, Any] = {"maps_to": None}
    try:
        entry["maps_to"] = structure_set.match(name)
    except StructureSetError as exc:
        entry["error"] = exc.found or str(exc)
    return entry


def _object_entry(path: Path, header: Any, rules: list[ContourSetRule]) -> dict[str, Any]:
    """What rules look at, and the sets whose rules match (one, unless the rules overlap)."""
    matches = [r.name for r in rules if r.matches(header)]
    return {
        "file": path.name,
        "kind": object_kind(header),
        "describe": describe_object(header),
        "referenced_series": referenced_series(header),
        **({"contour_set": ", ".join(matches) or "(none)"} if rules else {}),
    }


def _seg_entry(
    path: Path, header: Any, structure_set: StructureSet, rules: list[ContourSetRule]
) -> dict[str, Any]:
    rois = [
        {
            "number": int(s.get("SegmentNumber", 0)),
            "name": str(s.get("SegmentLabel", "")),
            **_maps_to(str(s.get("SegmentLabel", "")), structure_set),
        }
        for s in header.get("SegmentSequence", [])
    ]
    return {
        **_object_entry(path, header, rules),
        "label": str(header.get("ContentLabel", "")),
        "frame_of_reference": [str(header.get("FrameOfReferenceUID", ""))],
        "rois": rois,
    }


def _rtstruct_entry(
    path: Path, header: Any, structure_set: StructureSet, rules: list[ContourSetRule]
) -> dict[str, Any]:
    rois = []
    for roi in summarize_rtstruct(header):
        entry: dict[str, Any] = {
            "number": roi.number,
            "name": roi.name,
            "interpreted_type": roi.interpreted_type,
            "n_contours": roi.n_contours,
            "n_points": roi.n_points,
            "geometric_types": roi.geometric_types,
            **_maps_to(roi.name, structure_set),
        }
        rois.append(entry)
    return {
        **_object_entry(path, header, rules),
        "label": str(header.get("StructureSetLabel", "")),
        "frame_of_reference": sorted(
            {
                str(r.get("FrameOfReferenceUID", ""))
                for r in header.get("ReferencedFrameOfReferenceSequence", [])
            }
        ),
        "rois": rois,
    }


def inspect_path(
    path: str | os.PathLike[str],
    structure_set: StructureSet,
    *,
    rules: list[ContourSetRule] | None = None,
) -> dict[str, Any]:
    """Describe ``path``: a data set folder, a DICOM folder or file (CT series, RTSTRUCTs,
    SEGs, and with ``rules`` the contour set each object would join)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(
            "path not found",
            where=str(p),
            expected="a DICOM folder or file, or a data set",
            found="nothing at that path",
            fix="check the path",
        )
    if p.is_dir() and (p / "dataset.json").exists():
        dataset = CaseDataset.open(p)
        cohorts: dict[str, Any] = {}
        for record in dataset.cases:
            row = cohorts.setdefault(record.cohort, {"cases": 0, "structures": Counter()})
            row["cases"] += 1
            row["structures"].update(record.structures)
        return {
            "kind": "dataset",
            "name": dataset.name,
            "n_cases": len(dataset),
            "structure_set": dataset.structure_set.name,
            "structures": dataset.structure_set.names,
            "cohorts": {
                k: {"cases": v["cases"], "structures": dict(v["structures"])}
                for k, v in sorted(cohorts.items())
            },
            "reference_set": dataset.reference_set,
            "contour_sets": dataset.contour_sets(),
        }
    scan = scan_dicom(p)
    series = []
    for uid, files in scan.ct_series.items():
        h = files[0].header
        series.append(
            {
                "series_instance_uid": uid,
                "n_images": len(files),
                "modality": str(h.get("Modality", "")),
                "description": str(h.get("SeriesDescription", "")),
                "manufacturer": str(h.get("Manufacturer", "") or ""),
                "model": str(h.get("ManufacturerModelName", "") or ""),
                "station": str(h.get("StationName", "") or ""),
                "kvp": float(h.KVP) if h.get("KVP") not in (None, "") else None,
                "pixel_spacing": [float(v) for v in h.get("PixelSpacing", [])],
                "slice_thickness": (
                    float(h.SliceThickness) if h.get("SliceThickness") not in (None, "") else None
                ),
                "frame_of_reference": str(h.get("FrameOfReferenceUID", "")),
            }
        )
    return {
        "kind": "dicom",
        "path": str(p),
        "series": series,
        "rtstructs": [
            _rtstruct_entry(f.path, f.header, structure_set, rules or []) for f in scan.rtstructs
        ],
        "segs": [_seg_entry(f.path, f.header, structure_set, rules or []) for f in scan.segs],
        "skipped": dict(Counter(s.reason for s in scan.skipped).most_common()),
    }
