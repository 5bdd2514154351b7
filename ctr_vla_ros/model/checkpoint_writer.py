"""Write an OpenVLA-OFT checkpoint directory in the release's on-disk format (see model/checkpoint.py for the
layout): the random-weight generator and the trainer both save through `save_checkpoint`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
import torch

from ctr_vla_ros.model.checkpoint import INDEX_FILE, SPACE_TOKEN, STATISTICS_FILE, TOKENIZER_FILE
from ctr_vla_ros.model.config import ModelArchitecture, architecture_to_dict

DINOV2_ID, SIGLIP_ID = 'vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_224'
# Llama-2's 32000 pieces + <PAD>, padded to a multiple of 64, as in the release: the embedding table holds the
# literal id the release appends to every prompt (29871), whatever a small tokenizer's "▁" id is.
LLAMA2_PADDED_VOCAB_SIZE = 32064
SIDECAR_MODULES = ('action_head', 'proprio_projector')

PROMPT = 'In: What action should the robot take to {}?\nOut:'
INSTRUCTIONS = (
    'pick up the black bowl between the plate and the ramekin and place it on the plate',
    'pick up the alphabet soup and place it in the basket', 'put the bowl on the stove',
    'open the top drawer and put the bowl inside', 'push the plate to the front of the stove',
    'put the wine bottle on top of the cabinet', 'turn on the stove and put the moka pot on it',
    'put both the cream cheese box and the butter in the basket', 'close the microwave',
    'stack the red block on the green block', 'move the cup to the left of the sink', 'wipe the table',
)




def build_tokenizer(instructions: Sequence[str] = INSTRUCTIONS) -> Tokenizer:
    """A small BPE tokenizer in Llama-2's conventions, trained offline on the release's prompt around these
    instructions."""
    tokenizer = Tokenizer(models.BPE(unk_token='<unk>', byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_TOKEN),
                                                 normalizers.Replace(' ', SPACE_TOKEN)])
    # Pieces never cross a word boundary, as in Llama-2's SentencePiece model.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(SPACE_TOKEN, behavior='merged_with_next')
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE_TOKEN, ' '), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(' ', 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=['<unk>', '<s>', '</s>'], show_progress=False,
                                  initial_alphabet=[SPACE_TOKEN] + [chr(code) for code in range(32, 127)])
    prompts = [PROMPT.format(instruction) for instruction in instructions]
    tokenizer.train_from_iterator(list(instructions) + prompts, trainer)
    tokenizer.add_special_tokens(['<PAD>'])
    return tokenizer



def vocab_size_for(tokenizer: Tokenizer) -> int:
    return max(LLAMA2_PADDED_VOCAB_SIZE, 64 * math.ceil(tokenizer.get_vocab_size() / 64))


def save_checkpoint(output: Path, architecture: ModelArchitecture, state: dict[str, torch.Tensor],
                    tokenizer: Tokenizer, statistics: dict[str, Any], training_step: int,
                    extra_config: dict[str, Any] | None = None, shard_bytes: int = 2 << 30) -> None:
    """Write `state` (the model's state dict, in the dtype to store) with its tokenizer and dataset statistics
    ({unnorm_key: {action: {q01, q99, mask}, proprio: {q01, q99}}}). The action head and proprio projector go to
    the `--<training_step>_checkpoint.pt` sidecars, everything else to safetensors shards."""
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output / TOKENIZER_FILE))
    (output / 'tokenizer_config.json').write_text(json.dumps(
        {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>',
         'unk_token': '<unk>', 'pad_token': '<PAD>', 'add_bos_token': True}, indent=2))
    (output / STATISTICS_FILE).write_text(json.dumps(statistics, indent=2))
    pad_id = tokenizer.token_to_id('<PAD>')
    config = {
        'model_type': 'openvla', 'architectures': ['OpenVLAForActionPrediction'],
        'timm_model_ids': [DINOV2_ID, SIGLIP_ID], 'image_sizes': [224, 224], 'use_fused_vision_backbone': True,
        'arch_specifier': 'no-align+fused-gelu-mlp', 'llm_backbone_id': 'llama2-7b-pure',
        'pad_token_id': pad_id, 'pad_to_multiple_of': 64, 'n_action_bins': 256,
        'text_config': {'model_type': 'llama', 'vocab_size': architecture.llm.vocab_size, 'pad_token_id': pad_id,
                        'torch_dtype': 'bfloat16'},
        'norm_stats': statistics,
        'ctr_vla_arch': architecture_to_dict(architecture),
        **(extra_config or {}),
    }
    (output / 'config.json').write_text(json.dumps(config, indent=2))

    sidecars: dict[str, dict[str, torch.Tensor]] = {module: {} for module in SIDECAR_MODULES}
    backbone = {}
    for name, tensor in state.items():
        module, _, rest = name.partition('.')
        if module in sidecars:
            sidecars[module][f'module.{rest}'] = tensor.contiguous()
        else:
            backbone[name] = tensor.contiguous()
    for module, tensors in sidecars.items():
        torch.save(tensors, output / f'{module}--{training_step}_checkpoint.pt')
    write_shards(output, backbone, shard_bytes)


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
