"""Generation backends: the hf backend is the sampling loop; vllm is optional and says so."""
import importlib.util

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.errors import ConfigError, KdbenchError
from kdbench.generation import BACKENDS, GenerationBackend, make_backend
from kdbench.sampling import SamplingConfig, sample


def _model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0,
                                      embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=1, pad_token_id=0))


def test_hf_backend_is_the_sampling_loop():
    m, prompts, cfg = _model(), [[3, 4, 5], [6, 7]], SamplingConfig(max_new_tokens=6)
    b = make_backend("hf")
    assert isinstance(b, GenerationBackend) and b.supports_mixed
    assert b.generate(m, prompts, cfg, 1, 0, seed=5).response_ids == sample(m, prompts, cfg, 1, 0, 5).response_ids


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_backend_without_vllm_names_the_extra():
    assert "vllm" in BACKENDS
    with pytest.raises(ConfigError, match="pip install vllm"):
        make_backend("vllm")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(KdbenchError):
        make_backend("hff")
