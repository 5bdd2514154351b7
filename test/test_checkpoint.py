"""Checkpoints in the official on-disk format: the generator, the loader, its errors, and ctr-vla-predict."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from ctr_vla_ros.model.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint
from ctr_vla_ros.model.config import ArchitectureError
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.model.random_checkpoint import write_random_checkpoint

UNNORM_KEY = 'libero_spatial_no_noops'


@pytest.fixture
def broken(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / 'broken')


def predict(directory, sequence, index=0, **load_options):
    policy = VlaPolicy(load_checkpoint(directory, **load_options), UNNORM_KEY)
    return policy.predict([sequence['agentview'][index], sequence['wrist'][index]], sequence['proprio8'][index],
                          sequence['instruction'])


def test_generator_is_deterministic_and_official_layout(tiny_checkpoint, tmp_path):
    again = tmp_path / 'again'
    write_random_checkpoint(again, size='tiny', seed=0)
    names = sorted(path.name for path in tiny_checkpoint.iterdir())
    assert names == sorted(path.name for path in again.iterdir())
    assert {'config.json', 'model.safetensors.index.json', 'tokenizer.json', 'dataset_statistics.json',
            'action_head--150000_checkpoint.pt', 'proprio_projector--150000_checkpoint.pt'} <= set(names)
    shards = [name for name in names if name.endswith('.safetensors')]
    assert len(shards) >= 2, 'the tiny checkpoint is sharded so the index path is exercised'
    for shard in shards:
        first, second = load_file(tiny_checkpoint / shard), load_file(again / shard)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[name], second[name]) for name in first)
    sidecar = torch.load(tiny_checkpoint / 'action_head--150000_checkpoint.pt', weights_only=True)
    assert all(key.startswith('module.model.') for key in sidecar)
    config = json.loads((tiny_checkpoint / 'config.json').read_text())
    assert config['model_type'] == 'openvla' and UNNORM_KEY in config['norm_stats']


def test_reload_predicts_bit_identically(tiny_checkpoint, libero_sequence):
    first = predict(tiny_checkpoint, libero_sequence)
    second = predict(tiny_checkpoint, libero_sequence)
    np.testing.assert_array_equal(first.normalized_actions, second.normalized_actions)
    np.testing.assert_array_equal(first.actions, second.actions)
    assert np.abs(first.normalized_actions).max() > 0


def test_missing_shard(broken):
    shard = sorted(broken.glob('model-*.safetensors'))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f'missing shard {shard.name}'):
        load_checkpoint(broken)


def test_wrong_tensor_shape(broken):
    shard = sorted(broken.glob('model-*.safetensors'))[0]
    tensors = load_file(shard)
    name = next(name for name in tensors if name.endswith('q_proj.weight') or name.endswith('qkv.weight'))
    tensors[name] = tensors[name][:-1]
    save_file(tensors, str(shard), metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has shape"):
        load_checkpoint(broken)


def test_missing_sidecar(broken):
    (broken / 'proprio_projector--150000_checkpoint.pt').unlink()
    with pytest.raises(CheckpointError, match='expected exactly one proprio_projector--\\*_checkpoint.pt sidecar'):
        load_checkpoint(broken)


class Payload:
    """Unpickling this would create a file: the loader must refuse before any of it runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))


def test_pickled_sidecar_that_is_not_a_state_dict(broken, tmp_path):
    marker = tmp_path / 'executed'
    torch.save({'module.fc1.weight': Payload(marker)}, broken / 'proprio_projector--150000_checkpoint.pt')
    with pytest.raises(CheckpointError, match='not a plain tensor state dict'):
        load_checkpoint(broken)
    assert not marker.exists()
    torch.save([torch.zeros(2)], broken / 'proprio_projector--150000_checkpoint.pt')
    with pytest.raises(CheckpointError, match='not a plain tensor state dict \\(got list\\)'):
        load_checkpoint(broken)


def test_unknown_unnorm_key_lists_available(tiny_checkpoint):
    with pytest.raises(CheckpointError, match='unknown unnorm_key .* libero_10_no_noops, libero_goal_no_noops'):
        VlaPolicy(load_checkpoint(tiny_checkpoint), 'bridge_orig')


def test_architecture_override_file(tiny_checkpoint, broken, tmp_path, libero_sequence):
    config = json.loads((broken / 'config.json').read_text())
    architecture = config.pop('ctr_vla_arch')
    config['timm_model_ids'] = ['tiny-dinov2', 'tiny-siglip']
    (broken / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ArchitectureError, match=r'unknown vision towers .*\(--arch\)'):
        load_checkpoint(broken)
    override = tmp_path / 'arch.yaml'
    override.write_text(json.dumps(architecture))
    np.testing.assert_array_equal(predict(broken, libero_sequence, architecture_override=override).normalized_actions,
                                  predict(tiny_checkpoint, libero_sequence).normalized_actions)


def test_predict_command_writes_the_policys_chunk(tiny_checkpoint, libero_sequence, tmp_path):
    np.save(tmp_path / 'primary.npy', libero_sequence['agentview'][2])
    np.save(tmp_path / 'wrist.npy', libero_sequence['wrist'][2])
    state = ','.join(repr(float(value)) for value in libero_sequence['proprio8'][2])
    command = [sys.executable, '-m', 'ctr_vla_ros.tools.predict', '--checkpoint', str(tiny_checkpoint),
               '--primary', str(tmp_path / 'primary.npy'), '--wrist', str(tmp_path / 'wrist.npy'),
               f'--state={state}', '--instruction', libero_sequence['instruction'], '--unnorm-key', UNNORM_KEY,
               '--json', str(tmp_path / 'out.json')]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / 'out.json').read_text())
    expected = predict(tiny_checkpoint, libero_sequence, index=2)
    np.testing.assert_allclose(written['actions'], expected.actions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(written['normalized_actions'], expected.normalized_actions, rtol=0, atol=1e-12)
    assert written['unnorm_key'] == UNNORM_KEY
    assert len(result.stdout.splitlines()) == 2 + 8  # title, header, 8 steps

    command[command.index(UNNORM_KEY)] = 'bridge_orig'
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and 'unknown unnorm_key' in refused.stderr


def test_prompt_is_the_releases_with_the_literal_space_id(tiny_checkpoint, libero_sequence):
    """The release appends token id 29871 after "Out:" whatever the tokenizer; this tokenizer's "▁" is another id."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    tokens, model = checkpoint.tokens, checkpoint.model
    assert tokens.tokenizer.convert_tokens_to_ids('\u2581') not in (None, 29871)
    instruction = libero_sequence['instruction']
    release_ids = [tokens.bos_id] + tokens.tokenizer.encode(
        f'In: What action should the robot take to {instruction.lower()}?\nOut:', add_special_tokens=False)
    if release_ids[-1] != 29871:
        release_ids.append(29871)

    query = VlaPolicy(checkpoint, UNNORM_KEY).prepare(
        [libero_sequence['agentview'][0], libero_sequence['wrist'][0]], libero_sequence['proprio8'][0], instruction)
    embeddings = model.sequence_embeddings(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                           tokens.space_id, tokens.stop_id)
    layout = model.layout(len(query.prompt_ids))
    text_positions = [0, *layout.prompt_positions, layout.action_hidden_positions.start]
    expected = model.language_model.model.embed_tokens(torch.tensor(release_ids))
    torch.testing.assert_close(embeddings[0, text_positions], expected, rtol=0, atol=0)


def test_vocabulary_without_the_release_space_id_is_refused(broken):
    config = json.loads((broken / 'config.json').read_text())
    config['ctr_vla_arch']['llm']['vocab_size'] = 512
    (broken / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match='512 entries, but OpenVLA-OFT appends token id 29871'):
        load_checkpoint(broken)


def test_the_digest_names_a_checkpoint_by_its_contents_not_its_folder(tiny_checkpoint, tmp_path):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / 'elsewhere')
    assert checkpoint_digest(copy) == checkpoint_digest(tiny_checkpoint)
    retrained = shutil.copytree(tiny_checkpoint, tmp_path / 'retrained')
    sidecar = next(retrained.glob('action_head--*_checkpoint.pt'))
    state = torch.load(sidecar, weights_only=True)
    name = next(iter(state))
    state[name] = state[name] + 1
    torch.save(state, sidecar)
    assert checkpoint_digest(retrained) != checkpoint_digest(tiny_checkpoint)
    renamed = shutil.copytree(tiny_checkpoint, tmp_path / 'renamed')
    sidecar = next(renamed.glob('proprio_projector--*_checkpoint.pt'))
    sidecar.rename(sidecar.with_name('proprio_projector--9_checkpoint.pt'))  # another step's export
    assert checkpoint_digest(renamed) != checkpoint_digest(tiny_checkpoint)
