"""Compatibility shim: the judge metric now lives in kdbench/metrics/judge/metric.py.

Kept only because kdbench/runner.py (being split by another change) still imports
`judge_settings` from here; delete this file once it imports from `kdbench.metrics.judge`.
"""
from .judge.config import judge_settings  # noqa: F401
from .judge.metric import _judge_metric, reset_judge_runs  # noqa: F401
