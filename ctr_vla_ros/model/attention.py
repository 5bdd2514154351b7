"""Attention over a key/value store that may hold cached rows (the seam the CTR engine uses).

Both the vision towers and the LLM attend the same way: the rows being computed produce fresh keys and values; if a
`KeyValueCache` is given, those are written into the cache at their rows and the queries attend over the whole
cache (fresh rows plus rows kept from an earlier query); otherwise the queries attend over the fresh keys only.
A cache's tensors are allocated once for the whole sequence and only ever written in place, so a CUDA graph that
reads them stays valid.
Attention is fused scaled-dot-product attention with no mask: the towers and OpenVLA-OFT's LLM are bidirectional.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class KeyValueNoise:
    """Random noise on the keys and values of some rows, `relative` times their norm (Frobenius, over those rows),
    added whenever the rows are computed: an instrument for the evaluation's fragility control, never used to act."""

    rows: torch.Tensor  # sequence positions
    relative: float
    generator: torch.Generator

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        selected = tensor[:, :, self.rows]
        noise = torch.randn(selected.shape, generator=self.generator, dtype=torch.float32).to(tensor)
        noise *= self.relative * torch.linalg.norm(selected.float()) / torch.linalg.norm(noise.float())
        return tensor.index_add(2, self.rows, noise)


@dataclasses.dataclass
class KeyValueCache:
    """Keys and values of every token of one attention layer, shape (1, heads, tokens, head_dim)."""

    key: torch.Tensor
    value: torch.Tensor
    noise: KeyValueNoise | None = None  # only in the fragility control, on a full recompute

    @classmethod
    def allocate(cls, heads: int, tokens: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> KeyValueCache:
        return cls(torch.zeros(1, heads, tokens, head_dim, dtype=dtype, device=device),
                   torch.zeros(1, heads, tokens, head_dim, dtype=dtype, device=device))


@dataclasses.dataclass
class EarlierKeyValues:
    """CTR-aware training, one layer of a batch: what the serving cache holds at the reused visual positions. There
    the layer attends over the keys and values an earlier frame's pass computed (`key`, `value`), or, when `pruned`,
    over nothing (the positions are masked out of every query's keys), as `ctr.llm_prune_layer` serves them."""

    reused: torch.Tensor  # (batch, tokens) bool
    key: torch.Tensor  # (batch, heads, tokens, head_dim), from the earlier pass (no gradient)
    value: torch.Tensor
    pruned: bool = False

    def apply(self, key: torch.Tensor, value: torch.Tensor,
              key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The keys, values and key mask this layer attends with."""
        if self.pruned:
            kept = ~self.reused
            return key, value, kept if key_padding_mask is None else key_padding_mask & kept
        reused = self.reused[:, None, :, None]
        return torch.where(reused, self.key, key), torch.where(reused, self.value, value), key_padding_mask


@dataclasses.dataclass
class AttentionProbe:
    """Asks one layer for the mean attention of some query rows onto some key rows (averaged over heads and
    queries), with one small extra matmul instead of materialising the attention maps."""

    query_rows: torch.Tensor  # indices into the rows being computed
    key_rows: torch.Tensor  # indices into the full key sequence
    scores: torch.Tensor | None = None  # filled by `attend`: one score per key row


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache: KeyValueCache | None = None,
           rows: torch.Tensor | None = None, probe: AttentionProbe | None = None) -> torch.Tensor:
    """query/key/value: (1, heads, computed rows, head_dim). `rows`: the sequence positions of the computed rows
    (None: every row, in order); with a cache, its tensors are written in place at `rows` (a repeated row writes
    the same values twice). Returns the attention output for the computed rows."""
    if cache is not None:
        if cache.noise is not None:  # the fragility control runs on a full recompute: row i is position i
            key, value = cache.noise.add(key), cache.noise.add(value)
        if rows is None:
            cache.key.copy_(key)
            cache.value.copy_(value)
        else:
            cache.key.index_copy_(2, rows, key)
            cache.value.index_copy_(2, rows, value)
        key, value = cache.key, cache.value
    if probe is not None:
        probe_queries = query[:, :, probe.query_rows].float()
        weights = torch.softmax(probe_queries @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1)
        probe.scores = weights[..., probe.key_rows].mean(dim=(0, 1, 2))
    return F.scaled_dot_product_attention(query, key, value)
