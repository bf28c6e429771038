"""Statistics over per-example scores (see core.py for the estimators and their known limits):
hierarchical-bootstrap CIs, paired comparisons, multiplicity corrections, best sets (core.py) and
bootstrap rank intervals (ranks.py). Pure numpy/pandas/scipy, no torch."""
from .core import (CORRECTIONS, Custom, MeanOf, Statistic, adjust_pvalues, as_statistic, best_set,  # noqa: F401
                   compare_table, model_ci, paired_comparison, split_model_key)
from .ranks import rank_intervals  # noqa: F401
