"""Fixtures of the engine tests: tiny synthetic data sets and one torch thread."""

from helpers.torch_fixtures import _one_torch_thread, synthetic

__all__ = ["_one_torch_thread", "synthetic"]
