"""Architectures to train from random weights: named presets, or an override file on top of the `small` preset.

Every preset keeps the release's structure: a fused [DINOv2 with 4 registers | SigLIP] backbone on 224x224 images
with 14-pixel patches (256 patches per image), the fused GELU projector, a Llama decoder with bidirectional
attention, Llama-2's padded vocabulary (32064, so the prompt's literal token 29871 exists), the proprio projector
and the L1-regression MLP-ResNet head, in LIBERO's action layout (2 images, chunk 8, 7 action dims, 8 proprio dims).

  tiny   the random-weight demo checkpoint's shape (widths 64/48, 3 blocks per tower, LLM 128 x 3 layers).
  small  the shape to train on a 2-core CPU (widths 64/48, 4 blocks per tower, LLM 128 x 2 layers, 0.95 M
         parameters besides the 4.1 M of the vocabulary table): a few epochs of ~120 LIBERO demonstrations in about
         an hour, under 100 ms per `VlaPolicy.predict`. Two heads everywhere: on a CPU, the attention kernel is far
         slower per FLOP with 16- or 32-wide heads than with 32- or 64-wide ones. The LLM has 55% of its FLOPs (the
         release's: 91%), so LLM reuse is judged on a model unlike the release.
  small_llm4  the LLM-heavy shape: towers of 3 blocks, LLM 128 x 4 layers; 76% of the FLOPs in the LLM, 1.97
         GFLOP a query (small: 1.36), measured 78 ms per `VlaPolicy.predict` on 2 cores, as fast as small's 79
         (the towers cost more per FLOP on a CPU than the LLM). Candidates measured beside it (FLOPs, LLM share,
         predict): 4 blocks + 4 layers 2.11 G, 71%, 91 ms; 3 + 6 layers 2.71 G, 82%, 101 ms; 2 + 6 layers 2.57 G,
         87%, 96 ms (one computed block per tower); 3 + 4 layers of width 160 2.61 G, 81%, 88 ms.

An override file has the README's format (`vision_towers`, `llm`, `action`; every key optional): `llm` and `action`
keys replace the preset's one by one, `vision_towers` replaces both towers.
"""

from __future__ import annotations

from pathlib import Path

from ctr_vla_ros.model.checkpoint_writer import LLAMA2_PADDED_VOCAB_SIZE
from ctr_vla_ros.model.config import (ActionLayout, LlmConfig, ModelArchitecture, VisionTowerConfig,
                                      architecture_from_config, architecture_to_dict, load_override_file)
from ctr_vla_ros.model.random_checkpoint import architecture_for

PRESETS = {
    'tiny': architecture_for('tiny', vision_depth=3, llm_layers=3, vocab_size=LLAMA2_PADDED_VOCAB_SIZE),
    'small': ModelArchitecture(
        (VisionTowerConfig('dinov2', 64, 4, 2, 256, num_registers=4), VisionTowerConfig('siglip', 48, 4, 2, 192)),
        LlmConfig(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256,
                  vocab_size=LLAMA2_PADDED_VOCAB_SIZE),
        ActionLayout()),
    'small_llm4': ModelArchitecture(
        (VisionTowerConfig('dinov2', 64, 3, 2, 256, num_registers=4), VisionTowerConfig('siglip', 48, 3, 2, 192)),
        LlmConfig(hidden_size=128, num_layers=4, num_heads=2, intermediate_size=256,
                  vocab_size=LLAMA2_PADDED_VOCAB_SIZE),
        ActionLayout()),
}
DEFAULT_PRESET = 'small'


def resolve_architecture(name_or_file: str) -> ModelArchitecture:
    """A preset by name, or an override file (YAML/JSON) applied to the default preset."""
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]
    if not Path(name_or_file).is_file():
        raise ValueError(f'architecture {name_or_file!r} is neither a preset ({", ".join(PRESETS)}) nor a file')
    base = {'ctr_vla_arch': architecture_to_dict(PRESETS[DEFAULT_PRESET])}
    return architecture_from_config(base, load_override_file(name_or_file))
