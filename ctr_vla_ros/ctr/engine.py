"""The CTR engine: one unified mask per camera image drives reuse in the vision encoder and in the LLM.

Per query:
1. Keyframe? (first query, reset, instruction change, camera change, input gap, precise mode, every
   keyframe_interval-th query.) A keyframe recomputes everything and replaces every cache.
2. Otherwise the mask: static patches (vs their reference pixels) that are not among the previous query's top-K
   attended visual tokens (by the prompt's or the action positions' attention) are reused (see `mask.py`).
3. Vision encoder, per image: the recomputed patches (and DINOv2's cls/register tokens) are gathered once and run
   through every block as a compact stream; their queries attend over the full key/value cache of the block, where
   reused patches keep the keys/values of the query that last computed them. Only recomputed rows are written back.
   The projector runs on recomputed patches only; its cached output stands in for reused ones.
4. LLM: reused visual positions keep their cached K/V (from `llm_reuse_start_layer` on); every other position is
   computed with RoPE at its absolute position and attends to the full K/V with no mask, as the baseline. From
   `llm_prune_layer` on (if set) reused positions are left out instead: the computed ones attend among themselves;
   except while every query since the keyframe had exactly the keyframe's inputs (images, proprio, prompt), when
   the cached keys/values above layer 0 were computed in this very sequence, carry nothing stale, and are kept.
   At one layer, one extra small matmul measures prompt-to-vision (or action-to-vision) attention for the next
   query's task-relevant set.
5. The action head reads the final-norm hidden states one position left of the action slots.
6. Precise mode (if set): a chunk that moves slowly or changes the gripper command makes the next query a keyframe;
   a query that reused tokens and predicted such a chunk is re-run at once with full recompute (`precise_chunk`).
   Action reuse (if set): a query whose mask finds the scene static enough after two nearly equal chunks runs no
   model at all and gets the last chunk again (`ctr.action_reuse_*`).

With a zero mask, or with inputs identical to those that produced the cache and every patch reused, the output
equals the plain model's, with or without pruning (tests check both).

The step's shapes: each image's recomputed rows and the LLM's are counted in one read from the device right after
the mask (the only wait before the actions are read), selected on the device, and padded to a multiple of
`ctr.row_bucket` (1: the exact count). Every cache is allocated once and written in place. With `ctr.cuda_graphs`
each padded shape of the vision towers and of the LLM is a CUDA graph, captured once and replayed (see
`static_shapes.py`). Stage times come from CUDA events on a GPU, read after the actions, so timing never waits.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.ctr.mask import PatchState, decide_masks, keyframe_masks
from ctr_vla_ros.ctr.static_shapes import CudaGraphs, bucket_size, bucket_sizes, padded_rows
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

    def __add__(self, other: StageTimes) -> StageTimes:
        """The times of both runs (a query that was re-run)."""
        return StageTimes(*(getattr(self, field.name) + getattr(other, field.name)
                            for field in dataclasses.fields(self)))


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
    actions_reused: bool = False  # no model ran: the last computed chunk again (ctr.action_reuse_static)

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


def precise_chunk(normalized: torch.Tensor, config: CtrConfig) -> bool:
    """Does this chunk (chunk, action_dim) of normalised actions ask for precise mode (see CtrConfig.precise_speed):
    a mean end-effector translation below `precise_speed`, or a gripper command spanning more than
    `precise_gripper_change`?"""
    if not config.precise_mode:
        return False
    speed = float(normalized[:, :3].norm(dim=1).mean())
    gripper_span = float(normalized[:, -1].max() - normalized[:, -1].min())
    slow = config.precise_speed > 0 and speed < config.precise_speed
    gripping = config.precise_gripper_change > 0 and gripper_span > config.precise_gripper_change
    return slow or gripping


@dataclasses.dataclass
class ModelInput:
    """One query in model form (built by `VlaPolicy.prepare`)."""

    model_images: list[np.ndarray]  # 224x224x3 uint8, what the model sees
    pixel_values: torch.Tensor  # (num_images, 6, 224, 224)
    normalized_proprio: torch.Tensor
    prompt_ids: torch.Tensor  # (L,) on the CPU
    camera_shapes: tuple[tuple[int, ...], ...]  # raw camera image shapes: a change forces a keyframe


@dataclasses.dataclass
class _Cache:
    references: torch.Tensor  # (num_images, 224, 224, 3) uint8: the pixels each patch's state was computed from
    attention_scores: torch.Tensor  # (visual tokens,) prompt-to-vision attention of the last query
    prompt_ids: torch.Tensor  # on the CPU
    camera_shapes: tuple[tuple[int, ...], ...]
    queries_since_keyframe: int
    last_time: float
    # The last query's model images and proprio, and whether every query since the keyframe had exactly its inputs:
    # then the cached keys/values above layer 0 carry no other query's context, and pruning keeps them (see
    # CtrConfig.llm_prune_layer), so that reuse on unchanged inputs reproduces the full recompute with pruning too.
    last_images: torch.Tensor
    last_proprio: torch.Tensor
    unchanged_since_keyframe: bool = True


@dataclasses.dataclass
class _LlmBuffers:
    """The LLM side of one prompt length: its caches and the text embeddings a query writes before running."""

    caches: list[KeyValueCache]  # one per LLM layer, over the whole sequence
    bos: torch.Tensor  # (1, 1, hidden)
    rest: torch.Tensor  # (1, length - V - 1, hidden): proprio, prompt, space, action slots, stop


@dataclasses.dataclass
class LlmRows:
    """Per LLM layer: the positions computed, and the positions their queries attend over."""

    computed: list[int]
    attended: list[int]


class _StageClock:
    """Stage durations of one query: perf_counter on the CPU, CUDA events on a GPU (resolved by `times()` after the
    step's results are on the host, so timing never makes the step wait)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.spans: list[tuple[str, object, object]] = []

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def span(self, stage: str, start: object, end: object) -> None:
        self.spans.append((stage, start, end))

    def times(self) -> StageTimes:
        times = StageTimes()
        for stage, start, end in self.spans:
            if self.cuda:
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000.0
            else:
                seconds = end - start
            setattr(times, stage, getattr(times, stage) + seconds)
        return times


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
        prune = self.config.llm_prune_layer
        if self.config.enabled and prune >= num_layers:
            raise ValueError(f'llm_prune_layer {prune} out of range for a {num_layers}-layer LLM')
        if self.config.enabled and 0 <= prune <= self.probe_layer:
            raise ValueError(f'attention_layer {layer} (layer {self.probe_layer}) must come before llm_prune_layer '
                             f'{prune}: pruned tokens have no keys to be attended there')
        if self.config.enabled and self.config.relevance_queries == 'action' and self.probe_layer == 0:
            raise ValueError("relevance_queries 'action' needs attention_layer after layer 0: the action slots enter "
                             'the LLM as zeros, so at layer 0 their attention does not tell visual tokens apart')
        if self.config.precise_mode and architecture.action.action_dim < 4:
            raise ValueError('precise mode reads x y z and the gripper from the actions: it needs at least 4 '
                             f'action dimensions, the model has {architecture.action.action_dim}')
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        if self.config.cuda_graphs and self.device.type != 'cuda':
            raise ValueError(f'ctr.cuda_graphs needs the model on a CUDA device, it is on {self.device}')
        self.query_index = 0
        self.keyframe_count = 0
        self.reset_count = 0
        self._cache: _Cache | None = None
        self._pending_reason = 'first_query'
        self._precise = False  # the last chunk asked for precise mode (see precise_chunk)
        self._last_action: torch.Tensor | None = None  # the last chunk's last normalised action (consistency guard)
        self._computed_chunks: list[torch.Tensor] = []  # the last two chunks the model computed (action reuse)
        self._actions_reused_in_row = 0
        self.visual_noise: VisualNoise | None = None  # the fragility control only (see VisualNoise)
        self._noise_generator = torch.Generator()
        # Allocated once and written in place (captured graphs read them): the step's inputs and every cache.
        num_images, patches = architecture.action.num_images, architecture.patches_per_image
        self._pixel_values = torch.zeros(num_images, 6, 224, 224, dtype=self.dtype, device=self.device)
        self._vision_caches = [[[KeyValueCache.allocate(tower.config.heads, tower.config.num_prefix_tokens + patches,
                                                        tower.config.width // tower.config.heads, self.dtype,
                                                        self.device) for _ in tower.blocks]
                                for tower in model.vision_backbone.towers] for _ in range(num_images)]
        self._projected = torch.zeros(num_images, patches, architecture.llm.hidden_size, dtype=self.dtype,
                                      device=self.device)
        self._llm_buffers: dict[int, _LlmBuffers] = {}  # per prompt length
        self._rows: dict[tuple[str, int], torch.Tensor] = {}  # per (stage, bucket): the selected rows
        self._graphs = CudaGraphs(self.device) if self.config.cuda_graphs else None
        if self._graphs is not None:
            self._capture_vision_graphs()

    @property
    def cached_llm(self) -> list[KeyValueCache]:
        """Per LLM layer, the keys and values the last query attended over: fresh at computed positions, carried
        over from earlier queries at reused ones (empty before the first query)."""
        if self._cache is None:
            return []
        return self._llm_buffers[len(self._cache.prompt_ids)].caches

    @property
    def cached_visual_tokens(self) -> torch.Tensor | None:
        """(num_images, patches, hidden): the visual tokens the last query fed the LLM (projector outputs)."""
        return self._projected if self._cache is not None else None

    def reset(self, reason: str = 'episode_reset') -> None:
        """Drop every cache: the next query is a keyframe with this reason."""
        self._cache = None
        self._pending_reason = reason
        self._precise = False
        self._last_action = None
        self._computed_chunks = []
        self._actions_reused_in_row = 0
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
        if self._precise:
            return 'precise'
        if cache.queries_since_keyframe >= config.keyframe_interval:
            return 'interval'
        return ''

    @torch.inference_mode()
    def step(self, query: ModelInput, timestamp: float | None = None) -> tuple[torch.Tensor, StepReport]:
        """Normalised actions (chunk, action_dim) fp32 and the report of this query. timestamp: seconds (the camera
        stamp), used for the input-gap keyframe; default: now."""
        now = time.monotonic() if timestamp is None else timestamp
        reason = self._keyframe_reason(query, now)
        normalized, report = self._compute(query, now, reason, may_reuse_actions=not reason and self._actions_steady())
        if report.actions_reused:
            self._actions_reused_in_row += 1
            self.query_index += 1
            return normalized, report
        precise = precise_chunk(normalized, self.config)
        rerun = ''
        if report.vision_reuse.any() or report.llm_reuse.any():
            if precise and self.config.precise_requery:
                rerun = 'precise_requery'  # the chunk that asks for precision came from reused tokens
            elif self._inconsistent(normalized):
                rerun = 'consistency'
        if rerun:  # act on a full recompute of the same inputs
            reused = report
            normalized, report = self._compute(query, now, rerun)
            report.flops, report.times = reused.flops + report.flops, reused.times + report.times
            precise = precise_chunk(normalized, self.config)
        self._precise = precise
        self._last_action = normalized[-1].clone()
        self._computed_chunks = [*self._computed_chunks[-1:], normalized.clone()]
        self._actions_reused_in_row = 0
        self.query_index += 1
        return normalized, report

    def _actions_steady(self) -> bool:
        """Action reuse is on, allowed once more in a row, and the last two computed chunks nearly agree."""
        config = self.config
        if config.action_reuse_static <= 0 or len(self._computed_chunks) < 2 or \
                self._actions_reused_in_row >= config.action_reuse_max:
            return False
        previous, last = self._computed_chunks
        return float((last - previous).abs().mean()) <= config.action_reuse_deviation

    def _reused_actions(self, query: ModelInput, now: float, previous_scores: torch.Tensor,
                        clock: _StageClock) -> tuple[torch.Tensor, StepReport]:
        """The last computed chunk again, and the report of a query that ran no model: no FLOPs, and no cache changes
        but the query count and time, so the next query's mask still compares with the pixels the caches hold."""
        cache, architecture = self._cache, self.model.architecture
        cache.queries_since_keyframe += 1
        cache.last_time = now
        num_images, patches = architecture.action.num_images, architecture.patches_per_image
        full = count_step_flops(architecture, len(query.prompt_ids))
        report = StepReport(
            query_index=self.query_index, keyframe_reason='',
            patch_states=np.full((num_images, patches), PatchState.REUSED, dtype=np.uint8),
            attention_scores=previous_scores.view(num_images, patches).cpu().numpy(),
            vision_reuse=np.ones(num_images, dtype=np.float32), llm_reuse=np.ones(num_images, dtype=np.float32),
            flops=StepFlops({kind: 0.0 for kind in full.vision}, 0.0, 0.0, 0.0, 0.0), full_recompute_flops=full,
            times=clock.times(), actions_reused=True)
        return self._computed_chunks[-1].clone(), report

    def _inconsistent(self, normalized: torch.Tensor) -> bool:
        """Does this chunk start further than `consistency_threshold` from where the previous one ended?"""
        threshold = self.config.consistency_threshold
        if threshold <= 0 or self._last_action is None:
            return False
        return float((normalized[0, :3] - self._last_action[:3]).norm()) > threshold

    def _compute(self, query: ModelInput, now: float, reason: str,
                 may_reuse_actions: bool = False) -> tuple[torch.Tensor, StepReport]:
        """One run of the model on this query: a keyframe if `reason` is set, with reuse otherwise; or, if
        `may_reuse_actions` (the last chunks are steady) and the mask reuses at least `action_reuse_static` of the
        visual tokens, no run at all (see `_reused_actions`)."""
        config, model = self.config, self.model
        architecture = model.architecture
        num_images, patches = architecture.action.num_images, architecture.patches_per_image
        clock = _StageClock(self.device)

        started = clock.mark()
        images = torch.from_numpy(np.stack(query.model_images)).to(self.device)
        prompt_ids = query.prompt_ids.to(self.device)
        previous_scores = None if reason or self._cache is None else self._cache.attention_scores
        if reason:
            masks = keyframe_masks(num_images, patches, self.device)
        else:
            masks = decide_masks(images, self._cache.references, previous_scores, config)
        reuse_vision, reuse_llm = masks.reuse_vision, masks.reuse_llm
        proprio = query.normalized_proprio.to(self.device)
        # With pruning: are the inputs still exactly the keyframe's (see _Cache.unchanged_since_keyframe)?
        compare = not reason and config.llm_prune_layer >= 0 and self._cache.unchanged_since_keyframe
        reads = [(~reuse_vision).sum(dim=1), (~reuse_llm).sum().view(1)]
        if compare:
            same = (images == self._cache.last_images).all() & (proprio == self._cache.last_proprio).all()
            reads.append(same.long().view(1))
        # The one read before the model runs: the row counts, which choose the shapes to run, and that comparison.
        values = torch.cat(reads).tolist()
        counts = values[:num_images + 1]
        clock.span('mask', started, clock.mark())
        visual_tokens = num_images * patches
        if may_reuse_actions and (visual_tokens - counts[-1]) / visual_tokens >= config.action_reuse_static:
            return self._reused_actions(query, now, previous_scores, clock)

        if reason:
            self._cache = _Cache(images, torch.empty(0), query.prompt_ids, query.camera_shapes, 0, now, images,
                                 proprio)
            self.keyframe_count += 1
        cache = self._cache
        cache.unchanged_since_keyframe = bool(reason) or (compare and bool(values[-1]))
        cache.last_images, cache.last_proprio = images, proprio
        pruned = config.llm_prune_layer >= 0 and not cache.unchanged_since_keyframe
        prompt_length = len(query.prompt_ids)
        llm_buffers = self._prepare_llm(prompt_length)
        self._set_visual_noise(llm_buffers.caches, num_images * patches)
        self._embed_text(query, prompt_ids, llm_buffers, clock)
        self._pixel_values.copy_(query.pixel_values)
        computed_patches = self._encode_images(reuse_vision, counts[:-1], clock)
        normalized, scores, llm_rows = self._run_llm(prompt_length, reuse_llm, counts[-1], pruned, llm_buffers,
                                                     clock)

        self._update_references(images, reuse_vision | reuse_llm, cache, keyframe=bool(reason))
        cache.attention_scores = scores
        cache.prompt_ids = query.prompt_ids
        cache.camera_shapes = query.camera_shapes
        cache.last_time = now
        cache.queries_since_keyframe = 1 if reason else cache.queries_since_keyframe + 1

        flops = count_step_flops(architecture, prompt_length, computed_patches, llm_rows.computed, llm_rows.attended,
                                 probe_queries=len(self._relevance_positions(prompt_length)) if config.enabled else 0)
        report = StepReport(
            query_index=self.query_index, keyframe_reason=reason, patch_states=masks.patch_states.cpu().numpy(),
            attention_scores=None if previous_scores is None else
            previous_scores.view(num_images, patches).cpu().numpy(),
            vision_reuse=reuse_vision.float().mean(dim=1).cpu().numpy(),
            llm_reuse=reuse_llm.float().mean(dim=1).cpu().numpy(),
            flops=flops, full_recompute_flops=count_step_flops(architecture, prompt_length), times=clock.times())
        return normalized, report

    def _set_visual_noise(self, caches: list[KeyValueCache], visual_tokens: int) -> None:
        noise = self.visual_noise
        if noise is None:
            for layer in caches:
                layer.noise = None
            return
        if self.config.enabled:
            raise ValueError('visual noise is a control on full recompute: run it with CTR off')
        if len(noise.relative) != len(caches):
            raise ValueError(f'visual noise gives {len(noise.relative)} layers, the LLM has {len(caches)}')
        count = int(round(noise.fraction * visual_tokens))
        positions = 1 + torch.randperm(visual_tokens, generator=self._noise_generator)[:count].sort().values
        for layer, relative in zip(caches, noise.relative):
            layer.noise = KeyValueNoise(positions.to(self.device), relative, self._noise_generator)

    def _bucket(self, count: int, maximum: int) -> int:
        return bucket_size(count, self.config.row_bucket, maximum)

    def _select(self, stage: str, computed: torch.Tensor, bucket: int) -> torch.Tensor:
        """The rows to compute, padded to `bucket`, in the buffer of (stage, bucket) (what a graph of it reads)."""
        rows = padded_rows(computed, bucket)
        if self._graphs is None:
            return rows
        buffer = self._rows.setdefault((stage, bucket), torch.zeros_like(rows))
        buffer.copy_(rows)
        return buffer

    def _run(self, key: tuple, function, clock: _StageClock, stage: str):  # noqa: ANN001, ANN202
        """`function(clock)` eagerly, timing its own stages; or its graph, timed as a whole as `stage`."""
        if self._graphs is None:
            return function(clock)
        started = clock.mark()
        outputs = self._graphs.run(key, function)
        clock.span(stage, started, clock.mark())
        return outputs

    def _vision_function(self, image: int, rows: torch.Tensor):  # noqa: ANN202
        """Vision towers + projector of one image's selected patches, into the projected-token buffer."""
        model = self.model

        def encode(clock: _StageClock | None = None) -> None:
            started = clock.mark() if clock else None
            features = model.vision_backbone(self._pixel_values[image:image + 1], rows, self._vision_caches[image])
            projector_started = clock.mark() if clock else None
            self._projected[image].index_copy_(0, rows, model.projector(features[0]))
            if clock:
                clock.span('vision', started, projector_started)
                clock.span('projector', projector_started, clock.mark())
        return encode

    def _encode_images(self, reuse: torch.Tensor, counts: list[int], clock: _StageClock) -> list[int]:
        """Vision towers + projector for the recomputed patches of each image (their projector outputs land in the
        projected-token buffer; reused patches keep theirs). Returns the patches computed per image, padding
        included."""
        patches = reuse.shape[1]
        computed = []
        for image, count in enumerate(counts):
            bucket = self._bucket(count, patches)
            computed.append(bucket)
            if bucket == 0:
                continue  # every patch of this image reused: its projector outputs stand
            rows = self._select('vision', ~reuse[image], bucket)
            self._run(('vision', image, bucket), self._vision_function(image, rows), clock, 'vision')
        return computed

    def _capture_vision_graphs(self) -> None:
        """Every vision graph, captured now (start-up), on the zero inputs: the first query is a keyframe and
        overwrites whatever the captures wrote."""
        architecture = self.model.architecture
        patches = architecture.patches_per_image
        for image in range(architecture.action.num_images):
            for bucket in bucket_sizes(self.config.row_bucket, patches):
                rows = self._select('vision', torch.ones(patches, dtype=torch.bool, device=self.device), bucket)
                self._graphs.capture(('vision', image, bucket), self._vision_function(image, rows))
        torch.cuda.synchronize(self.device)

    def _prepare_llm(self, prompt_length: int) -> _LlmBuffers:
        """The LLM buffers of this prompt length, allocated on its first query (with graphs, kept for later)."""
        if prompt_length not in self._llm_buffers:
            if self._graphs is None:
                self._llm_buffers.clear()  # only graphs need the buffers of other lengths to stay
            llm = self.model.architecture.llm
            layout = self.model.layout(prompt_length)
            hidden = llm.hidden_size
            self._llm_buffers[prompt_length] = _LlmBuffers(
                [KeyValueCache.allocate(llm.num_heads, layout.length, llm.head_dim, self.dtype, self.device)
                 for _ in range(llm.num_layers)],
                torch.zeros(1, 1, hidden, dtype=self.dtype, device=self.device),
                torch.zeros(1, layout.length - layout.num_visual_tokens - 1, hidden, dtype=self.dtype,
                            device=self.device))
        return self._llm_buffers[prompt_length]

    def _relevance_positions(self, prompt_length: int) -> range:
        """The sequence positions whose attention onto the visual tokens ranks them (ctr.relevance_queries)."""
        layout = self.model.layout(prompt_length)
        return layout.prompt_positions if self.config.relevance_queries == 'prompt' else \
            layout.action_hidden_positions

    def _llm_function(self, prompt_length: int, visual_rows: torch.Tensor, full: bool, pruned: bool,
                      buffers: _LlmBuffers):  # noqa: ANN202
        """The LLM over BOS, the selected visual positions and every text position (`full`: every position, as
        on a keyframe; `pruned`: reused positions left out from `llm_prune_layer` on), then the action head; and the
        positions it computes per layer. The function returns the normalised actions and the task-relevance attention
        scores of the probe layer."""
        model, config = self.model, self.config
        llm = model.language_model.model
        num_layers = len(llm.layers)
        layout = model.layout(prompt_length)
        visual_tokens, length = layout.num_visual_tokens, layout.length
        device = self.device
        positions = torch.arange(length, device=device)
        relevance = self._relevance_positions(prompt_length)
        relevance_positions = torch.arange(relevance.start, relevance.stop, device=device)
        probe_layer = self.probe_layer if config.enabled else None
        start = num_layers if full else min(config.llm_reuse_start_layer, num_layers)
        prune = config.llm_prune_layer if pruned and not full else num_layers
        slots = layout.num_action_slots

        def run(clock: _StageClock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            started = clock.mark() if clock else None
            probe = AttentionProbe(relevance_positions, torch.arange(1, visual_tokens + 1, device=device))
            sequence = torch.cat([buffers.bos, self._projected.reshape(1, visual_tokens, -1), buffers.rest], dim=1)
            rows = torch.cat([positions[:1], visual_rows + 1, positions[visual_tokens + 1:]])
            # Layers before `start` compute every position (all of them, on a keyframe); the rest only `rows`,
            # reused visual positions keeping their cached keys/values until `prune`, left out from it on.
            hidden = llm(sequence, positions, layers=range(start), caches=buffers.caches, rows=positions,
                         probe_layer=probe_layer, probe=probe)[:, rows] if start > 0 else sequence[:, rows]
            if probe_layer is not None and probe_layer >= start:
                # Their rows in the compact stream: everything after the visual block keeps its order.
                probe.query_rows = relevance_positions - visual_tokens + len(visual_rows)
            hidden = llm(hidden, rows, layers=range(start, prune), caches=buffers.caches, rows=rows,
                         probe_layer=probe_layer, probe=probe)
            if prune < num_layers:
                # No cache from `prune` on: the computed rows attend among themselves. A padding row (see
                # static_shapes) repeats the first visual row; here it would count twice as a key: masked out.
                visual_keys = (torch.arange(len(visual_rows), device=device) == 0) | (visual_rows != visual_rows[:1])
                keys = torch.cat([torch.ones(1, dtype=torch.bool, device=device), visual_keys,
                                  torch.ones(length - visual_tokens - 1, dtype=torch.bool, device=device)])
                hidden = llm(hidden, rows, layers=range(prune, num_layers), key_padding_mask=keys[None])
            head_started = clock.mark() if clock else None
            normalized = model.predict_actions(hidden[0, -(slots + 2):-2])
            scores = probe.scores if probe.scores is not None else torch.zeros(visual_tokens, device=device)
            if clock:
                clock.span('llm', started, head_started)
                clock.span('head', head_started, clock.mark())
            return normalized, scores
        computed = len(visual_rows) + length - visual_tokens
        return run, LlmRows([length] * start + [computed] * (num_layers - start),
                            [length] * prune + [computed] * (num_layers - prune))

    def _embed_text(self, query: ModelInput, prompt_ids: torch.Tensor, buffers: _LlmBuffers,
                    clock: _StageClock) -> None:
        """BOS and every position after the visual tokens into the LLM buffers, before the vision towers run: the
        small host-to-device copies this makes then wait for nothing."""
        started = clock.mark()
        bos, rest = self.model.text_embeddings(prompt_ids, self.tokens.space_id, self.tokens.stop_id,
                                               query.normalized_proprio)
        buffers.bos.copy_(bos)
        buffers.rest.copy_(rest)
        clock.span('llm', started, clock.mark())

    def _run_llm(self, prompt_length: int, reuse: torch.Tensor, count: int, pruned: bool, buffers: _LlmBuffers,
                 clock: _StageClock) -> tuple[torch.Tensor, torch.Tensor, LlmRows]:
        """Returns the normalised actions, the task-relevance attention scores measured at the probe layer, and
        the positions computed and attended per layer."""
        visual_tokens = reuse.numel()
        if self._graphs is not None and ('llm', prompt_length, visual_tokens, True, False) not in self._graphs:
            self._capture_llm_graphs(prompt_length, buffers)
        full = count == visual_tokens
        pruned = pruned and not full
        bucket = self._bucket(count, visual_tokens)
        visual_rows = self._select('llm', ~reuse.flatten(), bucket)
        function, computed = self._llm_function(prompt_length, visual_rows, full, pruned, buffers)
        normalized, scores = self._run(('llm', prompt_length, bucket, full, pruned), function, clock, 'llm')
        return normalized.clone(), scores.clone(), computed

    def _capture_llm_graphs(self, prompt_length: int, buffers: _LlmBuffers) -> None:
        """Every LLM graph of a prompt length, captured on its first query (always a keyframe: the instruction is
        new, so the full recompute that follows overwrites whatever the captures wrote)."""
        visual_tokens = self.model.architecture.num_visual_tokens
        every_row = torch.ones(visual_tokens, dtype=torch.bool, device=self.device)
        prunings = [False, True] if self.config.llm_prune_layer >= 0 else [False]
        shapes = [(bucket, False, pruned) for bucket in [0, *bucket_sizes(self.config.row_bucket, visual_tokens)]
                  for pruned in prunings]
        for bucket, full, pruned in [*shapes, (visual_tokens, True, False)]:
            function, _ = self._llm_function(prompt_length, self._select('llm', every_row, bucket), full, pruned,
                                             buffers)
            self._graphs.capture(('llm', prompt_length, bucket, full, pruned), function)

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
