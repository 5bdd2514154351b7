"""The CTR engine: one unified mask per camera image drives reuse in the vision encoder and in the LLM.

Per query:
1. Keyframe? (first query, reset, instruction change, camera change, input gap, every keyframe_interval-th query.)
   A keyframe recomputes everything and replaces every cache.
2. Otherwise the mask: static patches (vs their reference pixels) that are not among the previous query's top-K
   attended visual tokens are reused (see `mask.py`).
3. Vision encoder, per image: the recomputed patches (and DINOv2's cls/register tokens) are gathered once and run
   through every block as a compact stream; their queries attend over the full key/value cache of the block, where
   reused patches keep the keys/values of the query that last computed them. Only recomputed rows are written back.
   The projector runs on recomputed patches only; its cached output stands in for reused ones.
4. LLM: reused visual positions keep their cached K/V (from `llm_reuse_start_layer` on); every other position is
   computed with RoPE at its absolute position and attends to the full K/V with no mask, as the baseline. At one
   layer, one extra small matmul measures prompt-to-vision attention for the next query's task-relevant set.
5. The action head reads the final-norm hidden states one position left of the action slots.

With a zero mask, or with inputs identical to those that produced the cache and every patch reused, the output
equals the plain model's (tests check both).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.ctr.mask import decide_masks, keyframe_masks
from ctr_vla_ros.model.attention import AttentionProbe, KeyValueCache, KeyValueNoise
from ctr_vla_ros.model.checkpoint import PromptTokens
from ctr_vla_ros.model.config import PATCH_SIZE
from ctr_vla_ros.model.flops import StepFlops, count_step_flops
from ctr_vla_ros.model.openvla_oft import OpenVlaOft


@dataclasses.dataclass
class StageTimes:
    """Wall time per stage of one query, seconds (preprocess is filled in by the caller that did it)."""

    preprocess: float = 0.0
    mask: float = 0.0
    vision: float = 0.0
    projector: float = 0.0
    llm: float = 0.0
    head: float = 0.0

    @property
    def total(self) -> float:
        return self.preprocess + self.mask + self.vision + self.projector + self.llm + self.head


@dataclasses.dataclass
class StepReport:
    query_index: int
    keyframe_reason: str  # '' when the query was not a keyframe
    patch_states: np.ndarray  # (num_images, patches) uint8, PatchState values
    attention_scores: np.ndarray | None  # (num_images, patches): the previous query's scores this mask used
    vision_reuse: np.ndarray  # (num_images,) fraction of patches reused in the vision encoder
    llm_reuse: np.ndarray  # (num_images,) fraction of visual positions whose LLM K/V were reused
    flops: StepFlops
    full_recompute_flops: StepFlops
    times: StageTimes

    @property
    def keyframe(self) -> bool:
        return bool(self.keyframe_reason)


@dataclasses.dataclass(frozen=True)
class VisualNoise:
    """The evaluation's fragility control, on a full recompute (CTR off): at every query a random `fraction` of the
    visual positions gets random noise on its keys and values, `relative[layer]` times their norm at each LLM layer
    (the size a reuse configuration's stale keys and values have, measured by evaluation/staleness.py). Does any
    deviation of that size change the policy's actions as much as reuse does? The draws follow `seed` from the
    last engine reset."""

    fraction: float
    relative: tuple[float, ...]  # per LLM layer
    seed: int = 0


@dataclasses.dataclass
class ModelInput:
    """One query in model form (built by `VlaPolicy.prepare`)."""

    model_images: list[np.ndarray]  # 224x224x3 uint8, what the model sees
    pixel_values: torch.Tensor  # (num_images, 6, 224, 224)
    normalized_proprio: torch.Tensor
    prompt_ids: torch.Tensor  # (L,)
    camera_shapes: tuple[tuple[int, ...], ...]  # raw camera image shapes: a change forces a keyframe


@dataclasses.dataclass
class _Cache:
    vision: list[list[list[KeyValueCache]]]  # [image][tower][block]
    projected: torch.Tensor  # (num_images, patches, hidden): projector output of every patch
    llm: list[KeyValueCache]  # one per LLM layer
    references: torch.Tensor  # (num_images, 224, 224, 3) uint8: the pixels each patch's state was computed from
    attention_scores: torch.Tensor  # (visual tokens,) prompt-to-vision attention of the last query
    prompt_ids: torch.Tensor
    camera_shapes: tuple[tuple[int, ...], ...]
    queries_since_keyframe: int
    last_time: float


class CtrEngine:
    def __init__(self, model: OpenVlaOft, tokens: PromptTokens, config: CtrConfig | None = None) -> None:
        self.model = model
        self.tokens = tokens
        self.config = config or CtrConfig()
        architecture = model.architecture
        num_layers = architecture.llm.num_layers
        layer = self.config.attention_layer
        if not -num_layers <= layer < num_layers:
            raise ValueError(f'attention_layer {layer} out of range for a {num_layers}-layer LLM')
        self.probe_layer = layer % num_layers
        self.device = next(model.parameters()).device
        self.query_index = 0
        self.keyframe_count = 0
        self.reset_count = 0
        self._cache: _Cache | None = None
        self._pending_reason = 'first_query'
        self.visual_noise: VisualNoise | None = None  # the fragility control only (see VisualNoise)
        self._noise_generator = torch.Generator()

    @property
    def cached_llm(self) -> list[KeyValueCache]:
        """Per LLM layer, the keys and values the last query attended over: fresh at computed positions, carried
        over from earlier queries at reused ones (empty before the first query)."""
        return self._cache.llm if self._cache is not None else []

    @property
    def cached_visual_tokens(self) -> torch.Tensor | None:
        """(num_images, patches, hidden): the visual tokens the last query fed the LLM (projector outputs)."""
        return self._cache.projected if self._cache is not None else None

    def reset(self, reason: str = 'episode_reset') -> None:
        """Drop every cache: the next query is a keyframe with this reason."""
        self._cache = None
        self._pending_reason = reason
        self.reset_count += 1
        if self.visual_noise is not None:
            self._noise_generator.manual_seed(self.visual_noise.seed)

    def _keyframe_reason(self, query: ModelInput, now: float) -> str:
        cache, config = self._cache, self.config
        if not config.enabled:
            return 'ctr_disabled'
        if cache is None:
            return self._pending_reason
        if cache.camera_shapes != query.camera_shapes:
            return 'camera_changed'
        if not torch.equal(cache.prompt_ids, query.prompt_ids):
            return 'instruction_changed'
        if now - cache.last_time > config.input_timeout:
            return 'input_gap'
        if cache.queries_since_keyframe >= config.keyframe_interval:
            return 'interval'
        return ''

    def _synchronize(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _clock(self) -> float:
        self._synchronize()
        return time.perf_counter()

    @torch.inference_mode()
    def step(self, query: ModelInput, timestamp: float | None = None) -> tuple[torch.Tensor, StepReport]:
        """Normalised actions (chunk, action_dim) fp32 and the report of this query. timestamp: seconds (the camera
        stamp), used for the input-gap keyframe; default: now."""
        config, model = self.config, self.model
        architecture = model.architecture
        num_images, patches = architecture.action.num_images, architecture.patches_per_image
        now = time.monotonic() if timestamp is None else timestamp
        times = StageTimes()

        started = self._clock()
        images = torch.from_numpy(np.stack(query.model_images)).to(self.device)
        reason = self._keyframe_reason(query, now)
        previous_scores = None if reason or self._cache is None else self._cache.attention_scores
        if reason:
            masks = keyframe_masks(num_images, patches, self.device)
        else:
            masks = decide_masks(images, self._cache.references, previous_scores, config)
        reuse_vision, reuse_llm = masks.reuse_vision, masks.reuse_llm
        times.mask = self._clock() - started

        if reason:
            self._cache = self._empty_cache(images)
            self.keyframe_count += 1
        cache = self._cache
        if self.visual_noise is not None:
            self._add_visual_noise(cache, num_images * patches)
        self._encode_images(query.pixel_values, reuse_vision, cache, times)
        normalized, scores, llm_computed = self._run_llm(query, reuse_llm, cache, times)

        computed_patches = (patches - reuse_vision.sum(dim=1)).tolist()
        prompt_length = len(query.prompt_ids)
        flops = count_step_flops(architecture, prompt_length, computed_patches, llm_computed,
                                 probe_queries=prompt_length - 1 if config.enabled else 0)
        self._update_references(images, reuse_vision | reuse_llm, cache, keyframe=bool(reason))
        cache.attention_scores = scores
        cache.prompt_ids = query.prompt_ids
        cache.camera_shapes = query.camera_shapes
        cache.last_time = now
        cache.queries_since_keyframe = 1 if reason else cache.queries_since_keyframe + 1

        report = StepReport(
            query_index=self.query_index, keyframe_reason=reason, patch_states=masks.patch_states.numpy(),
            attention_scores=None if previous_scores is None else
            previous_scores.view(num_images, patches).cpu().numpy(),
            vision_reuse=reuse_vision.float().mean(dim=1).cpu().numpy(),
            llm_reuse=reuse_llm.float().mean(dim=1).cpu().numpy(),
            flops=flops, full_recompute_flops=count_step_flops(architecture, prompt_length), times=times)
        self.query_index += 1
        return normalized, report

    def _add_visual_noise(self, cache: _Cache, visual_tokens: int) -> None:
        noise = self.visual_noise
        if self.config.enabled:
            raise ValueError('visual noise is a control on full recompute: run it with CTR off')
        if len(noise.relative) != len(cache.llm):
            raise ValueError(f'visual noise gives {len(noise.relative)} layers, the LLM has {len(cache.llm)}')
        count = int(round(noise.fraction * visual_tokens))
        positions = 1 + torch.randperm(visual_tokens, generator=self._noise_generator)[:count].sort().values
        for layer, relative in zip(cache.llm, noise.relative):
            layer.noise = KeyValueNoise(positions.to(self.device), relative, self._noise_generator)

    def _empty_cache(self, images: torch.Tensor) -> _Cache:
        architecture = self.model.architecture
        num_images = architecture.action.num_images
        vision = [[[KeyValueCache() for _ in tower.blocks] for tower in self.model.vision_backbone.towers]
                  for _ in range(num_images)]
        projected = torch.empty(num_images, architecture.patches_per_image, architecture.llm.hidden_size,
                                dtype=next(self.model.parameters()).dtype, device=self.device)
        llm = [KeyValueCache() for _ in range(architecture.llm.num_layers)]
        return _Cache(vision, projected, llm, images, torch.empty(0), torch.empty(0), (), 0, 0.0)

    def _encode_images(self, pixel_values: torch.Tensor, reuse: torch.Tensor, cache: _Cache,
                       times: StageTimes) -> None:
        """Vision towers + projector for the recomputed patches of each image; results land in cache.projected."""
        model = self.model
        for image in range(reuse.shape[0]):
            reused = reuse[image]
            rows = None if not bool(reused.any()) else (~reused).nonzero().squeeze(1)
            if rows is not None and rows.numel() == 0:
                continue  # every patch of this image reused: its projector outputs stand
            started = self._clock()
            features = model.vision_backbone(pixel_values[image:image + 1], rows, cache.vision[image])[0]
            projector_started = self._clock()
            projected = model.projector(features)
            if rows is None:
                cache.projected[image] = projected
            else:
                cache.projected[image, rows] = projected
            finished = self._clock()
            times.vision += projector_started - started
            times.projector += finished - projector_started

    def _run_llm(self, query: ModelInput, reuse: torch.Tensor, cache: _Cache, times: StageTimes
                 ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Returns the normalised actions, the prompt-to-vision attention scores measured at the probe layer, and
        the number of positions computed per layer."""
        model, tokens, config = self.model, self.tokens, self.config
        llm = model.language_model.model
        num_layers = len(llm.layers)
        started = self._clock()
        layout = model.layout(len(query.prompt_ids))
        visual_tokens, length = layout.num_visual_tokens, layout.length
        bos, rest = model.text_embeddings(query.prompt_ids, tokens.space_id, tokens.stop_id,
                                          query.normalized_proprio)
        visual = cache.projected.reshape(1, visual_tokens, -1)
        positions = torch.arange(length, device=self.device)
        prompt_positions = torch.arange(layout.prompt_positions.start, layout.prompt_positions.stop,
                                        device=self.device)
        probe = AttentionProbe(prompt_positions, torch.arange(1, visual_tokens + 1, device=self.device))
        probe_layer = self.probe_layer if config.enabled else None

        reused = reuse.flatten()
        if not bool(reused.any()):
            hidden = llm(torch.cat([bos, visual, rest], dim=1), positions, caches=cache.llm,
                         probe_layer=probe_layer, probe=probe)
            computed = [length] * num_layers
        else:
            computed_visual = (~reused).nonzero().squeeze(1)
            rows = torch.cat([positions[:1], computed_visual + 1, positions[visual_tokens + 1:]])
            start = min(config.llm_reuse_start_layer, num_layers)
            if start > 0:
                hidden = llm(torch.cat([bos, visual, rest], dim=1), positions, layers=range(start),
                             caches=cache.llm, probe_layer=probe_layer, probe=probe)[:, rows]
            else:
                hidden = torch.cat([bos, visual[:, computed_visual], rest], dim=1)
            if probe_layer is not None and probe_layer >= start:
                # Prompt positions in the compact stream: everything after the visual block keeps its order.
                probe.query_rows = prompt_positions - visual_tokens + computed_visual.numel()
            hidden = llm(hidden, rows, layers=range(start, num_layers), caches=cache.llm, rows=rows,
                         probe_layer=probe_layer, probe=probe)
            computed = [length] * start + [len(rows)] * (num_layers - start)
        head_started = self._clock()
        slots = layout.num_action_slots
        normalized = model.predict_actions(hidden[0, -(slots + 2):-2])
        finished = self._clock()
        times.llm += head_started - started
        times.head += finished - head_started
        scores = probe.scores if probe.scores is not None else torch.zeros(visual_tokens, device=self.device)
        return normalized, scores, computed

    def _update_references(self, images: torch.Tensor, reused: torch.Tensor, cache: _Cache,
                           keyframe: bool) -> None:
        """Remember the pixels each cached patch state was computed from."""
        if keyframe or self.config.reference == 'query':
            cache.references = images
            return
        grid = int(reused.shape[1] ** 0.5)
        recomputed_pixels = (~reused).view(-1, grid, grid).repeat_interleave(PATCH_SIZE, 1) \
            .repeat_interleave(PATCH_SIZE, 2)
        cache.references = torch.where(recomputed_pixels[..., None], images, cache.references)
