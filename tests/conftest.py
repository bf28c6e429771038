"""Test setup: never touch the network, keep HF caches in a temp dir, no progress bars."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_k] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="kdbench-hf-"))
os.environ["KDBENCH_NO_PROGRESS"] = "1"
os.environ.pop("KDBENCH_DATA", None)

from kdbench.plugins import load_plugins  # noqa: E402

load_plugins()
