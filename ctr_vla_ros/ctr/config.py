"""All CTR settings in one validated object, loadable from YAML (the `ctr:` section of the node's config file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ctr_vla_ros.typed_config import build_dataclass

STATIC_METRICS = ('gray_difference', 'rgb_cosine')
REFERENCES = ('patch', 'query')
RELEVANCE_QUERIES = ('prompt', 'action')


@dataclasses.dataclass(frozen=True)
class CtrConfig:
    # Master switch. Off: every query recomputes everything through the same code path (the fair baseline).
    enabled: bool = True
    # The paper's switch ablation: reuse in the vision encoder / in the LLM.
    vision_reuse: bool = True
    llm_reuse: bool = True
    # Static patches: mean absolute grayscale difference in [0, 1] below `difference_threshold`, or RGB cosine
    # similarity above `cosine_threshold` (VLA-Cache's metric).
    # The defaults are the `prune_static` preset (see PRESETS), the rule that kept full recompute's success.
    static_metric: str = 'gray_difference'
    difference_threshold: float = 0.02
    cosine_threshold: float = 0.996
    # What a patch is compared with: 'query' = the previous query's image (the paper); 'patch' = the pixels it had
    # when it was last recomputed, so slow drift cannot accumulate unnoticed over queries.
    reference: str = 'patch'
    # Task relevance: the top_k visual tokens (over all cameras) by the previous query's prompt-to-vision attention
    # at LLM layer `attention_layer` (negative counts from the last layer) are always recomputed.
    top_k: int = 32
    attention_layer: int = 0
    # Whose attention ranks the visual tokens: 'prompt' (the instruction's tokens, the paper and VLA-Cache) or
    # 'action' (the positions the action head reads, SpecPrune-VLA's alternative): what the actions are decoded from
    # reads the goal object even where the instruction's words look elsewhere (a static plate that reuse would
    # otherwise prune during the carry).
    relevance_queries: str = 'prompt'
    # At most this many reused patches per image (0: no cap). The public OpenVLA-OFT setting is 120 of 256.
    max_reuse_per_image: int = 0
    # Every keyframe_interval-th query recomputes everything and refreshes every cache.
    keyframe_interval: int = 10
    # A gap between queries longer than this (seconds) forces a keyframe.
    input_timeout: float = 1.0
    # LLM layers before this one compute every position; from it on, reused visual positions keep cached K/V.
    llm_reuse_start_layer: int = 0
    # From this LLM layer on, reused visual positions are left out (pruned: neither computed nor attended) instead of
    # keeping cached K/V (-1: never, the paper). Why: the LLM is bidirectional, so a cached token's K/V above layer 0
    # were computed from an earlier query's whole sequence (its proprio, its moving patches) and carry that stale
    # context into the action; at layer 0 they depend on the token alone and are exact for a reused vision state.
    # While every query since the keyframe had exactly the keyframe's inputs, nothing cached is stale and the cached
    # keys/values are kept instead (so reuse on unchanged inputs reproduces the full recompute with pruning too).
    # The task-relevance probe (attention_layer) must read a layer before it, where every token still has keys.
    llm_prune_layer: int = 1
    # Precise mode, an action-aware rule after SpecPrune-VLA's: while the arm is about to act on something (it moves
    # slowly, or the gripper command changes), every query recomputes everything, because a grasp or a release is
    # decided by the few pixels that move least. A predicted chunk (in normalised action units, OpenVLA-OFT's layout:
    # x y z, three rotations, gripper last) is precise when its mean end-effector translation (the norm of the first
    # three dimensions, averaged over the chunk) is below `precise_speed` (0: never), or its gripper command spans
    # more than `precise_gripper_change` within the chunk (0: never). After a precise chunk the next query is a
    # keyframe (reason 'precise'); the mode ends with the first full query whose chunk is not precise. A query that
    # reused tokens and predicted a precise chunk is re-run at once with full recompute and acts on that chunk
    # (`precise_requery`, SpecPrune's immediate re-query on the switch; both runs count in its FLOPs).
    precise_speed: float = 0.0
    precise_gripper_change: float = 0.0
    precise_requery: bool = True
    # Consistency guard: a query that reused tokens and whose chunk starts more than `consistency_threshold` away from
    # where the previous chunk ended (the norm of the difference of the first three normalised action dimensions,
    # the end-effector translation) is re-run at once with full recompute and acts on that chunk (both runs count in
    # its FLOPs; reason 'consistency'; 0: never). The policy's chunks join up smoothly when nothing unexpected happens,
    # so a jump right after reuse points at stale tokens rather than at the scene.
    consistency_threshold: float = 0.0
    # Action reuse, after FlashVLA: no model call at all while the scene and the actions are steady. A query whose mask
    # reuses at least `action_reuse_static` of the visual tokens (all cameras; 0: never), after two computed chunks
    # that differ by at most `action_reuse_deviation` (mean absolute difference, normalised action units, gripper
    # included, so a grasp or a release is never steady), gets the last computed chunk again: no FLOPs, every cache as
    # it was. At most `action_reuse_max` such queries in a row; keyframes always run the model.
    action_reuse_static: float = 0.0
    action_reuse_deviation: float = 0.1
    action_reuse_max: int = 1
    # Mask-consistency ablation: scale the static threshold on one side only (1.0 and 1.0 = one unified mask).
    vision_threshold_scale: float = 1.0
    llm_threshold_scale: float = 1.0
    # Static shapes (GPU): the rows each query recomputes are padded to a multiple of this many (1: exactly the
    # rows the mask asks for), so a few shapes cover every query; padding repeats a real row and changes nothing.
    row_bucket: int = 1
    # Replay each padded shape of the vision towers and the LLM as a CUDA graph, captured at start-up (the LLM's on
    # the first query of each prompt length). Needs the model on a CUDA device; pick row_bucket 32 or so with it.
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.static_metric not in STATIC_METRICS:
            problems.append(f'static_metric must be one of {STATIC_METRICS}, got {self.static_metric!r}')
        if self.reference not in REFERENCES:
            problems.append(f'reference must be one of {REFERENCES}, got {self.reference!r}')
        if self.relevance_queries not in RELEVANCE_QUERIES:
            problems.append(f'relevance_queries must be one of {RELEVANCE_QUERIES}, got {self.relevance_queries!r}')
        if not 0 <= self.difference_threshold <= 1:
            problems.append(f'difference_threshold must be in [0, 1], got {self.difference_threshold}')
        if not -1 <= self.cosine_threshold <= 1:
            problems.append(f'cosine_threshold must be in [-1, 1], got {self.cosine_threshold}')
        for name in ('top_k', 'max_reuse_per_image', 'llm_reuse_start_layer'):
            if getattr(self, name) < 0:
                problems.append(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.llm_prune_layer < -1 or 0 <= self.llm_prune_layer < self.llm_reuse_start_layer:
            problems.append(f'llm_prune_layer must be -1 (never) or >= llm_reuse_start_layer '
                            f'({self.llm_reuse_start_layer}), got {self.llm_prune_layer}')
        if self.precise_speed < 0 or self.precise_gripper_change < 0:
            problems.append(f'precise_speed and precise_gripper_change must be >= 0 (0: off), got '
                            f'{self.precise_speed} and {self.precise_gripper_change}')
        if self.consistency_threshold < 0:
            problems.append(f'consistency_threshold must be >= 0 (0: off), got {self.consistency_threshold}')
        if not 0 <= self.action_reuse_static <= 1:
            problems.append(f'action_reuse_static must be in [0, 1] (0: off), got {self.action_reuse_static}')
        if self.action_reuse_deviation < 0 or self.action_reuse_max < 1:
            problems.append(f'action_reuse_deviation must be >= 0 and action_reuse_max >= 1, got '
                            f'{self.action_reuse_deviation} and {self.action_reuse_max}')
        if self.row_bucket < 1:
            problems.append(f'row_bucket must be >= 1, got {self.row_bucket}')
        if self.keyframe_interval < 1:
            problems.append(f'keyframe_interval must be >= 1, got {self.keyframe_interval}')
        if self.input_timeout <= 0:
            problems.append(f'input_timeout must be > 0, got {self.input_timeout}')
        if self.vision_threshold_scale <= 0 or self.llm_threshold_scale <= 0:
            problems.append('threshold scales must be > 0')
        if problems:
            raise ValueError('invalid CTR settings: ' + '; '.join(problems))

    @property
    def precise_mode(self) -> bool:
        return self.enabled and (self.precise_speed > 0 or self.precise_gripper_change > 0)

    @property
    def unified(self) -> bool:
        return self.vision_threshold_scale == self.llm_threshold_scale

    def replace(self, **changes: Any) -> CtrConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CtrConfig:
        return build_dataclass(cls, values, 'ctr')

    @classmethod
    def from_parameters(cls, values: dict[str, Any], prefix: str = 'ctr.') -> CtrConfig:
        """From flat node parameters ({'ctr.top_k': 160, 'checkpoint': ...}): the ones under `prefix`."""
        return cls.from_dict({name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)})

    @classmethod
    def from_yaml(cls, path: str | Path, node: str = 'ctr_vla_policy') -> CtrConfig:
        """The `ctr:` section of a YAML file: a node parameter file (<node>: ros__parameters: ctr:) or a plain one
        (ctr: at the top). Settings it does not name keep their defaults."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if node in data:
            data = data[node].get('ros__parameters', {})
        return cls.from_dict(data.get('ctr', {}))

    def to_parameters_yaml(self, node: str = 'ctr_vla_policy', comment: str = '') -> str:
        """A parameter file that sets exactly these settings on the node (read after the others: `--params-file`,
        or the launch file's `ctr_params`). Doubles keep a decimal point, as ROS parameter files require."""
        lines = [f'# {line}'.rstrip() for line in comment.splitlines()]
        lines += [f'{node}:', '  ros__parameters:', '    ctr:']
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                text = 'true' if value else 'false'
            elif isinstance(value, float):
                text = f'{value:.6f}'.rstrip('0')
                text += '0' if text.endswith('.') else ''
            elif isinstance(value, str):
                text = f"'{value}'"
            else:
                text = str(value)
            lines.append(f'      {field.name}: {text}')
        return '\n'.join(lines) + '\n'


# Documented presets (see the README's CTR settings). Every preset spells out the settings it chooses, so a change of
# the defaults cannot silently change what a preset measures.
PRESETS = {
    'off': CtrConfig(enabled=False),
    # The CTR paper's method and settings exactly: static tokens keep cached keys/values at every LLM layer.
    'paper': CtrConfig(difference_threshold=0.004, top_k=160, keyframe_interval=5, max_reuse_per_image=120,
                       reference='query', attention_layer=-1, llm_prune_layer=-1),
    # The paper's settings, each patch compared with the pixels it was last recomputed from.
    'patch_reference': CtrConfig(difference_threshold=0.004, top_k=160, keyframe_interval=5,
                                 max_reuse_per_image=120, reference='patch', attention_layer=-1, llm_prune_layer=-1),
    # More reuse: no per-image cap, fewer forced task-relevant patches, rarer keyframes, a looser threshold.
    'fast': CtrConfig(difference_threshold=0.02, top_k=32, keyframe_interval=10, max_reuse_per_image=0,
                      reference='patch', attention_layer=-1, llm_prune_layer=-1),
    # The default: fast's mask, with the static visual tokens it marks pruned from the LLM above layer 0 instead of
    # keeping keys/values cached from an earlier query's context; task relevance read at layer 0. On the trained
    # policy: 54% of the FLOPs saved, 187 successes against full recompute's 188 in 200 paired episodes, where the
    # paper's method loses 12 (README, Evaluation).
    'prune_static': CtrConfig(difference_threshold=0.02, top_k=32, keyframe_interval=10, max_reuse_per_image=0,
                              reference='patch', attention_layer=0, llm_prune_layer=1),
}
