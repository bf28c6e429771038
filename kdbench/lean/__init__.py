"""Fast paths for the models kdbench runs most: the same functions as transformers' forward, with less
work per call. Each one is checked against transformers' own forward in tests/engine/test_lean.py and
falls back to it for anything it does not cover.

* `activations`: tanh-approximate GELU in one fused kernel instead of seven elementwise ops (GPT-2's
  `gelu_new`), swapped in when a model is loaded.
* `decode`: token-by-token decoding that calls the weights directly over a preallocated KV cache,
  for sampling (`kdbench.sampling`); one file per architecture (`gpt2`, `llama`).
* `forward`: the same architecture files over whole right-padded rows, for forwards without gradient
  (teacher forwards, LM-loss and exposure metrics, through `kdbench.hidden`).
"""
from . import gpt2, llama  # noqa: E402,F401  (register the architectures)
from .activations import fuse_activations  # noqa: E402,F401
from .decode import lean_stepper  # noqa: E402,F401
