"""Random-weight OpenVLA-OFT checkpoints in the release's on-disk format, deterministic from a seed.

Sizes:
  tiny   small towers and LLM (milliseconds per step on a CPU): tests and the random-weight demo.
  bench  the real tower widths, heads and MLP sizes and the real Llama-2-7B layer shape, with reduced depth:
         benchmarks whose per-layer cost is the real one.

`random_model` builds a model of any architecture, the release's full size included (`flops.full_size_architecture`:
DINOv2-L + SigLIP-So400m, Llama-2-7B, two images, proprio, L1 head), with random weights directly on a device in
its dtype: built on the meta device, then allocated and initialised in place, so no checkpoint file is written and
no fp32 copy is ever held (about 15 GB in bf16 at full size).

The weights are random: a policy built from them moves a robot meaninglessly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ctr_vla_ros.model.checkpoint import LoadedCheckpoint, load_checkpoint
from ctr_vla_ros.model.checkpoint_writer import (DINOV2_ID, SIGLIP_ID, build_tokenizer, save_checkpoint,
                                                 vocab_size_for)
from ctr_vla_ros.model.config import KNOWN_TOWERS, ActionLayout, LlmConfig, ModelArchitecture, VisionTowerConfig
from ctr_vla_ros.model.openvla_oft import OpenVlaOft

TRAINING_STEP = 150000  # appears in the sidecar names, as in the release ("--150000_checkpoint.pt")

# LIBERO-like dataset statistics (actions in LIBERO controller units, gripper 1 = open / 0 = close, not
# normalised; proprio = eef position, axis-angle, gripper qpos), close to the values of the released checkpoints.
LIBERO_STATISTICS = {
    'action': {
        'q01': [-0.7454, -0.6664, -0.9375, -0.1121, -0.1529, -0.1979, 0.0],
        'q99': [0.9375, 0.8625, 0.9375, 0.1330, 0.1757, 0.2593, 1.0],
        'mask': [True, True, True, True, True, True, False],
    },
    'proprio': {
        'q01': [-0.2276, -0.2836, 0.8992, 2.9327, -0.6139, -0.2974, 0.0013, -0.0400],
        'q99': [0.1294, 0.2842, 1.2269, 3.2951, 0.4537, 0.1823, 0.0400, -0.0013],
    },
}
UNNORM_KEYS = ('libero_spatial_no_noops', 'libero_object_no_noops', 'libero_goal_no_noops', 'libero_10_no_noops')


def architecture_for(size: str, vision_depth: int, llm_layers: int, vocab_size: int) -> ModelArchitecture:
    if size == 'tiny':
        towers = (VisionTowerConfig('dinov2', 64, vision_depth, 4, 128, num_registers=4),
                  VisionTowerConfig('siglip', 48, vision_depth, 4, 96))
        llm = LlmConfig(hidden_size=128, num_layers=llm_layers, num_heads=4, intermediate_size=256,
                        vocab_size=vocab_size)
    else:
        dinov2, siglip = KNOWN_TOWERS[DINOV2_ID], KNOWN_TOWERS[SIGLIP_ID]
        towers = (VisionTowerConfig(dinov2.kind, dinov2.width, vision_depth, dinov2.heads, dinov2.mlp_width,
                                    dinov2.num_registers),
                  VisionTowerConfig(siglip.kind, siglip.width, vision_depth, siglip.heads, siglip.mlp_width))
        llm = LlmConfig(num_layers=llm_layers, vocab_size=vocab_size)
    return ModelArchitecture(towers, llm, ActionLayout())


def initial_value(name: str, shape: torch.Size) -> tuple[str, float]:
    """How a random-weight parameter starts, ('constant', value) or ('normal', std): unit norms, small LayerScale,
    zero biases, 1/sqrt(fan-in) for matrices, 0.02 for embeddings and everything else."""
    if name.endswith('scale_factor'):
        return 'constant', 0.1
    if 'norm' in name and name.endswith('weight'):
        return 'constant', 1.0
    if name.endswith('bias'):
        return 'constant', 0.0
    if len(shape) != 2 or 'embed' in name:
        return 'normal', 0.02
    return 'normal', 1.0 / math.sqrt(shape[1])


def random_state_dict(model: OpenVlaOft, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights (`initial_value`), bf16 on the CPU, for a checkpoint file."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, parameter in model.state_dict().items():
        kind, value = initial_value(name, parameter.shape)
        if kind == 'constant':
            tensor = torch.full(parameter.shape, value)
        else:
            tensor = torch.randn(parameter.shape, generator=generator) * value
        state[name] = tensor.to(torch.bfloat16)
    return state


def random_model(architecture: ModelArchitecture, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = 'cpu', seed: int = 0) -> OpenVlaOft:
    """A model with random weights (`initial_value`) allocated once, on `device` in `dtype`, in eval mode."""
    with torch.device('meta'):
        model = OpenVlaOft(architecture)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            kind, value = initial_value(name, parameter.shape)
            if kind == 'constant':
                parameter.fill_(value)
            else:
                parameter.normal_(0.0, value, generator=generator)
    return model.eval()


def random_loaded_checkpoint(architecture: ModelArchitecture, dtype: torch.dtype = torch.bfloat16,
                             device: str | torch.device = 'cpu', seed: int = 0) -> LoadedCheckpoint:
    """`random_model` ready for `VlaPolicy`, with the tokenizer and LIBERO statistics of the demo checkpoint
    (its tokenizer's ids fit any Llama-2-sized vocabulary)."""
    demo = load_checkpoint(demo_checkpoint())
    if architecture.llm.vocab_size < demo.architecture.llm.vocab_size:
        raise ValueError(f'a vocabulary of {architecture.llm.vocab_size} is smaller than the tokenizer\'s '
                         f'{demo.architecture.llm.vocab_size}')
    return LoadedCheckpoint(random_model(architecture, dtype, device, seed), demo.tokens, demo.statistics,
                            architecture, f'random-{architecture.llm.num_layers}-layer-llm')


def write_random_checkpoint(output: Path, size: str = 'tiny', seed: int = 0, vision_depth: int | None = None,
                            llm_layers: int | None = None, shard_bytes: int | None = None) -> ModelArchitecture:
    """Write the checkpoint directory; returns its architecture (also recorded as `ctr_vla_arch` in config.json)."""
    tokenizer = build_tokenizer()
    architecture = architecture_for(size, vision_depth or (3 if size == 'tiny' else 4),
                                    llm_layers or (3 if size == 'tiny' else 4), vocab_size_for(tokenizer))
    with torch.device('meta'):
        model = OpenVlaOft(architecture)
    save_checkpoint(output, architecture, random_state_dict(model, seed), tokenizer,
                    {key: LIBERO_STATISTICS for key in UNNORM_KEYS}, TRAINING_STEP,
                    {'ctr_vla_random_weights': {'size': size, 'seed': seed,
                                                'warning': 'random weights: actions are meaningless'}},
                    shard_bytes or (1 << 20 if size == 'tiny' else 2 << 30))
    return architecture


# Versioned: a checkpoint cached by an older release of this package may not load any more.
DEMO_CHECKPOINT = Path.home() / '.cache' / 'ctr_vla_ros' / 'tiny-random-checkpoint-v2'


def demo_checkpoint() -> Path:
    """The tiny random-weight checkpoint used when no checkpoint is configured (written on first use)."""
    if not (DEMO_CHECKPOINT / 'config.json').is_file():
        write_random_checkpoint(DEMO_CHECKPOINT, size='tiny')
    return DEMO_CHECKPOINT
