"""Robustness evaluation and the JaFR study: corruptions, adversarial attacks, frequency analyses, reports.

``jafr_kernels.eval`` holds plain functions that return JSON-ready dicts; ``jafr study`` and ``jafr eval``
(:mod:`jafr_kernels.eval.cli`) compose them with the training layer and write ``runs/<name>/report.md``.
"""
from jafr_kernels.eval.corruptions import (
    CORRUPTIONS,
    available_corruptions,
    corrupt,
    difference_low_freq_ratio,
    frequency_character,
    frequency_groups,
)

__all__ = [
    "CORRUPTIONS",
    "available_corruptions",
    "corrupt",
    "difference_low_freq_ratio",
    "frequency_character",
    "frequency_groups",
]
