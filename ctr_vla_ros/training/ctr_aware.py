"""CTR-aware fine-tuning: teach the model to act well on what reuse feeds it at serving time.

At serving time a reused visual token keeps what the query that last computed it left in the cache: its visual
token (the vision side) and its keys and values at every LLM layer, computed from that earlier query's whole
sequence (the LLM is bidirectional), or with `ctr.llm_prune_layer` nothing at all above that layer. Here a share of
each batch's samples is trained the same way: an earlier frame of the same demonstration, one to `queries_back`
action chunks before, goes through the model without gradient, the serving rule's own mask (`ctr.mask`'s
`decide_masks`, on the pair seen through the same augmentation) picks the reused tokens, and the sample's pass takes
the earlier frame's visual tokens and keys/values at those tokens (see `BatchReuse`). The loss is the usual L1 on
the sample's own chunk, so the model learns to act on the current state whatever the cache still holds.

Two approximations, both small next to what they model: the previous query's attention, which serving uses to keep
the `top_k` most attended tokens fresh, is not measured here (a random `top_k` is kept instead); and the vision
towers recompute every patch of the current frame (serving would let recomputed patches attend to the reused ones'
cached tower states, which `vision_only` reuse shows this policy does not mind).
"""

from __future__ import annotations

import dataclasses

import torch

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.ctr.mask import decide_masks
from ctr_vla_ros.model.config import PATCH_SIZE


@dataclasses.dataclass(frozen=True)
class CtrAwareTraining:
    config: CtrConfig  # the serving rule trained for: its mask, switches, LLM start and prune layers
    share: float = 0.5  # of each batch's samples, trained with reuse (the rest with full recompute)
    queries_back: int = 4  # the earlier frame lies 1..queries_back chunks before the sample (within its episode)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(f'share must be in (0, 1], got {self.share}')
        if self.queries_back < 1:
            raise ValueError(f'queries_back must be >= 1, got {self.queries_back}')
        if not self.config.enabled:
            raise ValueError('CTR-aware training needs a rule that reuses (ctr.enabled)')


def reusing_rows(batch: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """The rows of a batch trained with reuse: each with probability `share`."""
    return (torch.rand(batch, generator=generator) < share).nonzero().flatten()


def earlier_indices(indices: torch.Tensor, episode_first: torch.Tensor, step: torch.Tensor, chunk_size: int,
                    queries_back: int, generator: torch.Generator) -> torch.Tensor:
    """For each sample, the sample of the same episode 1..queries_back chunks (of steps) earlier: the last one at or
    before that step (samples may skip steps), the episode's first if that is before it starts. Samples are in
    episode order, then step order."""
    back = torch.randint(1, queries_back + 1, (len(indices),), generator=generator) * chunk_size
    span = int(step.max()) + 1
    keys = episode_first * span + step  # increasing over the whole sample set
    wanted = episode_first[indices] * span + torch.clamp(step[indices] - back, min=0)
    return torch.maximum(torch.searchsorted(keys, wanted, right=True) - 1, episode_first[indices])


def reuse_masks(current: torch.Tensor, earlier: torch.Tensor, config: CtrConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(reuse_vision, reuse_llm), each (samples, images * patches) bool: the serving rule's mask between the model
    images of samples and of their earlier frames, (samples, images, 224, 224, 3) uint8."""
    samples, images = current.shape[:2]
    tokens = images * (current.shape[2] // PATCH_SIZE) ** 2
    vision, llm = [], []
    for sample in range(samples):
        scores = torch.rand(tokens, generator=generator)  # stands in for the previous query's attention
        masks = decide_masks(current[sample], earlier[sample], scores, config)
        vision.append(masks.reuse_vision.flatten())
        llm.append(masks.reuse_llm.flatten())
    return torch.stack(vision), torch.stack(llm)
