"""The unified reuse mask, computed with vectorised tensor ops on the model's device.

For each camera image of a query: a patch is *static* if it barely changed since its reference pixels (grayscale
mean absolute difference below a threshold, or RGB cosine similarity above one); it is *task-relevant* if it is
among the top-K visual tokens by the previous query's prompt-to-vision attention; it is *reused* if static and not
task-relevant, up to a per-image cap (the most similar patches win).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctr_vla_ros.model.config import PATCH_SIZE

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
