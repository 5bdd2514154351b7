"""The CTR configurations an evaluation can compare: the presets, the paper's switch ablation, or a parameter file's
`ctr:` section (e.g. what ctr-vla-sweep recommends)."""

from __future__ import annotations

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig

CONFIGS: dict[str, CtrConfig] = {
    **PRESETS,
    'vision_only': PRESETS['paper'].replace(llm_reuse=False),
    'llm_only': PRESETS['paper'].replace(vision_reuse=False),
}


def ctr_config(name: str) -> CtrConfig:
    """A configuration by name (CONFIGS) or from a parameter file's `ctr:` section (a path ending in .yaml)."""
    if name in CONFIGS:
        return CONFIGS[name]
    if not name.endswith(('.yaml', '.yml')):
        raise ValueError(f'not one of {sorted(CONFIGS)} and not a .yaml file')
    return CtrConfig.from_yaml(name)
