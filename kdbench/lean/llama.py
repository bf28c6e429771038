"""Llama (transformers' LlamaForCausalLM; SmolLM2 and the pruned students are this class) for the lean
decoder: RMSNorm, rotary positions, grouped-query attention, a gated SiLU MLP. Rotary tables come from
the model's own rotary module, evaluated once per generation for all its positions, so every RoPE
variant whose angles depend on the position alone (default, linear, llama3, yarn) is the model's own."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decode import merge_heads, register, split_heads

_STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # dynamic / longrope rescale with the length: not here


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalised in fp32, scaled in the input dtype."""
    return w * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@register("LlamaForCausalLM")
class Llama:
    @staticmethod
    def unsupported(model) -> str | None:
        c = model.config
        if getattr(c, "pretraining_tp", 1) not in (None, 1):
            return "Llama tensor-parallel pretraining_tp > 1"
        if getattr(model.model.rotary_emb, "rope_type", None) not in _STATIC_ROPE:
            return f"RoPE type {getattr(model.model.rotary_emb, 'rope_type', None)!r}"
        rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None)  # as hidden.one_call_only
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, *_STATIC_ROPE):
            return f"RoPE type {rope.get('rope_type', rope.get('type'))!r} in the config"
        if getattr(c, "sliding_window", None):
            return "sliding-window attention"
        if len(model.model.layers) != c.num_hidden_layers:  # transformers runs layers[:num_hidden_layers]
            return "more layers than config.num_hidden_layers"
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            if any(type(x) is not torch.nn.Linear for x in linears):
                return "a wrapped or replaced Llama projection"
        if type(model.model.embed_tokens) is not torch.nn.Embedding or model.model.embed_tokens.max_norm is not None:
            return "a replaced Llama embedding"
        if type(model.lm_head) is not torch.nn.Linear:
            return "a non-plain lm_head"
        return None

    def __init__(self, model, max_len: int):
        m = model.model
        self.m, self.lm_head = m, model.lm_head
        # the tensors each layer reads, looked up once per generation (the same Parameter objects)
        self.layers = []
        for layer in m.layers:
            a, mlp, n1, n2 = layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            self.layers.append((n1.weight, n1.variance_epsilon, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight,
                                a.k_proj.bias, a.v_proj.weight, a.v_proj.bias, a.o_proj.weight, a.o_proj.bias,
                                n2.weight, n2.variance_epsilon, mlp.gate_proj.weight, mlp.gate_proj.bias,
                                mlp.act_fn, mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight,
                                mlp.down_proj.bias))
        self.n_layers = len(self.layers)
        self.head_dim = m.layers[0].self_attn.head_dim
        self.n_heads = model.config.num_attention_heads
        self.n_kv_heads = model.config.num_key_value_heads or self.n_heads
        self.device, self.dtype = m.embed_tokens.weight.device, m.embed_tokens.weight.dtype
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = m.rotary_emb(probe, torch.arange(max_len, device=self.device)[None])
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]

    def embed(self, ids, pos):
        return F.embedding(ids, self.m.embed_tokens.weight), (self.cos[pos][:, None], self.sin[pos][:, None])  # [B, 1, T, D]

    def block(self, i, x, ctx, attend):
        (n1_w, eps1, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, n2_w, eps2, gate_w, gate_b, act, up_w, up_b, down_w,
         down_b) = self.layers[i]
        cos, sin = ctx
        h = _rms(x, n1_w, eps1)
        q = _rotate(split_heads(F.linear(h, q_w, q_b), self.n_heads), cos, sin)
        k = _rotate(split_heads(F.linear(h, k_w, k_b), self.n_kv_heads), cos, sin)
        v = split_heads(F.linear(h, v_w, v_b), self.n_kv_heads)
        x = x + F.linear(merge_heads(attend(i, q, k, v)), o_w, o_b)
        h = _rms(x, n2_w, eps2)
        return x + F.linear(act(F.linear(h, gate_w, gate_b)) * F.linear(h, up_w, up_b), down_w, down_b)

    def final_norm(self, x):
        return _rms(x, self.m.norm.weight, self.m.norm.variance_epsilon)

    def head(self, x):
        return F.linear(self.final_norm(x), self.lm_head.weight, self.lm_head.bias)
