"""Fixtures of the training tests: tiny synthetic data sets (``tests/helpers/synthetic_data.py``)
and one torch thread."""

from helpers.torch_fixtures import _one_torch_thread, synthetic

__all__ = ["_one_torch_thread", "synthetic"]
