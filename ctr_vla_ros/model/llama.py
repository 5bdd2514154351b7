"""The Llama-2 language model of OpenVLA-OFT, as the release runs it: fully bidirectional attention (no mask at
all), RoPE at absolute positions, RMSNorm with eps 1e-6. `lm_head` is never used and not built. Module names mirror
the checkpoint's `language_model.model.*` keys.

A training batch holds sequences of different lengths right-padded to the longest: a key-padding mask keeps every
real token from attending to the padding, so each sequence's hidden states are those it has on its own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ctr_vla_ros.model.attention import AttentionProbe, EarlierKeyValues, KeyValueCache, attend
from ctr_vla_ros.model.config import LlmConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the model dtype, as Llama does.
        input_dtype = hidden.dtype
        hidden = hidden.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden.to(input_dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, (tokens, head_dim), for absolute positions, computed in fp32 then cast to `dtype`."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device) / self.head_dim
        angles = positions.float()[:, None] / self.theta ** exponents[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(hidden: torch.Tensor) -> torch.Tensor:
    first, second = hidden.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return hidden * cos + rotate_half(hidden) * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                cache: KeyValueCache | None, rows: torch.Tensor | None,
                probe: AttentionProbe | None, key_padding_mask: torch.Tensor | None = None,
                earlier: EarlierKeyValues | None = None,
                recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        batch, tokens, hidden_size = hidden.shape
        shape = (batch, tokens, self.num_heads, -1)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        cos, sin = rotary
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if recorded is not None:
            recorded.append((key.detach(), value.detach()))
        if earlier is not None:
            key, value, key_padding_mask = earlier.apply(key, value, key_padding_mask)
        if key_padding_mask is None:
            attended = attend(query, key, value, cache, rows, probe)
        else:
            # Padded training batches never use the CTR cache or probe, which serve one query at a time.
            attended = F.scaled_dot_product_attention(query, key, value,
                                                      attn_mask=key_padding_mask[:, None, None, :])
        return self.o_proj(attended.transpose(1, 2).reshape(batch, tokens, hidden_size))


class LlamaMlp(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMlp(config)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                cache: KeyValueCache | None = None, rows: torch.Tensor | None = None,
                probe: AttentionProbe | None = None, key_padding_mask: torch.Tensor | None = None,
                earlier: EarlierKeyValues | None = None,
                recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rotary, cache, rows, probe, key_padding_mask,
                                         earlier, recorded)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, layers: range | None = None,
                caches: Sequence[KeyValueCache] | None = None, rows: torch.Tensor | None = None,
                probe_layer: int | None = None, probe: AttentionProbe | None = None,
                key_padding_mask: torch.Tensor | None = None,
                earlier: Sequence[EarlierKeyValues | None] | None = None,
                recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Run `layers` (default: all) on `hidden` (batch, computed tokens, hidden) at absolute `positions`.

        rows: the computed tokens' sequence positions, for writing into `caches` (one per layer); None when every
        position is computed. key_padding_mask: (batch, tokens) bool, False at right-padding positions (training
        batches; not with caches or a probe). CTR-aware training: `earlier`, per layer, what the serving cache would
        hold at reused positions; `recorded` receives every layer's keys and values. Returns the hidden states of the
        computed tokens before the final norm (the caller normalises only the rows it reads)."""
        rotary = self.rotary_emb(positions, hidden.dtype)
        for index in layers if layers is not None else range(len(self.layers)):
            hidden = self.layers[index](hidden, rotary, caches[index] if caches is not None else None, rows,
                                        probe if index == probe_layer else None, key_padding_mask,
                                        earlier[index] if earlier is not None else None, recorded)
        return hidden


class LanguageModel(nn.Module):
    """Holder so parameter names match the checkpoint (`language_model.model.*`)."""

    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.model = LlamaModel(config)
