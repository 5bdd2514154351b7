"""Architecture of an OpenVLA-OFT checkpoint: vision towers, LLM, and the action layout.

The architecture comes from three sources, later ones overriding earlier ones, each explicit:
1. `config.json` of the checkpoint: the known timm tower ids and the Llama `text_config` (HF Llama defaults are the
   Llama-2-7B shape, as in the release).
2. The `ctr_vla_arch` entry of `config.json`, written by our checkpoint generator for non-standard sizes.
3. An architecture override file given by the user (`--arch FILE`, YAML or JSON, same keys as `ctr_vla_arch`).

The action layout (number of images, chunk size, action and proprio dims) is never guessed from anything but these
sources; its defaults are LIBERO's (2 images, chunk 8, 7 action dims, 8 proprio dims).

Override file format (every key optional, a partial file overrides only what it names):

    vision_towers:            # in [DINOv2, SigLIP] order, features are concatenated in this order
      - {kind: dinov2, width: 1024, depth: 24, heads: 16, mlp_width: 4096, num_registers: 4}
      - {kind: siglip, width: 1152, depth: 27, heads: 16, mlp_width: 4304}
    llm: {hidden_size: 4096, num_layers: 32, num_heads: 32, intermediate_size: 11008, vocab_size: 32064,
          rope_theta: 10000.0, rms_norm_eps: 1.0e-6}
    action: {num_images: 2, chunk_size: 8, action_dim: 7, proprio_dim: 8}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from ctr_vla_ros.typed_config import build_dataclass

PATCH_SIZE = 14
IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class VisionTowerConfig:
    """One ViT tower. `depth` counts every block in the checkpoint; the last one is never computed."""

    kind: str  # 'dinov2' (cls + register tokens, LayerScale) or 'siglip' (no prefix tokens, no LayerScale)
    width: int
    depth: int
    heads: int
    mlp_width: int
    num_registers: int = 0

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers if self.kind == 'dinov2' else 0

    @property
    def computed_depth(self) -> int:
        """The release reads the second-to-last block's output: blocks 0 .. depth-2 run."""
        return self.depth - 1


@dataclasses.dataclass(frozen=True)
class LlmConfig:
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    intermediate_size: int = 11008
    vocab_size: int = 32064
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ActionLayout:
    """What one model query consumes and produces (LIBERO defaults)."""

    num_images: int = 2
    chunk_size: int = 8
    action_dim: int = 7
    proprio_dim: int = 8

    @property
    def num_action_slots(self) -> int:
        return self.chunk_size * self.action_dim


@dataclasses.dataclass(frozen=True)
class ModelArchitecture:
    vision_towers: tuple[VisionTowerConfig, ...]
    llm: LlmConfig
    action: ActionLayout

    @property
    def patches_per_image(self) -> int:
        return (IMAGE_SIZE // PATCH_SIZE) ** 2

    @property
    def num_visual_tokens(self) -> int:
        return self.patches_per_image * self.action.num_images

    @property
    def fused_vision_width(self) -> int:
        return sum(tower.width for tower in self.vision_towers)

    @property
    def projector_hidden(self) -> int:
        """The release's fused GELU MLP projector widens to 4x the fused vision width first."""
        return 4 * self.fused_vision_width


# The towers the release uses, by timm model id (config.json `timm_model_ids`).
KNOWN_TOWERS = {
    'vit_large_patch14_reg4_dinov2.lvd142m': VisionTowerConfig('dinov2', 1024, 24, 16, 4096, num_registers=4),
    'vit_so400m_patch14_siglip_224': VisionTowerConfig('siglip', 1152, 27, 16, 4304),
}

_LLM_KEYS_FROM_HF = {
    'hidden_size': 'hidden_size', 'num_hidden_layers': 'num_layers', 'num_attention_heads': 'num_heads',
    'intermediate_size': 'intermediate_size', 'vocab_size': 'vocab_size', 'rope_theta': 'rope_theta',
    'rms_norm_eps': 'rms_norm_eps',
}


class ArchitectureError(ValueError):
    """The checkpoint's architecture cannot be determined or is inconsistent."""


def load_override_file(path: str | Path) -> dict[str, Any]:
    """Read an architecture override file (YAML or JSON; JSON is YAML)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ArchitectureError(f'{path}: an architecture override must be a mapping, got {type(data).__name__}')
    return data


def architecture_from_config(checkpoint_config: dict[str, Any],
                             override: dict[str, Any] | None = None) -> ModelArchitecture:
    """Build the architecture from a checkpoint's config.json, its `ctr_vla_arch` entry and a user override."""
    sections: dict[str, Any] = {}
    for source in (checkpoint_config.get('ctr_vla_arch') or {}, override or {}):
        unknown = set(source) - {'vision_towers', 'llm', 'action'}
        if unknown:
            raise ArchitectureError(f'unknown architecture keys {sorted(unknown)}; expected vision_towers, llm, action')
        for key, value in source.items():
            sections[key] = {**sections.get(key, {}), **value} if key != 'vision_towers' else value

    if 'vision_towers' in sections:
        towers = tuple(build_dataclass(VisionTowerConfig, tower, 'vision_towers', ArchitectureError)
                       for tower in sections['vision_towers'])
    else:
        tower_ids = checkpoint_config.get('timm_model_ids') or []
        unknown_ids = [tower_id for tower_id in tower_ids if tower_id not in KNOWN_TOWERS]
        if not tower_ids or unknown_ids:
            raise ArchitectureError(
                f'unknown vision towers {unknown_ids or "(none in config.json)"}; known: {sorted(KNOWN_TOWERS)}. '
                'Give their sizes in an architecture override file (--arch).')
        towers = tuple(KNOWN_TOWERS[tower_id] for tower_id in tower_ids)
    if [tower.kind for tower in towers] != ['dinov2', 'siglip']:
        raise ArchitectureError(f'expected a fused [dinov2, siglip] backbone, got {[t.kind for t in towers]}')

    text_config = checkpoint_config.get('text_config') or {}
    llm_values = {ours: text_config[hf] for hf, ours in _LLM_KEYS_FROM_HF.items() if hf in text_config}
    llm_values.update(sections.get('llm', {}))
    llm = build_dataclass(LlmConfig, llm_values, 'llm', ArchitectureError)
    if llm.hidden_size % llm.num_heads:
        raise ArchitectureError(f'llm hidden_size {llm.hidden_size} is not divisible by num_heads {llm.num_heads}')
    action = build_dataclass(ActionLayout, sections.get('action', {}), 'action', ArchitectureError)
    return ModelArchitecture(towers, llm, action)


def architecture_to_dict(architecture: ModelArchitecture) -> dict[str, Any]:
    """The override-file form of an architecture (what the checkpoint generator writes as `ctr_vla_arch`)."""
    return dataclasses.asdict(architecture) | {
        'vision_towers': [dataclasses.asdict(tower) for tower in architecture.vision_towers]}


def read_checkpoint_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / 'config.json'
    if not path.is_file():
        raise ArchitectureError(f'{checkpoint_dir}: no config.json (not an OpenVLA-OFT checkpoint directory)')
    return json.loads(path.read_text())
