"""Generation backends: who turns prompts into sampled responses.

`hf` is kdbench's own KV-cache loop (kdbench/sampling.py) on any transformers model; it is the
only one that does teacher-mixed sampling (two models stepping together). `vllm` hands plain
sampling to a vLLM engine for large models (rollouts, evaluation, SeqKD samples); vllm is an
optional extra and is imported only when that backend is chosen.

    backend = make_backend("hf")
    rollout = backend.generate(model, prompt_ids, SamplingConfig(max_new_tokens=64), eos_id, pad_id, seed=1)

Not yet wired into MethodContext / evaluation, which call sampling.sample directly (= the hf backend).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .errors import ConfigError
from .registry import Registry
from .sampling import Rollout, SamplingConfig, sample


@runtime_checkable
class GenerationBackend(Protocol):
    name: str
    supports_mixed: bool  # teacher-mixed sampling (MiniLLM) needs both models per token

    def generate(self, model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int, pad_id: int,
                 seed: int, batch_size: int = 32, mix_model=None, mix_alpha: float = 0.0) -> Rollout: ...


BACKENDS: Registry[type] = Registry("generation backend")


@BACKENDS.register("hf", "kdbench's batched KV-cache sampling loop on transformers models (default)")
class HFBackend:
    name = "hf"
    supports_mixed = True

    def generate(self, model, prompts, cfg, eos_id, pad_id, seed, batch_size=32, mix_model=None, mix_alpha=0.0):
        return sample(model, prompts, cfg, eos_id, pad_id, seed, batch_size=batch_size, mix_model=mix_model,
                      mix_alpha=mix_alpha)


@BACKENDS.register("vllm", "vLLM engine for plain sampling of large models (pip install vllm)")
class VLLMBackend:
    """Plain sampling through vLLM. The engine loads weights from a path, so `model` is a local
    folder or hub name; after a training step the caller must save the student and reload it
    (or push weights into the engine) before sampling on-policy again."""

    name = "vllm"
    supports_mixed = False

    def __init__(self, **engine_kwargs):
        try:
            import vllm  # noqa: F401  - optional extra, imported only here
        except ImportError:
            raise ConfigError("generation backend 'vllm' needs the vllm package: pip install vllm "
                              "(or choose the 'hf' backend)") from None
        self.engine_kwargs = engine_kwargs
        self._engines: dict[str, object] = {}

    def generate(self, model, prompts, cfg, eos_id, pad_id, seed, batch_size=32, mix_model=None, mix_alpha=0.0):
        if mix_model is not None and mix_alpha > 0:
            raise ConfigError("generation backend 'vllm' cannot do teacher-mixed sampling; use 'hf'")
        from vllm import LLM, SamplingParams, TokensPrompt

        path = str(model)
        if path not in self._engines:
            self._engines[path] = LLM(model=path, **self.engine_kwargs)
        params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or -1,
                                max_tokens=cfg.max_new_tokens, seed=seed, stop_token_ids=[eos_id])
        outs = self._engines[path].generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                            use_tqdm=False)
        responses = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            responses.append(ids)  # vLLM keeps the stop token in token_ids, as our loop keeps EOS
        return Rollout([list(p) for p in prompts], responses)


def make_backend(name: str, **kwargs) -> GenerationBackend:
    return BACKENDS.get(name, "generation backend")(**kwargs)
