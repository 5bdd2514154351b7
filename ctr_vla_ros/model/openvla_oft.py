"""OpenVLA-OFT assembled: one forward pass from preprocessed inputs to one normalised action chunk.

Sequence layout (V visual tokens = 256 per image, L = prompt ids including BOS, up to "Out:"):

    0                BOS
    1 .. V           visual tokens, images in model order, patches in raster order
    V+1              proprio token
    V+2 .. V+L       prompt ids 1 .. L-1
    V+1+L            token id 29871, appended literally as the release does ("▁" in Llama-2)
    V+2+L ..         chunk*action_dim action slots, zero embeddings
    last             EOS

The action head reads the final-norm hidden states one position left of the action slots (the space token and all
action slots but the last).

`forward` is one query (what serving runs); `forward_batch` is the same computation on a training batch, whose
prompts may differ in length: each sequence keeps the layout above and is right-padded after its stop token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ctr_vla_ros.model.attention import EarlierKeyValues
from ctr_vla_ros.model.config import ModelArchitecture
from ctr_vla_ros.model.heads import FusedGeluProjector, L1RegressionActionHead, ProprioProjector
from ctr_vla_ros.model.llama import LanguageModel
from ctr_vla_ros.model.vision import FusedVisionBackbone


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    num_visual_tokens: int
    prompt_length: int  # L: prompt ids including BOS, without the space token
    num_action_slots: int

    @property
    def proprio_position(self) -> int:
        return self.num_visual_tokens + 1

    @property
    def length(self) -> int:
        return self.num_visual_tokens + self.prompt_length + self.num_action_slots + 3

    @property
    def prompt_positions(self) -> range:
        """Positions of prompt ids 1 .. L-1 (the instruction text, without BOS)."""
        return range(self.num_visual_tokens + 2, self.num_visual_tokens + 1 + self.prompt_length)

    @property
    def action_hidden_positions(self) -> range:
        """The positions the action head reads: one left of each action slot."""
        start = self.num_visual_tokens + 1 + self.prompt_length
        return range(start, start + self.num_action_slots)


@dataclasses.dataclass
class EarlierPass:
    """An earlier frame's full pass over a training batch (CTR-aware training): its visual tokens and every LLM
    layer's keys and values, what the serving cache holds for a token computed then and reused since."""

    visual: torch.Tensor  # (batch, V, hidden)
    key_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (batch, heads, tokens, head_dim) each


@dataclasses.dataclass
class BatchReuse:
    """Which visual tokens of each sample a CTR-aware training pass takes from `earlier`, the way serving reuses
    them (`ctr.vision_reuse`, `ctr.llm_reuse`, `ctr.llm_reuse_start_layer`, `ctr.llm_prune_layer`). The vision side
    substitutes the reused visual tokens (what the projector fed the LLM), not the towers' own cached states."""

    earlier: EarlierPass
    reuse_vision: torch.Tensor  # (batch, V) bool
    reuse_llm: torch.Tensor  # (batch, V) bool
    start_layer: int = 0
    prune_layer: int = -1  # -1: never
    # The batch rows `earlier` was computed for, in order (None: every row). The other rows reuse nothing, so their
    # earlier frames need no pass.
    rows: torch.Tensor | None = None

    def whole_batch(self, tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """A tensor of the earlier pass, at its rows of a zero tensor of the whole batch's `shape` (the earlier
        pass pads its sequences to its own longest one, which may be shorter than the batch's)."""
        if self.rows is None:  # the earlier pass ran over this very batch: same rows, same padding
            return tensor
        whole = tensor.new_zeros(shape)
        whole[(self.rows, *(slice(0, size) for size in tensor.shape[1:]))] = tensor
        return whole

    def visual_tokens(self, shape: Sequence[int]) -> torch.Tensor:
        """(batch, V, hidden): the earlier frames' visual tokens."""
        return self.whole_batch(self.earlier.visual, shape)

    def llm_layers(self, num_layers: int, length: int) -> list[EarlierKeyValues | None]:
        """Per LLM layer, what it attends with at the reused positions of sequences `length` long."""
        batch, visual = self.reuse_llm.shape
        reused = torch.cat([self.reuse_llm.new_zeros(batch, 1), self.reuse_llm,  # BOS, the visual block, the rest
                            self.reuse_llm.new_zeros(batch, length - 1 - visual)], dim=1)
        layers = []
        for index, (key, value) in enumerate(self.earlier.key_values[:num_layers]):
            if index < self.start_layer:
                layers.append(None)
                continue
            shape = (batch, key.shape[1], length, key.shape[3])
            layers.append(EarlierKeyValues(reused, self.whole_batch(key, shape), self.whole_batch(value, shape),
                                           pruned=0 <= self.prune_layer <= index))
        return layers


class OpenVlaOft(nn.Module):
    def __init__(self, architecture: ModelArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        hidden_size = architecture.llm.hidden_size
        action = architecture.action
        self.vision_backbone = FusedVisionBackbone(architecture.vision_towers)
        self.projector = FusedGeluProjector(architecture.fused_vision_width, hidden_size)
        self.language_model = LanguageModel(architecture.llm)
        self.proprio_projector = ProprioProjector(action.proprio_dim, hidden_size)
        self.action_head = L1RegressionActionHead(hidden_size, action.chunk_size, action.action_dim)

    def layout(self, prompt_length: int) -> SequenceLayout:
        return SequenceLayout(self.architecture.num_visual_tokens, prompt_length,
                              self.architecture.action.num_action_slots)

    @staticmethod
    def text_token_ids(prompt_ids: torch.Tensor, space_token_id: int, stop_token_id: int) -> torch.Tensor:
        """The token ids of one sequence in order: prompt ids (BOS first), the space token, the stop token."""
        return torch.cat([prompt_ids, prompt_ids.new_tensor([space_token_id, stop_token_id])])

    def arrange_text(self, token_embeddings: torch.Tensor,
                     proprio_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `text_token_ids` (L + 2, hidden) and the proprio token (hidden,) -> the embeddings of
        every non-visual position: BOS (1, 1, hidden), and everything after the visual tokens
        (1, layout.length - V - 1, hidden): proprio, prompt ids 1.., space token, zero action slots, stop."""
        slots = token_embeddings.new_zeros(self.architecture.action.num_action_slots, token_embeddings.shape[-1])
        return token_embeddings[None, :1], torch.cat([proprio_embedding[None], token_embeddings[1:-1], slots,
                                                      token_embeddings[-1:]])[None]

    def text_embeddings(self, prompt_ids: torch.Tensor, space_token_id: int, stop_token_id: int,
                        normalized_proprio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BOS (1, 1, hidden) and everything after the visual tokens (see `arrange_text`) for one query."""
        token_embeddings = self.language_model.model.embed_tokens(
            self.text_token_ids(prompt_ids, space_token_id, stop_token_id))
        proprio = self.proprio_projector(normalized_proprio.to(token_embeddings.dtype))
        return self.arrange_text(token_embeddings, proprio)

    def predict_actions(self, action_hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + action head on the hidden states at `action_hidden_positions`: (chunk, action_dim), fp32."""
        return self.action_head(self.language_model.model.norm(action_hidden)).float()

    def batch_sequence_embeddings(self, pixel_values: torch.Tensor, normalized_proprio: torch.Tensor,
                                  prompt_ids: Sequence[torch.Tensor], space_token_id: int,
                                  stop_token_id: int) -> torch.Tensor:
        """Input embeddings of a batch of sequences, (batch, longest layout.length, hidden), every position computed.

        pixel_values: (batch, num_images, 6, 224, 224); normalized_proprio: (batch, proprio_dim); prompt_ids: one
        (L,) tensor per sample. A sequence shorter than the longest is right-padded with zero vectors after its stop
        token, so every position up to its stop token is where the batch-1 layout puts it."""
        batch = pixel_values.shape[0]
        hidden_size = self.architecture.llm.hidden_size
        visual = self.projector(self.vision_backbone(pixel_values.flatten(0, 1))).reshape(batch, -1, hidden_size)
        token_ids = [self.text_token_ids(ids, space_token_id, stop_token_id) for ids in prompt_ids]
        # One lookup for the whole batch: the backward pass of each lookup writes a vocabulary-sized gradient.
        token_embeddings = self.language_model.model.embed_tokens(torch.cat(token_ids))
        proprio = self.proprio_projector(normalized_proprio.to(token_embeddings.dtype))
        texts = [self.arrange_text(tokens, proprio_embedding) for tokens, proprio_embedding in
                 zip(token_embeddings.split([len(ids) for ids in token_ids]), proprio, strict=True)]
        longest = max(rest.shape[1] for _, rest in texts)
        bos = torch.cat([bos for bos, _ in texts])
        rest = torch.cat([F.pad(rest, (0, 0, 0, longest - rest.shape[1])) for _, rest in texts])
        return torch.cat([bos, visual, rest], dim=1)

    def sequence_embeddings(self, pixel_values: torch.Tensor, normalized_proprio: torch.Tensor,
                            prompt_ids: torch.Tensor, space_token_id: int, stop_token_id: int) -> torch.Tensor:
        """Input embeddings of the whole sequence, (1, layout.length, hidden), every position computed."""
        return self.batch_sequence_embeddings(pixel_values[None], normalized_proprio[None], [prompt_ids],
                                              space_token_id, stop_token_id)

    def forward_batch(self, pixel_values: torch.Tensor, normalized_proprio: torch.Tensor,
                      prompt_ids: Sequence[torch.Tensor], space_token_id: int, stop_token_id: int,
                      reuse: BatchReuse | None = None) -> torch.Tensor:
        """The full-recompute step on a batch, differentiable (the training forward pass). Inputs as in
        `batch_sequence_embeddings`; returns normalised actions (batch, chunk, action_dim), fp32. Each sample's
        result is the one `forward` gives for it alone: padding is masked out of every attention. `reuse` (CTR-aware
        training): reused visual tokens take what an earlier frame's pass left in the serving cache."""
        layouts = [self.layout(len(ids)) for ids in prompt_ids]
        embeddings = self.batch_sequence_embeddings(pixel_values, normalized_proprio, prompt_ids, space_token_id,
                                                    stop_token_id)
        earlier = None
        if reuse is not None:
            visual = slice(1, 1 + self.architecture.num_visual_tokens)
            current = embeddings[:, visual]
            embeddings = torch.cat([embeddings[:, :1], torch.where(reuse.reuse_vision[..., None],
                                                                   reuse.visual_tokens(current.shape), current),
                                    embeddings[:, visual.stop:]], dim=1)
            earlier = reuse.llm_layers(self.architecture.llm.num_layers, embeddings.shape[1])
        hidden = self._batch_llm(embeddings, layouts, earlier=earlier)
        # The action head takes one sample's (slots, hidden) rows; it is tiny next to the LLM, so a loop costs little.
        return torch.stack([self.predict_actions(sample[layout.action_hidden_positions.start:
                                                        layout.action_hidden_positions.stop])
                            for sample, layout in zip(hidden, layouts)])

    @torch.no_grad()
    def earlier_pass(self, pixel_values: torch.Tensor, normalized_proprio: torch.Tensor,
                     prompt_ids: Sequence[torch.Tensor], space_token_id: int, stop_token_id: int) -> EarlierPass:
        """The full pass of a batch of earlier frames, kept as the serving cache would keep it (no gradient)."""
        embeddings = self.batch_sequence_embeddings(pixel_values, normalized_proprio, prompt_ids, space_token_id,
                                                    stop_token_id)
        recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._batch_llm(embeddings, [self.layout(len(ids)) for ids in prompt_ids], recorded=recorded)
        return EarlierPass(embeddings[:, 1:1 + self.architecture.num_visual_tokens], recorded)

    def _batch_llm(self, embeddings: torch.Tensor, layouts: Sequence[SequenceLayout],
                   earlier: Sequence[EarlierKeyValues | None] | None = None,
                   recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Every LLM layer over a right-padded batch, the padding masked out of every attention."""
        positions = torch.arange(embeddings.shape[1], device=embeddings.device)
        lengths = torch.tensor([layout.length for layout in layouts], device=embeddings.device)
        padded = bool((lengths < embeddings.shape[1]).any())
        key_padding_mask = positions[None, :] < lengths[:, None] if padded else None
        return self.language_model.model(embeddings, positions, key_padding_mask=key_padding_mask, earlier=earlier,
                                         recorded=recorded)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, normalized_proprio: torch.Tensor, prompt_ids: torch.Tensor,
                space_token_id: int, stop_token_id: int) -> torch.Tensor:
        """The reference full-recompute step, exactly as the release computes it.

        pixel_values: (num_images, 6, 224, 224) in the model dtype; normalized_proprio: (proprio_dim,);
        prompt_ids: (L,) with BOS first. Returns normalised actions (chunk, action_dim), fp32."""
        return self.forward_batch(pixel_values[None], normalized_proprio[None], [prompt_ids], space_token_id,
                                  stop_token_id)[0]
