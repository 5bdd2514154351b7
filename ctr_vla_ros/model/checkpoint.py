"""Load an OpenVLA-OFT checkpoint directory in the release's on-disk format.

    config.json                                  model_type openvla, timm_model_ids, text_config, norm_stats
    model.safetensors.index.json                 weight name -> shard file
    model-0000N-of-0000M.safetensors             the weights (bf16 in the release)
    tokenizer.json (+ tokenizer.model, ...)      Llama-2 tokenizer with <PAD>
    dataset_statistics.json                      {unnorm_key: {action: {q01, q99, mask}, proprio: {q01, q99}}}
    action_head--<step>_checkpoint.pt            plain state dict, keys prefixed `module.`
    proprio_projector--<step>_checkpoint.pt      plain state dict, keys prefixed `module.`

The model is built without memory (meta device), allocated once in the target dtype and device, and filled tensor
by tensor from each shard, so a 15 GB checkpoint is never held twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open
import torch
from transformers import PreTrainedTokenizerFast

from ctr_vla_ros.model.config import (ArchitectureError, ModelArchitecture, architecture_from_config,
                                      load_override_file, read_checkpoint_config)
from ctr_vla_ros.model.openvla_oft import OpenVlaOft

INDEX_FILE = 'model.safetensors.index.json'
STATISTICS_FILE = 'dataset_statistics.json'
TOKENIZER_FILE = 'tokenizer.json'
SIDECARS = {'action_head': 'action_head--*_checkpoint.pt', 'proprio_projector': 'proprio_projector--*_checkpoint.pt'}
SPACE_TOKEN = '\u2581'  # SentencePiece's word-boundary piece
# The release's predict_action appends this literal id after the prompt, whatever the tokenizer (it is "▁" in
# Llama-2's vocabulary). Matching the release means using the id, not the tokenizer's "▁" piece.
RELEASE_SPACE_TOKEN_ID = 29871


class CheckpointError(ValueError):
    """The checkpoint directory is incomplete or inconsistent; the message names the problem."""


@dataclasses.dataclass
class PromptTokens:
    tokenizer: PreTrainedTokenizerFast
    bos_id: int
    stop_id: int
    space_id: int

    def prompt_ids(self, instruction: str) -> list[int]:
        """BOS + the release's prompt up to "Out:", without a trailing space token: the layout always adds
        `space_id` after the prompt, as the release appends 29871 unless the prompt already ends with it."""
        prompt = f'In: What action should the robot take to {instruction.lower()}?\nOut:'
        ids = [self.bos_id] + self.tokenizer.encode(prompt, add_special_tokens=False)
        return ids[:-1] if ids[-1] == self.space_id else ids


@dataclasses.dataclass
class LoadedCheckpoint:
    model: OpenVlaOft
    tokens: PromptTokens
    statistics: dict[str, Any]
    architecture: ModelArchitecture
    name: str

    def statistics_for(self, unnorm_key: str) -> dict[str, Any]:
        if unnorm_key not in self.statistics:
            raise CheckpointError(f'unknown unnorm_key {unnorm_key!r}; this checkpoint has: '
                                  f'{", ".join(sorted(self.statistics))}')
        return self.statistics[unnorm_key]


def unused_tensor(name: str, architecture: ModelArchitecture) -> bool:
    """Tensors in the checkpoint that the release never reads: each tower's last block, final norm and SigLIP's
    attention-pool head, and the LLM's lm_head."""
    if name.startswith('language_model.lm_head.'):
        return True
    match = re.match(r'vision_backbone\.(featurizer|fused_featurizer)\.(.*)', name)
    if not match:
        return False
    tower, rest = match.groups()
    config = architecture.vision_towers[0 if tower == 'featurizer' else 1]
    block = re.match(r'blocks\.(\d+)\.', rest)
    return (block is not None and int(block.group(1)) >= config.computed_depth) or \
        rest.startswith(('norm.', 'attn_pool.', 'fc_norm.', 'head.'))


def load_checkpoint(checkpoint_dir: str | Path, architecture_override: str | Path | None = None,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = 'cpu') -> LoadedCheckpoint:
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise CheckpointError(f'{directory}: not a directory')
    override = load_override_file(architecture_override) if architecture_override else None
    architecture = architecture_from_config(read_checkpoint_config(directory), override)
    tokens = load_tokens(directory, architecture.llm.vocab_size)

    with torch.device('meta'):
        model = OpenVlaOft(architecture)
    model = model.to(dtype).to_empty(device=device).eval()
    expected = dict(model.state_dict())
    loaded: set[str] = set()

    def assign(name: str, tensor: torch.Tensor, source: str) -> None:
        target = expected.get(name)
        if target is None:
            raise CheckpointError(f'{source}: unexpected tensor {name!r} (architecture mismatch?)')
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f'{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the architecture '
                                  f'expects {tuple(target.shape)} (pass --arch for non-standard sizes)')
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(name)

    for shard, names in shard_contents(directory).items():
        with safe_open(shard, framework='pt', device='cpu') as weights:
            for name in names:
                if not unused_tensor(name, architecture):
                    assign(name, weights.get_tensor(name), shard.name)

    for module_name, pattern in SIDECARS.items():
        path = find_sidecar(directory, pattern)
        for key, tensor in read_sidecar(path).items():
            assign(f'{module_name}.{key.removeprefix("module.")}', tensor, path.name)

    missing = sorted(set(expected) - loaded)
    if missing:
        raise CheckpointError(f'{directory}: {len(missing)} tensors missing, e.g. {missing[:3]}')
    return LoadedCheckpoint(model, tokens, load_statistics(directory), architecture, directory.name)


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """SHA-256 of every file of the checkpoint directory, names and contents: what identifies a checkpoint whatever
    its folder is called, and tells a checkpoint retrained under the same name from the one before."""
    digest = hashlib.sha256()
    for path in sorted(path for path in Path(checkpoint_dir).rglob('*') if path.is_file()):
        digest.update(path.relative_to(checkpoint_dir).as_posix().encode() + b'\0')
        with path.open('rb') as file:
            while block := file.read(1 << 20):
                digest.update(block)
        digest.update(b'\0')
    return digest.hexdigest()


def shard_contents(directory: Path) -> dict[Path, list[str]]:
    """Shard file -> names of the tensors it holds, from the index (or a single unsharded file)."""
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        single = directory / 'model.safetensors'
        if single.is_file():
            with safe_open(single, framework='pt', device='cpu') as weights:
                return {single: list(weights.keys())}
        raise CheckpointError(f'{directory}: neither {INDEX_FILE} nor model.safetensors')
    weight_map = json.loads(index_path.read_text()).get('weight_map')
    if not isinstance(weight_map, dict):
        raise CheckpointError(f'{index_path}: no "weight_map"')
    shards: dict[Path, list[str]] = {}
    for name, file_name in weight_map.items():
        shards.setdefault(directory / file_name, []).append(name)
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f'{directory}: missing shard {shard.name} (listed in {INDEX_FILE})')
    return shards


def find_sidecar(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if len(matches) != 1:
        found = ', '.join(match.name for match in matches) or 'none'
        raise CheckpointError(f'{directory}: expected exactly one {pattern} sidecar, found {found}')
    return matches[0]


def read_sidecar(path: Path) -> dict[str, torch.Tensor]:
    """A sidecar must be a plain state dict; anything else is refused without being unpickled."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(f'{path.name}: not a plain tensor state dict (refused to unpickle: '
                              f'{str(error).splitlines()[0]})') from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f'{path.name}: not a plain tensor state dict (got {type(state).__name__})')
    return state


def load_statistics(directory: Path) -> dict[str, Any]:
    path = directory / STATISTICS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    norm_stats = read_checkpoint_config(directory).get('norm_stats')
    if not norm_stats:
        raise CheckpointError(f'{directory}: no {STATISTICS_FILE} and no norm_stats in config.json')
    return norm_stats


def load_tokens(directory: Path, vocab_size: int) -> PromptTokens:
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f'{directory}: missing {TOKENIZER_FILE}')
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ('<s>', '</s>')}
    if any(token_id is None or token_id == tokenizer.unk_token_id for token_id in ids.values()):
        raise CheckpointError(f'{path}: tokenizer lacks one of <s>, </s>: {ids}')
    if vocab_size <= RELEASE_SPACE_TOKEN_ID:
        raise CheckpointError(f'{directory}: the LLM vocabulary has {vocab_size} entries, but OpenVLA-OFT appends '
                              f'token id {RELEASE_SPACE_TOKEN_ID} to every prompt')
    return PromptTokens(tokenizer, ids['<s>'], ids['</s>'], RELEASE_SPACE_TOKEN_ID)


__all__ = ['ArchitectureError', 'CheckpointError', 'LoadedCheckpoint', 'PromptTokens', 'load_checkpoint']
