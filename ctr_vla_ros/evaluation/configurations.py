"""The configurations an evaluation can compare: the CTR presets, the paper's switch ablation, a parameter file's
`ctr:` section (e.g. what ctr-vla-sweep recommends), and the fragility control (`fragility`: full recompute with
random noise of the size `paper`'s reuse introduces into the LLM's keys and values, see `VisualNoise`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.ctr.engine import VisualNoise
from ctr_vla_ros.benchmarks.measurement import RESULTS_DIR

CONFIGS: dict[str, CtrConfig] = {
    **PRESETS,
    'vision_only': PRESETS['paper'].replace(llm_reuse=False),
    'llm_only': PRESETS['paper'].replace(vision_reuse=False),
    # Candidate rules (the reuse-rule issue): a preset's mask, reused tokens kept at LLM layer 0 (exact there) and
    # pruned above it (see CtrConfig.llm_prune_layer); the task-relevance probe reads layer 0, which every token
    # reaches.
    'paper_pruned': PRESETS['paper'].replace(llm_prune_layer=1, attention_layer=0),
    'fast_pruned': PRESETS['prune_static'],  # the name it was evaluated under before it became a preset
    # fast_pruned loses its successes at the release over the plate, where the arm slows down and the gripper
    # command turns: the same with precise mode at SpecPrune-VLA's translation threshold (0.4) and a gripper command
    # that moves by half its range within a chunk.
    'fast_pruned_precise': PRESETS['fast'].replace(llm_prune_layer=1, attention_layer=0, precise_speed=0.4,
                                                   precise_gripper_change=0.5),
    # fast_pruned reuses 75-80% of the wrist camera during the lost releases: the same with at most 150 of an
    # image's 256 patches reused (59%), between paper's cap (120) and none.
    'fast_pruned_capped': PRESETS['fast'].replace(llm_prune_layer=1, attention_layer=0, max_reuse_per_image=150),
    # fast_pruned keeps only 32 of the 512 visual tokens fresh for task relevance: the same with the paper's 160.
    'fast_pruned_relevant': PRESETS['fast'].replace(llm_prune_layer=1, attention_layer=0, top_k=160),
    # fast_pruned with relevance ranked by the positions the action head reads (relevance_queries 'action'), whose
    # attention is meaningful from LLM layer 1 on: the probe reads layer 1 and pruning starts at layer 2.
    'fast_pruned_action': PRESETS['fast'].replace(llm_prune_layer=2, attention_layer=1, relevance_queries='action'),
    # prune_static with the consistency guard at 0.4: on small_llm4 with full recompute, 95% of consecutive chunks
    # start within 0.4 (normalised translation) of where the previous one ended (3925 pairs of the 201-episode run).
    'prune_static_guarded': PRESETS['prune_static'].replace(consistency_threshold=0.4),
    # prune_static with action reuse after FlashVLA: the last chunk again, no model run, when the mask reuses at least
    # half of the visual tokens after two chunks that differ by at most 0.1 on average (with full recompute on
    # small_llm4, consecutive chunks differ by 0.12 at the median: 3055 pairs of the 200-episode run), once in a row.
    'prune_static_action_reuse': PRESETS['prune_static'].replace(action_reuse_static=0.5, action_reuse_deviation=0.1),
}
FRAGILITY = 'fragility'
FRAGILITY_OF = 'paper'  # the configuration whose deviation the fragility control reproduces


@dataclasses.dataclass(frozen=True)
class Configuration:
    ctr: CtrConfig
    noise: VisualNoise | None = None  # the fragility control only

    def to_json(self) -> dict[str, Any]:
        # A disabled engine reads no other CTR setting: those are stored as the defaults, so that a change of the
        # defaults leaves `off` (and the fragility control) the configuration it was, and its episodes are kept.
        ctr = self.ctr if self.ctr.enabled else CtrConfig(enabled=False)
        return dataclasses.asdict(dataclasses.replace(self, ctr=ctr))

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Configuration:
        noise = values.get('noise')
        return cls(CtrConfig(**values['ctr']), None if noise is None else
                   VisualNoise(noise['fraction'], tuple(noise['relative']), noise['seed']))


def ctr_config(name: str) -> CtrConfig:
    """A CTR configuration by name (CONFIGS) or from a parameter file's `ctr:` section (a path ending in .yaml)."""
    if name in CONFIGS:
        return CONFIGS[name]
    if not name.endswith(('.yaml', '.yml')):
        raise ValueError(f'not one of {sorted(CONFIGS)} and not a .yaml file')
    return CtrConfig.from_yaml(name)


def fragility_noise(checkpoint_name: str, results_dir: Path = RESULTS_DIR) -> VisualNoise:
    """Noise of the size `paper` introduces on this checkpoint: the share of visual tokens it reuses and the relative
    error of their keys and values at each layer (their mean), from the staleness measurement."""
    path = results_dir / f'staleness_{checkpoint_name}.json'
    if not path.is_file():
        raise ValueError(f'{path} is missing: measure it first (python -m ctr_vla_ros.evaluation.staleness)')
    summaries = [summary for key, summary in json.loads(path.read_text())['summaries'].items()
                 if key.endswith(f' / {FRAGILITY_OF}') and 'keys' in summary]
    if not summaries:
        raise ValueError(f'{path} has no measurement of {FRAGILITY_OF!r}')
    layers = len(summaries[0]['keys'])
    relative = tuple(sum(summary['keys'][layer] + summary['values'][layer] for summary in summaries)
                     / (2 * len(summaries)) for layer in range(layers))
    fraction = sum(summary['mean_reused'] for summary in summaries) / len(summaries)
    return VisualNoise(fraction, relative)


def configuration(name: str, checkpoint_name: str) -> Configuration:
    """A configuration by name, parameter file, or the fragility control of this checkpoint."""
    if name == FRAGILITY:
        return Configuration(CONFIGS['off'], fragility_noise(checkpoint_name))
    return Configuration(ctr_config(name))
