"""kdbench: a comparative benchmark suite for knowledge distillation of large language models."""
import os as _os

__version__ = "0.1.0"

# Quiet third-party progress bars and info logs: kdbench shows its own progress.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
