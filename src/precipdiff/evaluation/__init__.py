"""Verification of precipitation fields and ensembles: metrics, spectra, streaming, reports.

Public entry points: :mod:`.metrics` (pointwise and ensemble scores, re-exporting the
spatial/categorical and distribution scores), :mod:`.spectra`, :class:`.streaming.Accumulator`,
:mod:`.report` (``evaluate_fields``, ``metric_table``, ``write_report``) and :mod:`.plots`.
"""

from .streaming import Accumulator

__all__ = ["Accumulator"]
