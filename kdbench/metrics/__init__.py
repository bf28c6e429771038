"""The metrics layer: one file per metric family, each registering into METRICS."""
from .base import METRICS, EvalContext, Metric, register_metric  # noqa: F401
from .rouge import exact_match, rouge_l  # noqa: F401


def __getattr__(name):  # lazy access to metric functions that live in optional modules
    import importlib

    for mod in ("calibration", "diversity", "exposure", "lm_loss", "judge", "judge_metric"):
        m = importlib.import_module(f"{__name__}.{mod}")
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(name)
