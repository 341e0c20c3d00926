"""Prediction: run a trained model on CTs and write masks, RTSTRUCT and DICOM SEG.

Entry points: :func:`predict` (``dlas predict``) and :class:`Predictor` (one volume at a time).
"""

from dlas.prediction.api import (
    FORMATS,
    PredictionError,
    PredictionItem,
    PredictionReport,
    parse_formats,
    predict,
)
from dlas.prediction.engine import Predictor
from dlas.prediction.postprocess import (
    fill_holes_per_slice,
    keep_largest_component,
    postprocess_mask,
)

__all__ = [
    "FORMATS",
    "PredictionError",
    "PredictionItem",
    "PredictionReport",
    "Predictor",
    "fill_holes_per_slice",
    "keep_largest_component",
    "parse_formats",
    "postprocess_mask",
    "predict",
]
