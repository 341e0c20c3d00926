"""Prediction: run a trained model on CTs and write masks, RTSTRUCT and DICOM SEG.

Entry points: :func:`predict` (``dlas predict``) and :class:`Predictor` (one volume at a time);
:func:`check_prediction` is the prediction QA that flags suspicious predictions (``qa``).
"""

from dlas.prediction.api import (
    FORMATS,
    QA_FAIL_MODES,
    PredictionError,
    PredictionItem,
    PredictionQAError,
    PredictionReport,
    parse_formats,
    predict,
)
from dlas.prediction.engine import MemberAgreement, Predictor
from dlas.prediction.postprocess import (
    fill_holes_per_slice,
    keep_largest_component,
    postprocess_mask,
)
from dlas.prediction.qa import QAFlag, QAReport, StructureQA, check_prediction

__all__ = [
    "FORMATS",
    "QA_FAIL_MODES",
    "MemberAgreement",
    "PredictionError",
    "PredictionItem",
    "PredictionQAError",
    "PredictionReport",
    "Predictor",
    "QAFlag",
    "QAReport",
    "StructureQA",
    "check_prediction",
    "fill_holes_per_slice",
    "keep_largest_component",
    "parse_formats",
    "postprocess_mask",
    "predict",
]
