"""Test setup: never touch the network, keep HF caches in a temp dir, no progress bars."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # shared test helpers: `from fixtures import build_random_model`

for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_k] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="kdbench-hf-"))
os.environ["KDBENCH_NO_PROGRESS"] = "1"
os.environ.pop("KDBENCH_DATA", None)

from kdbench.plugins import load_plugins  # noqa: E402

load_plugins()


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for tests on tiny models: thread hand-offs cost more than they save, and on a
    shared 2-core machine extra threads spin (modules opt in with pytestmark)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
