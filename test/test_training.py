"""Training of the package's own OpenVLA-OFT: the batched forward, the LIBERO dataset, the loop, its checkpoints and
the export. Nothing trains for real: tiny models, small LIBERO HDF5 files written in tmp_path, a few steps."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.ctr.mask import PatchState
from ctr_vla_ros.data.libero_hdf5 import DemoFileWriter, Demonstration
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.flops import count_step_flops
from ctr_vla_ros.model.config import ActionLayout, LlmConfig, ModelArchitecture, VisionTowerConfig
from ctr_vla_ros.model.openvla_oft import BatchReuse, OpenVlaOft
from ctr_vla_ros.model.normalization import GRIPPER_CONVENTIONS, normalize_proprio, unnormalize_actions
from ctr_vla_ros.model.preprocess import center_crop
from ctr_vla_ros.model.random_checkpoint import random_state_dict
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.tools.train import cpu_computes_bf16, main
from ctr_vla_ros.training.architectures import PRESETS
from ctr_vla_ros.training.augment import augment_images, crop_and_resize
from ctr_vla_ros.training.ctr_aware import earlier_indices, reusing_rows
from ctr_vla_ros.training.dataset import (action_chunks, build_samples, dataset_statistics, episodes_from_files,
                                          make_episode, noop_steps, normalize_actions, split_episodes)
from ctr_vla_ros.training.trainer import STEP_PHASES, Trainer, TrainingConfig

SPACE_ID, STOP_ID = 29871, 2
TINY = ModelArchitecture(
    (VisionTowerConfig('dinov2', 32, 3, 2, 64, num_registers=4), VisionTowerConfig('siglip', 32, 3, 2, 64)),
    LlmConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=32064),
    ActionLayout())


@pytest.fixture(autouse=True)
def one_thread():
    """These models are too small to gain from a second thread, and the machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(seed: int = 0) -> OpenVlaOft:
    model = OpenVlaOft(TINY)
    model.load_state_dict({name: value.float() for name, value in random_state_dict(model, seed).items()})
    return model


def test_batched_forward_equals_each_sample_alone():
    torch.manual_seed(0)
    model = random_model()
    prompts = [torch.tensor([1, 40, 41, 42, 43, 44, 45]), torch.tensor([1, 50, 51]), torch.tensor([1, 60, 61, 62])]
    pixel_values = torch.randn(3, 2, 6, 224, 224)
    proprio = torch.rand(3, 8) * 2 - 1
    batched = model.forward_batch(pixel_values, proprio, prompts, SPACE_ID, STOP_ID)
    assert batched.shape == (3, 8, 7)
    for index, prompt in enumerate(prompts):
        alone = model(pixel_values[index], proprio[index], prompt, SPACE_ID, STOP_ID)
        torch.testing.assert_close(batched[index].detach(), alone, rtol=0, atol=1e-5)


# LIBERO HDF5 files in the official layout, written with the package's writer: each demo starts with two no-op
# steps and closes the gripper halfway through; its images are random.
INSTRUCTIONS = ('put the bowl on the stove', 'open the top drawer of the cabinet')
DEMO_STEPS = 12
TEST_ARCH = {'vision_towers': [{'kind': 'dinov2', 'width': 32, 'depth': 2, 'heads': 2, 'mlp_width': 64,
                                'num_registers': 4},
                               {'kind': 'siglip', 'width': 32, 'depth': 2, 'heads': 2, 'mlp_width': 64}],
             'llm': {'hidden_size': 64, 'num_layers': 1, 'num_heads': 4, 'intermediate_size': 128}}


def demonstration(generator: np.random.Generator, steps: int = DEMO_STEPS, image_size: int = 64) -> Demonstration:
    actions = generator.uniform(-0.8, 0.8, (steps, 7))
    actions[:, 6] = np.where(np.arange(steps) < steps // 2, -1.0, 1.0)
    actions[:2, :6] = 0.0
    positions = np.cumsum(actions[:, :3] * 0.01, axis=0) + [0.0, 0.0, 1.0]
    ee_states = np.concatenate([positions, generator.normal(0, 0.1, (steps, 3)) + [3.1, 0, 0]], axis=1)
    fingers = np.where(actions[:, 6:] < 0, 0.04, 0.01)
    images = generator.integers(0, 256, (2, steps, image_size, image_size, 3), dtype=np.uint8)
    return Demonstration(actions=actions, agentview_rgb=images[0], eye_in_hand_rgb=images[1], ee_states=ee_states,
                         gripper_states=np.concatenate([fingers, -fingers], axis=1),
                         joint_states=np.zeros((steps, 7)), robot_states=np.zeros((steps, 9)),
                         states=np.zeros((steps, 10)))


def write_libero_file(path: Path, instruction: str, demos: int, seed: int) -> Path:
    generator = np.random.default_rng(seed)
    writer = DemoFileWriter(path, {'language_instruction': instruction})
    for _ in range(demos):
        writer.write(demonstration(generator))
    return path


@pytest.fixture
def libero_files(tmp_path):
    return tuple(str(write_libero_file(tmp_path / f'task{index}.hdf5', instruction, demos=3, seed=index))
                 for index, instruction in enumerate(INSTRUCTIONS))


@pytest.fixture
def test_config(tmp_path, libero_files):
    arch_file = tmp_path / 'arch.yaml'
    arch_file.write_text(yaml.safe_dump(TEST_ARCH))
    return TrainingConfig(data_files=libero_files, architecture=str(arch_file), steps=4, batch_size=4,
                          learning_rate=1e-3, validation_fraction=0.34, validation_interval=100,
                          validation_samples=4, checkpoint_interval=2)


def test_noops_gripper_convention_chunks_and_statistics_by_hand():
    actions = np.array([[0, 0, 0, 0, 0, 0, -1],  # no-op: no motion at the start
                        [0.5, 0, 0, 0, 0, 0, -1],
                        [0, 0, 0, 0, 0, 0, -1],  # no-op: no motion, gripper as before
                        [0, 0, 0, 0, 0, 0, 1],  # kept: the gripper closes
                        [0, 0.2, 0, 0, 0, 0.1, 1]], dtype=float)
    np.testing.assert_array_equal(noop_steps(actions), [True, False, True, False, False])
    states = np.arange(5 * 6, dtype=float).reshape(5, 6)
    fingers = np.tile([[0.04, -0.04]], (5, 1))
    images = np.zeros((5, 8, 8, 3), np.uint8)
    stored = Demonstration(actions=actions, agentview_rgb=images, eye_in_hand_rgb=images, ee_states=states,
                           gripper_states=fingers, joint_states=np.zeros((5, 7)), robot_states=np.zeros((5, 9)),
                           states=np.zeros((5, 10)))
    episode = make_episode('task', stored)
    np.testing.assert_array_equal(episode.actions[:, 6], [1.0, 0.0, 0.0])  # -1 open -> 1, +1 close -> 0
    np.testing.assert_array_equal(GRIPPER_CONVENTIONS['open_is_one'](episode.actions[:, 6]), actions[[1, 3, 4], 6])
    np.testing.assert_array_equal(episode.proprio[:, :6], states[[1, 3, 4]])
    assert episode.images.shape == (3, 2, 8, 8, 3)

    chunks = action_chunks(episode.actions, chunk_size=4)
    assert chunks.shape == (3, 4, 7)
    np.testing.assert_array_equal(chunks[1], episode.actions[[1, 2, 2, 2]])  # padded with the last action

    statistics = dataset_statistics([episode])
    assert statistics['action']['mask'] == [True] * 6 + [False]
    assert statistics['num_transitions'] == 3 and statistics['num_trajectories'] == 1
    np.testing.assert_allclose(statistics['action']['q01'][0], np.quantile([0.5, 0.0, 0.0], 0.01))
    np.testing.assert_allclose(statistics['action']['q99'][0], 0.49, atol=1e-12)  # 0.5 - 0.01 * 0.5 * 2
    np.testing.assert_allclose(statistics['proprio']['q99'][6], 0.04)
    normalized = normalize_actions(episode.actions, statistics['action'])
    np.testing.assert_allclose(normalized[:, 0], [1.0, -1.0, -1.0])  # 0.5 is above q99: clipped
    np.testing.assert_array_equal(normalized[:, 6], episode.actions[:, 6])  # the gripper is not normalised
    np.testing.assert_allclose(unnormalize_actions(normalize_actions(chunks, statistics['action']),
                                                   statistics['action'])[:, :, 1],
                               np.clip(chunks[:, :, 1], statistics['action']['q01'][1],
                                       statistics['action']['q99'][1]), atol=1e-7)


def test_a_demonstration_with_a_frame_stride_gives_samples_at_its_kept_framed_steps(tmp_path):
    """Frames at steps 0, 2, 4, 6 of 7; steps 0 and 3 are no-ops: the samples are steps 2, 4 and 6, the kept steps
    1, 2 and 4, each with its own frame, state and chunk; one chunk (2 steps) back from a sample is the last sample
    at or before that step."""
    actions = np.tile([[0.1, 0, 0, 0, 0, 0, -1]], (7, 1))
    actions[:, 1] = np.arange(7)  # each step's action tells its step
    actions[[0, 3], :6] = 0.0
    frames = np.arange(0, 7, 2, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    states = np.arange(7 * 6, dtype=float).reshape(7, 6)
    stored = Demonstration(actions=actions, agentview_rgb=frames, eye_in_hand_rgb=frames + 100, ee_states=states,
                           gripper_states=np.zeros((7, 2)), joint_states=np.zeros((7, 7)),
                           robot_states=np.zeros((7, 9)), states=np.zeros((7, 10)), frame_stride=2)
    path = tmp_path / 'strided.hdf5'
    DemoFileWriter(path, {'language_instruction': 'task'}).write(stored)
    with pytest.raises(ValueError, match='frame stride 1 need 7'):
        DemoFileWriter(path, {'language_instruction': 'task'}).write(dataclasses.replace(stored, frame_stride=1))
    [episode] = episodes_from_files([path])
    np.testing.assert_array_equal(episode.actions[:, 1], [1, 2, 4, 5, 6])
    np.testing.assert_array_equal(episode.sample_steps, [1, 2, 4])
    np.testing.assert_array_equal(episode.images[:, 0, 0, 0, 0], [2, 4, 6])
    np.testing.assert_array_equal(episode.images[:, 1, 0, 0, 0], [102, 104, 106])
    statistics = dataset_statistics([episode])
    samples = build_samples([episode, episode], statistics, ['task'], chunk_size=2, center_crop=True)
    assert len(samples) == 6
    np.testing.assert_array_equal(samples.step, [1, 2, 4, 1, 2, 4])
    np.testing.assert_array_equal(samples.episode_first, [0, 0, 0, 3, 3, 3])
    chunks = normalize_actions(action_chunks(episode.actions, 2), statistics['action'])
    np.testing.assert_allclose(samples.actions[:3], chunks[[1, 2, 4]], atol=1e-6)
    np.testing.assert_allclose(samples.proprio[:3, :6],
                               normalize_proprio(episode.proprio, statistics['proprio'])[[1, 2, 4], :6], atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    earlier = earlier_indices(torch.tensor([0, 1, 2, 3, 4, 5]), samples.episode_first, samples.step, 2, 1, generator)
    np.testing.assert_array_equal(earlier, [0, 0, 1, 3, 3, 4])  # steps 1, 2, 4 -> at or before -1, 0, 2


def test_files_read_in_order_and_validation_holds_out_whole_demos(libero_files):
    episodes = episodes_from_files(libero_files)
    assert [episode.instruction for episode in episodes] == [INSTRUCTIONS[0]] * 3 + [INSTRUCTIONS[1]] * 3
    assert all(len(episode.actions) == DEMO_STEPS - 2 for episode in episodes)  # both leading no-ops dropped
    training, validation = split_episodes(episodes, 0.34, seed=0)
    assert sorted(episode.instruction for episode in validation) == sorted(INSTRUCTIONS)
    assert len(training) == 4 and not {id(episode) for episode in training} & {id(episode) for episode in validation}
    assert [id(episode) for episode in split_episodes(episodes, 0.34, seed=0)[1]] == \
        [id(episode) for episode in validation]


def test_augmentation_keeps_shape_and_dtype_and_is_reproducible():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    augmented = augment_images(images, torch.Generator().manual_seed(5))
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    assert not torch.equal(augmented, images)
    assert torch.equal(augmented, augment_images(images, torch.Generator().manual_seed(5)))
    # The crop is the serving path's centre crop when its box is the centre one (TensorFlow sampling, 1 LSB).
    side = math.sqrt(0.9)
    centre = torch.full((3,), (1 - side) / 2)
    cropped = crop_and_resize(images.permute(0, 3, 1, 2).float() / 255, centre, centre, side)
    cropped = torch.floor(cropped * 255.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    served = np.stack([center_crop(image) for image in images.numpy()])
    assert np.abs(cropped.astype(int) - served).max() <= 1
    # frames=2: one camera at two moments goes through one draw; consecutive pairs of identical images stay equal.
    pairs = images.repeat_interleave(2, dim=0)
    paired = augment_images(pairs, torch.Generator().manual_seed(5), frames=2)
    assert all(torch.equal(paired[index], paired[index + 1]) for index in range(0, 6, 2))
    assert not torch.equal(augment_images(pairs, torch.Generator().manual_seed(5))[0],
                           augment_images(pairs, torch.Generator().manual_seed(5))[1])


def test_a_few_steps_lower_the_loss_on_a_tiny_batch(test_config, tmp_path):
    trainer = Trainer(test_config, tmp_path / 'run')
    batch = torch.arange(2)
    before = trainer.loss(trainer.training_samples, batch, augment=False).item()
    for _ in range(8):
        trainer.optimizer.zero_grad()
        trainer.loss(trainer.training_samples, batch, augment=False).backward()
        trainer.optimizer.step()
    after = trainer.loss(trainer.training_samples, batch, augment=False).item()
    assert after < 0.7 * before


def test_a_profiled_step_is_a_training_step_with_its_phases_timed(test_config, tmp_path):
    profiled = Trainer(test_config, tmp_path / 'profiled')
    timing = profiled.profile(steps=2, warmup=1)
    assert set(timing) == {*STEP_PHASES, 'step', 'samples_per_second'}
    assert all(timing[phase] > 0 for phase in STEP_PHASES)
    assert sum(timing[phase] for phase in STEP_PHASES) <= timing['step']
    plain = Trainer(test_config, tmp_path / 'plain')
    for _ in range(3):
        plain.train_step()
    assert profiled.step == plain.step == 3
    assert profiled.history['train'] == plain.history['train'], 'timing changes nothing the step computes'


def test_bf16_arithmetic_is_read_from_the_cpu_flags(tmp_path):
    """bf16 autocast is emulated, and several times slower than fp32, on a CPU without AVX512-BF16 or AMX."""
    def cpuinfo(flags: str) -> Path:
        path = tmp_path / f'cpuinfo_{len(list(tmp_path.iterdir()))}'
        path.write_text(f'processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n')
        return path
    assert cpu_computes_bf16(cpuinfo('fpu sse2 avx avx2 fma avx512f avx512_bf16')) is True
    assert cpu_computes_bf16(cpuinfo('fpu sse2 avx avx2 amx_tile amx_bf16')) is True
    assert cpu_computes_bf16(cpuinfo('fpu sse2 avx avx2 fma avx512f avx512bw')) is False
    assert cpu_computes_bf16(tmp_path / 'absent') is None
    no_flags = tmp_path / 'no_flags'
    no_flags.write_text('processor\t: 0\nmodel name\t: test\n')
    assert cpu_computes_bf16(no_flags) is None


# Every patch static, 100 kept fresh by the previous query's attention: a partial mask on any input.
LLM_REUSE = CtrConfig(top_k=100, difference_threshold=1.0, max_reuse_per_image=0, vision_reuse=False)


@pytest.mark.parametrize('rule', [LLM_REUSE, LLM_REUSE.replace(llm_prune_layer=1, attention_layer=0)],
                         ids=['cached', 'pruned'])
def test_a_ctr_aware_pass_is_what_the_engine_serves_from_the_same_cache(tiny_checkpoint, libero_sequence, rule):
    """The training pass with an earlier frame's keys and values at the reused tokens gives the actions the CTR
    engine gives when its cache holds that frame (LLM reuse; vision recomputed, the engine's own mask)."""
    policy = VlaPolicy(load_checkpoint(tiny_checkpoint), 'libero_spatial_no_noops', center_crop=False, ctr=rule)
    model, tokens = policy.checkpoint.model, policy.checkpoint.tokens
    queries = [([libero_sequence['agentview'][index], libero_sequence['wrist'][index]],
                libero_sequence['proprio8'][index], libero_sequence['instruction']) for index in (0, 6)]
    policy.predict(*queries[0])
    served = policy.predict(*queries[1])
    reused = torch.from_numpy(served.report.patch_states == PatchState.REUSED).flatten()[None]
    assert served.report.keyframe_reason == '' and 0 < reused.float().mean() < 1
    earlier, current = (policy.prepare(*query) for query in queries)
    with torch.inference_mode():
        cache = model.earlier_pass(earlier.pixel_values[None], earlier.normalized_proprio[None],
                                   [earlier.prompt_ids], tokens.space_id, tokens.stop_id)
        reuse = BatchReuse(cache, torch.zeros_like(reused), reused, rule.llm_reuse_start_layer, rule.llm_prune_layer)
        trained = model.forward_batch(current.pixel_values[None], current.normalized_proprio[None],
                                      [current.prompt_ids], tokens.space_id, tokens.stop_id, reuse=reuse)[0]
        fresh = model.forward_batch(current.pixel_values[None], current.normalized_proprio[None],
                                    [current.prompt_ids], tokens.space_id, tokens.stop_id)[0]
    np.testing.assert_allclose(trained.numpy(), served.normalized_actions, rtol=0, atol=1e-5)
    assert np.abs(fresh.numpy() - served.normalized_actions).max() > 1e-4, 'the cache must matter'


def test_a_batch_where_some_samples_reuse_gives_each_sample_its_own_result(tiny_checkpoint, libero_sequence):
    """The earlier pass runs only for the samples that reuse (`BatchReuse.rows`); the batch's other samples, here
    one with a longer prompt than the earlier pass saw, get exactly their full-recompute result."""
    policy = VlaPolicy(load_checkpoint(tiny_checkpoint), 'libero_spatial_no_noops', center_crop=False)
    model, tokens = policy.checkpoint.model, policy.checkpoint.tokens

    def prepared(index, instruction):
        return policy.prepare([libero_sequence['agentview'][index], libero_sequence['wrist'][index]],
                              libero_sequence['proprio8'][index], instruction)

    earlier, reusing = prepared(0, libero_sequence['instruction']), prepared(6, libero_sequence['instruction'])
    other = prepared(6, libero_sequence['instruction'] + ' and then put the bowl back on the plate slowly')
    assert len(other.prompt_ids) > len(earlier.prompt_ids)
    reused = (torch.arange(model.architecture.num_visual_tokens) % 3 == 0)[None]
    space, stop = tokens.space_id, tokens.stop_id
    with torch.inference_mode():
        cache = model.earlier_pass(earlier.pixel_values[None], earlier.normalized_proprio[None],
                                   [earlier.prompt_ids], space, stop)
        alone = model.forward_batch(reusing.pixel_values[None], reusing.normalized_proprio[None],
                                    [reusing.prompt_ids], space, stop, reuse=BatchReuse(cache, reused, reused))[0]
        fresh = model.forward_batch(other.pixel_values[None], other.normalized_proprio[None], [other.prompt_ids],
                                    space, stop)[0]
        masks = torch.cat([torch.zeros_like(reused), reused])
        both = model.forward_batch(torch.stack([other.pixel_values, reusing.pixel_values]),
                                   torch.stack([other.normalized_proprio, reusing.normalized_proprio]),
                                   [other.prompt_ids, reusing.prompt_ids], space, stop,
                                   reuse=BatchReuse(cache, masks, masks, rows=torch.tensor([1])))
    torch.testing.assert_close(both[0], fresh, rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1], alone, rtol=0, atol=1e-5)
    assert (alone - model.forward_batch(reusing.pixel_values[None], reusing.normalized_proprio[None],
                                        [reusing.prompt_ids], space, stop)[0]).abs().max() > 1e-4


def test_ctr_aware_batches_reuse_earlier_frames_of_the_same_episode(test_config, tmp_path):
    rule = tmp_path / 'every_patch_static.yaml'  # the test's frames are random: only threshold 1 finds static patches
    rule.write_text(CtrConfig(difference_threshold=1.0, top_k=32, max_reuse_per_image=0).to_parameters_yaml())
    config = dataclasses.replace(test_config, ctr_aware=str(rule), ctr_aware_share=1.0, ctr_aware_queries_back=2)
    trainer = Trainer(config, tmp_path / 'run')
    samples = trainer.training_samples
    indices = trainer.batch_indices(0)
    generator_state = trainer.augment_generator.get_state()
    batch = trainer.model_inputs(samples, indices, augment=True)
    assert batch.reuse_llm.shape == (len(indices), trainer.architecture.num_visual_tokens)
    assert batch.reuse_llm.any() and torch.equal(batch.reuse_vision, batch.reuse_llm)  # one unified mask
    assert batch.reuse_llm.sum(dim=1).tolist() == [trainer.architecture.num_visual_tokens - 32] * len(indices)
    trainer.augment_generator.set_state(generator_state)
    assert torch.equal(reusing_rows(len(indices), 1.0, trainer.augment_generator), torch.arange(len(indices)))
    chunk = trainer.architecture.action.chunk_size
    earlier = earlier_indices(indices, samples.episode_first, samples.step, chunk, 2, trainer.augment_generator)
    assert torch.all(earlier >= samples.episode_first[indices])
    assert torch.all((earlier == samples.episode_first[indices]) | ((indices - earlier) % chunk == 0))
    torch.testing.assert_close(batch.earlier_proprio, samples.proprio[earlier])
    loss = trainer._loss(batch)
    assert torch.isfinite(loss)
    trainer.train_step()
    assert math.isfinite(trainer.history['train'][-1][1])

    # With a share, only the drawn rows get earlier frames, and only they reuse.
    trainer.ctr_aware = dataclasses.replace(trainer.ctr_aware, share=0.5)
    for _ in range(100):  # a generator state whose draw splits the batch
        state = trainer.augment_generator.get_state()
        rows = reusing_rows(len(indices), 0.5, trainer.augment_generator)
        if 0 < len(rows) < len(indices):
            break
    trainer.augment_generator.set_state(state)
    batch = trainer.model_inputs(samples, indices, augment=True)
    assert torch.equal(batch.earlier_rows, rows) and len(batch.earlier_proprio) == len(rows)
    others = torch.ones(len(indices), dtype=torch.bool)
    others[rows] = False
    assert batch.reuse_llm[rows].any() and not batch.reuse_llm[others].any() and not batch.reuse_vision[others].any()
    assert torch.isfinite(trainer._loss(batch))


def test_resumed_run_equals_uninterrupted_run(test_config, tmp_path):
    uninterrupted = Trainer(test_config, tmp_path / 'uninterrupted')
    uninterrupted.run()

    killed = Trainer(test_config, tmp_path / 'resumed')
    for _ in range(2):
        killed.train_step()
    killed.save_state()  # what run() does at step 2 (checkpoint_interval): then the process dies
    killed.train_step()  # lost with the process
    resumed = Trainer(test_config, tmp_path / 'resumed', resume=True)
    assert resumed.step == 2
    resumed.run()

    assert resumed.history['train'] == uninterrupted.history['train']
    assert resumed.history['validation'] == uninterrupted.history['validation']
    for model in ('model', 'exported_model'):
        expected_state = getattr(uninterrupted, model).state_dict()
        for (name, expected), actual in zip(expected_state.items(), getattr(resumed, model).state_dict().values(),
                                            strict=True):
            assert torch.equal(expected, actual), (model, name)
    with pytest.raises(ValueError, match='batch_size'):
        Trainer(dataclasses.replace(test_config, batch_size=2), tmp_path / 'resumed', resume=True)


def test_export_loads_and_predicts_what_the_trained_model_predicts(test_config, tmp_path):
    trainer = Trainer(dataclasses.replace(test_config, steps=2), tmp_path / 'run')
    trainer.run()
    assert (tmp_path / 'run' / 'loss_curve.png').stat().st_size > 0
    checkpoint = load_checkpoint(tmp_path / 'run' / 'checkpoint')
    assert checkpoint.architecture == trainer.architecture
    assert checkpoint.statistics == {'libero_goal_no_noops': trainer.statistics}

    # The first validation sample, from the raw HDF5 data through the serving path (LIBERO images: rotate180).
    _, validation = split_episodes(episodes_from_files(test_config.data_files), test_config.validation_fraction,
                                   test_config.seed)
    episode = validation[0]
    policy = VlaPolicy(checkpoint, 'libero_goal_no_noops', rotate180=True, ctr=CtrConfig(enabled=False))
    raw_inputs = (list(episode.images[0]), episode.proprio[0], episode.instruction)
    query = policy.prepare(*raw_inputs)
    np.testing.assert_array_equal(np.stack(query.model_images),
                                  trainer.validation_samples.model_images(torch.tensor([0]))[0].numpy())
    torch.testing.assert_close(query.normalized_proprio, trainer.validation_samples.proprio[0])

    trainer.exported_model.eval()
    batch = trainer.model_inputs(trainer.validation_samples, torch.tensor([0]), augment=False)
    in_memory = trainer.exported_model(batch.pixels[0], batch.proprio[0], batch.prompts[0], trainer.tokens.space_id,
                              trainer.tokens.stop_id)
    prediction = policy.predict(*raw_inputs)
    np.testing.assert_allclose(prediction.normalized_actions, in_memory.double().numpy(), rtol=0, atol=1e-5)
    gripper_commands = GRIPPER_CONVENTIONS['open_is_one'](prediction.actions[:, 6])
    assert set(np.unique(gripper_commands)) <= {-1.0, 1.0}


@pytest.mark.parametrize('decay', [0.0, 0.5])
def test_exports_hold_the_moving_average_of_the_weights(test_config, tmp_path, decay):
    """Step n (from 1) moves the average towards the new weights by 1 - min(decay, n / (n + 9)); the first copies
    them. Decay 0 exports the last weights."""
    trainer = Trainer(dataclasses.replace(test_config, steps=3, ema_decay=decay), tmp_path / 'run')
    expected = None
    for step in range(1, 4):
        trainer.train_step()
        weights = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
        weight = 1.0 if expected is None else 1 - min(decay, step / (step + 9))
        expected = weights if expected is None else \
            {name: expected[name] + weight * (weights[name] - expected[name]) for name in weights}
    if decay == 0:
        expected = weights
    trainer.export(tmp_path / 'export')
    exported = load_checkpoint(tmp_path / 'export').model.state_dict()
    assert exported.keys() == weights.keys()
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7)
    if decay:  # the average is not the last weights
        assert any(not torch.allclose(exported[name], weights[name]) for name in weights)


def test_every_new_best_export_is_published_with_its_history(test_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the history and the curve go to benchmarks/results and docs of the working tree
    published = tmp_path / 'models' / 'goal_test'
    trainer = Trainer(dataclasses.replace(test_config, steps=4, validation_interval=1, publish=str(published)),
                      tmp_path / 'run')
    trainer.run()
    history = json.loads((tmp_path / 'benchmarks' / 'results' / 'train_goal_test.json').read_text())
    best_step, best_value = min(trainer.history['validation'], key=lambda point: point[1])
    assert (history['best_step'], history['best_validation']) == (best_step, best_value)
    assert history['history']['validation'] == [point for point in trainer.history['validation']
                                                if point[0] <= best_step]
    assert (tmp_path / 'docs' / 'loss_curve_goal_test.png').stat().st_size > 0
    best = load_checkpoint(tmp_path / 'run' / 'checkpoint-best').model.state_dict()
    for name, tensor in load_checkpoint(published).model.state_dict().items():
        torch.testing.assert_close(tensor, best[name], rtol=0, atol=0)
    assert not published.with_name('goal_test.tmp').exists() and not published.with_name('goal_test.old').exists()


def test_command_line_trains_exports_and_refuses_a_changed_resume(libero_files, tmp_path, capsys):
    output = tmp_path / 'cli'
    arguments = [*libero_files, '--output', str(output), '--arch', 'tiny', '--steps', '2', '--batch-size', '4',
                 '--validation-fraction', '0.34', '--validation-samples', '4', '--threads', '1']
    assert main(arguments) == 0
    assert {'checkpoint', 'checkpoint-best', 'loss_curve.png', 'history.json', 'training_state.pt',
            'tokenizer.json'} <= {path.name for path in output.iterdir()}
    assert load_checkpoint(output / 'checkpoint').architecture == PRESETS['tiny']
    assert main(['--resume', '--output', str(output), '--batch-size', '8']) == 2
    assert 'batch_size' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a fine-tuned model keeps its checkpoint's architecture
        main([*libero_files, '--output', str(tmp_path / 'fine-tune'), '--init-checkpoint', str(output / 'checkpoint'),
              '--arch', 'small'])
    assert 'brings its own architecture' in capsys.readouterr().err


@pytest.mark.parametrize('name', ['small', 'small_llm4'])
def test_presets_keep_the_release_structure_and_export_under_50_mb(name):
    preset = PRESETS[name]
    assert [(tower.kind, tower.num_registers) for tower in preset.vision_towers] == [('dinov2', 4), ('siglip', 0)]
    assert preset.llm.vocab_size == 32064 and preset.patches_per_image == 256
    assert preset.action == ActionLayout(num_images=2, chunk_size=8, action_dim=7, proprio_dim=8)
    with torch.device('meta'):
        model = OpenVlaOft(preset)
    fp32_bytes = 4 * sum(parameter.numel() for parameter in model.parameters())
    assert fp32_bytes < 50e6
    if name == 'small_llm4':  # most of a query's FLOPs in an LLM of at least 4 layers, as in the release
        flops = count_step_flops(preset, prompt_length=20)
        assert preset.llm.num_layers >= 4 and flops.llm / flops.total > 0.7


def test_fine_tuning_starts_from_an_official_format_checkpoint(test_config, tiny_checkpoint, tmp_path):
    config = dataclasses.replace(test_config, architecture=None, init_checkpoint=str(tiny_checkpoint), steps=1)
    trainer = Trainer(config, tmp_path / 'fine-tune')
    released = load_checkpoint(tiny_checkpoint)
    assert trainer.architecture == released.architecture
    for (name, expected), actual in zip(released.model.state_dict().items(), trainer.model.state_dict().values(),
                                        strict=True):
        assert torch.equal(expected, actual), name
    instruction = 'put the bowl on the stove'
    assert trainer.tokens.prompt_ids(instruction) == released.tokens.prompt_ids(instruction)
    trainer.run()
    exported = load_checkpoint(tmp_path / 'fine-tune' / 'checkpoint')
    assert exported.statistics == {'libero_goal_no_noops': trainer.statistics}
    assert not torch.equal(exported.model.action_head.model.fc2.weight, released.model.action_head.model.fc2.weight)
