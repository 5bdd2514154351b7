"""Write a random-weight OpenVLA-OFT checkpoint in the release's on-disk format (deterministic from a seed).

Sizes:
  tiny   small towers and LLM (seconds per step on a CPU): tests and the demo.
  bench  the real tower widths, heads and MLP sizes and the real Llama-2-7B layer shape, with reduced depth
         (--vision-depth blocks per tower, --llm-layers layers): benchmarks whose per-layer cost is the real one.

The weights are random: a policy built from them moves a robot meaninglessly. The tokenizer is a small BPE
tokenizer trained offline on robot instructions, in Llama-2's conventions (<unk>=0, <s>=1, </s>=2, the "▁" word
boundary, <PAD> last), so nothing is downloaded.

    ctr-vla-make-checkpoint --size tiny --output checkpoints/tiny
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
import torch

from ctr_vla_ros.model.checkpoint import INDEX_FILE, SPACE_TOKEN, STATISTICS_FILE, TOKENIZER_FILE
from ctr_vla_ros.model.config import (KNOWN_TOWERS, ActionLayout, LlmConfig, ModelArchitecture, VisionTowerConfig,
                                      architecture_to_dict)
from ctr_vla_ros.model.openvla_oft import OpenVlaOft

DINOV2_ID, SIGLIP_ID = 'vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_224'
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

TOKENIZER_CORPUS = [
    'In: What action should the robot take to {}?\nOut:',
    'pick up the black bowl between the plate and the ramekin and place it on the plate',
    'pick up the alphabet soup and place it in the basket', 'put the bowl on the stove',
    'open the top drawer and put the bowl inside', 'push the plate to the front of the stove',
    'put the wine bottle on top of the cabinet', 'turn on the stove and put the moka pot on it',
    'put both the cream cheese box and the butter in the basket', 'close the microwave',
    'stack the red block on the green block', 'move the cup to the left of the sink', 'wipe the table',
]


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


def build_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token='<unk>', byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_TOKEN),
                                                 normalizers.Replace(' ', SPACE_TOKEN)])
    # Pieces never cross a word boundary, as in Llama-2's SentencePiece model.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(SPACE_TOKEN, behavior='merged_with_next')
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE_TOKEN, ' '), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(' ', 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=['<unk>', '<s>', '</s>'], show_progress=False,
                                  initial_alphabet=[SPACE_TOKEN] + [chr(code) for code in range(32, 127)])
    prompts = [TOKENIZER_CORPUS[0].format(task) for task in TOKENIZER_CORPUS[1:]]
    tokenizer.train_from_iterator(TOKENIZER_CORPUS[1:] + prompts, trainer)
    tokenizer.add_special_tokens(['<PAD>'])
    return tokenizer


def random_state_dict(model: OpenVlaOft, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights with sane scales: unit norms, small LayerScale, 0.02 for everything else."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, parameter in model.state_dict().items():
        if name.endswith('scale_factor'):
            value = torch.full(parameter.shape, 0.1)
        elif 'norm' in name and name.endswith('weight'):
            value = torch.ones(parameter.shape)
        elif name.endswith('bias'):
            value = torch.zeros(parameter.shape)
        else:
            fan_in = parameter.shape[1] if parameter.dim() == 2 else 1
            std = 0.02 if parameter.dim() != 2 or 'embed' in name else 1.0 / math.sqrt(fan_in)
            value = torch.randn(parameter.shape, generator=generator) * std
        state[name] = value.to(torch.bfloat16)
    return state


def write_checkpoint(output: Path, size: str = 'tiny', seed: int = 0, vision_depth: int | None = None,
                     llm_layers: int | None = None, shard_bytes: int | None = None) -> ModelArchitecture:
    """Write the checkpoint directory; returns its architecture (also recorded as `ctr_vla_arch` in config.json)."""
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save(str(output / TOKENIZER_FILE))
    (output / 'tokenizer_config.json').write_text(json.dumps(
        {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>',
         'unk_token': '<unk>', 'pad_token': '<PAD>', 'add_bos_token': True}, indent=2))
    vocab_size = 64 * math.ceil(tokenizer.get_vocab_size() / 64)
    architecture = architecture_for(size, vision_depth or (3 if size == 'tiny' else 4),
                                    llm_layers or (3 if size == 'tiny' else 4), vocab_size)
    with torch.device('meta'):
        model = OpenVlaOft(architecture)
    state = random_state_dict(model, seed)

    statistics = {key: LIBERO_STATISTICS for key in UNNORM_KEYS}
    (output / STATISTICS_FILE).write_text(json.dumps(statistics, indent=2))
    config = {
        'model_type': 'openvla', 'architectures': ['OpenVLAForActionPrediction'],
        'timm_model_ids': [DINOV2_ID, SIGLIP_ID], 'image_sizes': [224, 224], 'use_fused_vision_backbone': True,
        'arch_specifier': 'no-align+fused-gelu-mlp', 'llm_backbone_id': 'llama2-7b-pure',
        'pad_token_id': tokenizer.token_to_id('<PAD>'), 'pad_to_multiple_of': 64, 'n_action_bins': 256,
        'text_config': {'model_type': 'llama', 'vocab_size': vocab_size, 'pad_token_id': tokenizer.token_to_id('<PAD>'),
                        'torch_dtype': 'bfloat16'},
        'norm_stats': statistics,
        'ctr_vla_arch': architecture_to_dict(architecture),
        'ctr_vla_random_weights': {'size': size, 'seed': seed,
                                   'warning': 'random weights: actions are meaningless'},
    }
    (output / 'config.json').write_text(json.dumps(config, indent=2))

    sidecars = {'action_head': {}, 'proprio_projector': {}}
    backbone = {}
    for name, tensor in state.items():
        module, _, rest = name.partition('.')
        if module in sidecars:
            sidecars[module][f'module.{rest}'] = tensor
        else:
            backbone[name] = tensor
    for module, tensors in sidecars.items():
        torch.save(tensors, output / f'{module}--{TRAINING_STEP}_checkpoint.pt')
    write_shards(output, backbone, shard_bytes or (1 << 20 if size == 'tiny' else 2 << 30))
    return architecture


def write_shards(output: Path, tensors: dict[str, torch.Tensor], shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_size = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_size + size > shard_bytes:
            shards.append({})
            shard_size = 0
        shards[-1][name] = tensor
        shard_size += size
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file_name = f'model-{index:05d}-of-{len(shards):05d}.safetensors'
        save_file(shard, str(output / file_name), metadata={'format': 'pt'})
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    (output / INDEX_FILE).write_text(json.dumps({'metadata': {'total_size': total}, 'weight_map': weight_map},
                                                indent=2))


DEMO_CHECKPOINT = Path.home() / '.cache' / 'ctr_vla_ros' / 'tiny-demo-checkpoint'


def demo_checkpoint() -> Path:
    """The tiny random-weight checkpoint used when no checkpoint is configured (written on first use)."""
    if not (DEMO_CHECKPOINT / 'config.json').is_file():
        write_checkpoint(DEMO_CHECKPOINT, size='tiny')
    return DEMO_CHECKPOINT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=['tiny', 'bench'], default='tiny')
    parser.add_argument('--output', type=Path, required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--vision-depth', type=int, help='blocks per tower, the unused last one included '
                        '(default 3 tiny, 4 bench)')
    parser.add_argument('--llm-layers', type=int, help='LLM layers (default 3 tiny, 4 bench)')
    args = parser.parse_args(argv)
    architecture = write_checkpoint(args.output, args.size, args.seed, args.vision_depth, args.llm_layers)
    print(f'wrote a {args.size} random-weight checkpoint to {args.output} '
          f'({[tower.depth for tower in architecture.vision_towers]} vision blocks, '
          f'{architecture.llm.num_layers} LLM layers, hidden {architecture.llm.hidden_size})')


if __name__ == '__main__':
    main()
