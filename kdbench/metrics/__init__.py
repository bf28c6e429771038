"""The metrics layer: one file (or package) per metric family, each registering into METRICS."""
from .base import METRICS, EvalContext, EvalSession, Metric, register_metric  # noqa: F401
from .rouge import exact_match, rouge_l  # noqa: F401

# kdbench.plugins imports modules named here first, then the rest alphabetically (metrics need no
# special order). Defined so that the loader's lookup does not fall through to the lazy
# __getattr__ below, which would import every metric module in its own order.
LOAD_ORDER: list[str] = []


def __getattr__(name):  # lazy access to metric functions that live in optional modules
    import importlib

    for mod in ("calibration", "diversity", "exposure", "lm_loss", "toy", "judge"):
        m = importlib.import_module(f"{__name__}.{mod}")
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(name)
