"""DICOM and NIfTI input/output: `Volume`, CT series, RTSTRUCT, DICOM SEG, NIfTI masks and
label maps."""

from dlas.io.atomic import atomic_dir, atomic_path, write_json, write_text
from dlas.io.contours import rasterize_polygons, trace_mask
from dlas.io.ct import CTSeries, SeriesTolerances, read_ct_series, scanner_tags
from dlas.io.ct_writer import CTSeriesSpec, make_uid, write_ct_series
from dlas.io.dicom_scan import DicomScan, ScannedFile, SkippedFile, read_header, scan_dicom
from dlas.io.labelmap import LabelMapData, read_label_map, read_label_table
from dlas.io.nifti import read_mask, read_nifti, write_mask, write_nifti
from dlas.io.rtstruct import (
    AlgorithmIdentification,
    ROIGenerationAlgorithm,
    ROISummary,
    RTStructData,
    RTStructROI,
    RTStructWarning,
    read_rtstruct,
    referenced_series_uids,
    summarize_rtstruct,
    write_rtstruct,
)
from dlas.io.seg import SegData, SegROI, read_seg, write_seg
from dlas.io.volume import AXIAL_DIRECTION, Volume

__all__ = [
    "AXIAL_DIRECTION",
    "AlgorithmIdentification",
    "CTSeries",
    "CTSeriesSpec",
    "DicomScan",
    "LabelMapData",
    "ROIGenerationAlgorithm",
    "ROISummary",
    "RTStructData",
    "RTStructROI",
    "RTStructWarning",
    "ScannedFile",
    "SegData",
    "SegROI",
    "SeriesTolerances",
    "SkippedFile",
    "Volume",
    "atomic_dir",
    "atomic_path",
    "make_uid",
    "rasterize_polygons",
    "read_ct_series",
    "read_header",
    "read_label_map",
    "read_label_table",
    "read_mask",
    "read_nifti",
    "read_rtstruct",
    "read_seg",
    "referenced_series_uids",
    "scan_dicom",
    "scanner_tags",
    "summarize_rtstruct",
    "trace_mask",
    "write_ct_series",
    "write_json",
    "write_mask",
    "write_nifti",
    "write_rtstruct",
    "write_seg",
    "write_text",
]
