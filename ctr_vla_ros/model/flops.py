"""Analytic FLOPs (2 x multiply-accumulate) of one OpenVLA-OFT step, per stage, counting what actually runs:
convolutions, linear layers and attention matmuls (norms, activations and RoPE are elementwise and not counted,
as `torch.utils.flop_counter` does not count them either).

The counts take the number of tokens actually computed, so the same function gives the full-recompute cost and
the cost of a CTR step: in the vision towers a recomputed patch attends to every token of its image; in the LLM a
computed position attends to every position of the sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ctr_vla_ros.model.config import KNOWN_TOWERS, PATCH_SIZE, ActionLayout, LlmConfig, ModelArchitecture


@dataclasses.dataclass
class StepFlops:
    vision: dict[str, float]  # per tower kind ('dinov2', 'siglip'), patch embedding included
    projector: float
    llm_linear: float
    llm_attention: float  # scores and weighted sums (plus the task-relevance probe when one runs)
    head: float  # proprio projector + action head

    @property
    def vision_total(self) -> float:
        return sum(self.vision.values())

    @property
    def llm(self) -> float:
        return self.llm_linear + self.llm_attention

    @property
    def total(self) -> float:
        return self.vision_total + self.projector + self.llm + self.head

    def __add__(self, other: StepFlops) -> StepFlops:
        """The FLOPs of both runs (a query that was re-run)."""
        return StepFlops({kind: flops + other.vision[kind] for kind, flops in self.vision.items()},
                         self.projector + other.projector, self.llm_linear + other.llm_linear,
                         self.llm_attention + other.llm_attention, self.head + other.head)


def count_step_flops(architecture: ModelArchitecture, prompt_length: int,
                     computed_patches: Sequence[int] | None = None,
                     llm_computed_tokens: Sequence[int] | None = None,
                     llm_attended_tokens: Sequence[int] | None = None, probe_queries: int = 0) -> StepFlops:
    """FLOPs of one step. computed_patches: per image, patches recomputed in the vision towers (default all).
    llm_computed_tokens: per LLM layer, positions computed (default all); llm_attended_tokens: per LLM layer, the
    positions their queries attend over (default the whole sequence; fewer where tokens are pruned).
    probe_queries: prompt (or action) positions whose attention onto the visual tokens is measured at one layer
    (the CTR task-relevance probe)."""
    num_images = architecture.action.num_images
    patches = architecture.patches_per_image
    computed_patches = list(computed_patches) if computed_patches is not None else [patches] * num_images
    llm = architecture.llm
    sequence = architecture.num_visual_tokens + prompt_length + architecture.action.num_action_slots + 3
    llm_computed_tokens = (list(llm_computed_tokens) if llm_computed_tokens is not None
                           else [sequence] * llm.num_layers)
    llm_attended_tokens = (list(llm_attended_tokens) if llm_attended_tokens is not None
                           else [sequence] * llm.num_layers)

    vision = {}
    for tower in architecture.vision_towers:
        width, tokens = tower.width, patches + tower.num_prefix_tokens
        patch_embed = 2 * patches * 3 * PATCH_SIZE * PATCH_SIZE * width
        total = 0.0
        for computed in computed_patches:
            if computed == 0:
                continue  # an image whose every patch is reused skips its towers entirely
            rows = computed + tower.num_prefix_tokens
            per_block = 2 * rows * (4 * width * width + 2 * width * tower.mlp_width) + 4 * rows * tokens * width
            total += patch_embed + tower.computed_depth * per_block
        vision[tower.kind] = total

    fused, hidden = architecture.fused_vision_width, llm.hidden_size
    projector = 2 * sum(computed_patches) * (fused * 4 * fused + 4 * fused * hidden + hidden * hidden)
    llm_linear = sum(2 * tokens * (4 * hidden * hidden + 3 * hidden * llm.intermediate_size)
                     for tokens in llm_computed_tokens)
    llm_attention = sum(4 * tokens * attended * hidden
                        for tokens, attended in zip(llm_computed_tokens, llm_attended_tokens, strict=True))
    llm_attention += 2 * probe_queries * sequence * hidden
    head = 2 * (architecture.action.proprio_dim * hidden + hidden * hidden) + action_head_flops(
        llm, architecture.action)
    return StepFlops(vision, projector, llm_linear, llm_attention, head)


def action_head_flops(llm: LlmConfig, action: ActionLayout) -> float:
    hidden = llm.hidden_size
    per_step = action.action_dim * hidden * hidden + 2 * hidden * hidden + hidden * action.action_dim
    return 2 * action.chunk_size * per_step


def full_size_architecture(action: ActionLayout | None = None) -> ModelArchitecture:
    """The released OpenVLA-OFT: DINOv2 ViT-L/14-reg4 + SigLIP So400m/14 + Llama-2-7B."""
    return ModelArchitecture(tuple(KNOWN_TOWERS.values()), LlmConfig(), action or ActionLayout())
