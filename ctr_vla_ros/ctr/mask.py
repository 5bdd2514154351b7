"""The unified reuse mask, computed with vectorised tensor ops on the model's device.

For each camera image of a query: a patch is *static* if it barely changed since its reference pixels (grayscale
mean absolute difference below a threshold, or RGB cosine similarity above one); it is *task-relevant* if it is
among the top-K visual tokens by the previous query's prompt-to-vision attention; it is *reused* if static and not
task-relevant, up to a per-image cap (the most similar patches win). `decide_masks` applies the settings and says
what happened to each patch.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
import torch.nn.functional as F

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.model.config import PATCH_SIZE


class PatchState(enum.IntEnum):
    """Per-patch outcome of one query (same values as the ReuseMask message's STATE_* constants)."""

    RECOMPUTED_DYNAMIC = 0
    RECOMPUTED_TASK_RELEVANT = 1
    REUSED = 2
    KEYFRAME = 3
    RECOMPUTED_OVER_CAP = 4


@dataclasses.dataclass(frozen=True)
class MaskDecision:
    reuse_vision: torch.Tensor  # (num_images, patches) bool: reuse the cached vision-encoder states
    reuse_llm: torch.Tensor  # (num_images, patches) bool: reuse the cached LLM keys/values of these visual tokens
    patch_states: torch.Tensor  # (num_images, patches) uint8 PatchState, the vision side's decision (same device)

# ITU-R BT.601 luma weights (what OpenCV and PIL use for grayscale).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def patch_difference(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean absolute grayscale difference per patch, pixel values in [0, 1].
    images, references: (num_images, 224, 224, 3) uint8. Returns (num_images, patches) in raster order."""
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device)
    gray_difference = ((images.float() - references.float()) @ weights).abs() / 255.0
    pooled = F.avg_pool2d(gray_difference[:, None], PATCH_SIZE)
    return pooled.flatten(1)


def patch_cosine_similarity(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each patch's RGB pixel vector with the reference's. Returns (num_images, patches)."""
    def patch_vectors(batch: torch.Tensor) -> torch.Tensor:
        channels_first = batch.permute(0, 3, 1, 2).float()
        return F.unfold(channels_first, PATCH_SIZE, stride=PATCH_SIZE).transpose(1, 2)  # (n, patches, 3*14*14)

    return F.cosine_similarity(patch_vectors(images), patch_vectors(references), dim=-1, eps=1e-6)


def top_k_relevant(scores: torch.Tensor, top_k: int, num_images: int) -> torch.Tensor:
    """The top_k visual tokens over all images by score. scores: (num_images * patches,).
    Returns (num_images, patches) bool."""
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    if top_k > 0:
        relevant[scores.topk(min(top_k, scores.numel())).indices] = True
    return relevant.view(num_images, -1)


def reuse_mask(static: torch.Tensor, relevant: torch.Tensor, similarity: torch.Tensor,
               max_reuse_per_image: int) -> torch.Tensor:
    """Reuse = static and not task-relevant, keeping at most `max_reuse_per_image` per image (0: no cap): the
    patches most similar to their reference are kept. similarity: higher = more similar, (num_images, patches)."""
    reusable = static & ~relevant
    if max_reuse_per_image <= 0 or max_reuse_per_image >= reusable.shape[1]:
        return reusable
    ranked = torch.where(reusable, similarity, torch.full_like(similarity, -torch.inf))
    keep = ranked.topk(max_reuse_per_image, dim=1).indices
    capped = torch.zeros_like(reusable)
    capped.scatter_(1, keep, True)
    return capped & reusable


def keyframe_masks(num_images: int, patches: int, device: torch.device) -> MaskDecision:
    """Nothing reused: every patch recomputed and every cache replaced."""
    no_reuse = torch.zeros(num_images, patches, dtype=torch.bool, device=device)
    return MaskDecision(no_reuse, no_reuse, torch.full((num_images, patches), PatchState.KEYFRAME, dtype=torch.uint8,
                                                       device=device))


def decide_masks(images: torch.Tensor, references: torch.Tensor, previous_scores: torch.Tensor,
                 config: CtrConfig) -> MaskDecision:
    """The reuse masks of one query from its model images (num_images, 224, 224, 3) uint8, the reference pixels of
    each cached patch state, and the previous query's attention scores (num_images * patches,).

    With one threshold for both sides (the unified mask) the vision encoder and the LLM reuse the same patches; the
    mask-consistency ablation scales the threshold on one side. The switch ablation turns one side's reuse off."""
    if config.static_metric == 'gray_difference':
        difference = patch_difference(images, references)
        similarity = -difference

        def static(scale: float) -> torch.Tensor:
            return difference < config.difference_threshold * scale
    else:
        similarity = patch_cosine_similarity(images, references)

        def static(scale: float) -> torch.Tensor:
            return similarity > 1 - (1 - config.cosine_threshold) * scale

    relevant = top_k_relevant(previous_scores, config.top_k, images.shape[0])
    static_vision = static(config.vision_threshold_scale)
    reuse_vision = reuse_mask(static_vision, relevant, similarity, config.max_reuse_per_image)
    if config.unified:
        reuse_llm = reuse_vision
    else:
        reuse_llm = reuse_mask(static(config.llm_threshold_scale), relevant, similarity, config.max_reuse_per_image)

    # Tensor ops only (no boolean indexing), so nothing here waits for the device.
    states = torch.full_like(static_vision, PatchState.RECOMPUTED_DYNAMIC, dtype=torch.uint8)
    states = torch.where(static_vision & relevant, PatchState.RECOMPUTED_TASK_RELEVANT, states)
    states = torch.where(static_vision & ~relevant & ~reuse_vision, PatchState.RECOMPUTED_OVER_CAP, states)
    states = torch.where(reuse_vision, PatchState.REUSED, states).to(torch.uint8)
    if not config.vision_reuse:
        reuse_vision = torch.zeros_like(reuse_vision)
    if not config.llm_reuse:
        reuse_llm = torch.zeros_like(reuse_llm)
    return MaskDecision(reuse_vision, reuse_llm, states)
