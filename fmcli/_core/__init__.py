"""Compiled core: text parsing and the training / scoring kernels."""

from ._kernels import openmp_info

__all__ = ["openmp_info"]
