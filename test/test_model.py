"""OpenVLA-OFT in plain PyTorch: layout, attention, preprocessing, normalisation, FLOPs (numbers, not shapes)."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.flops import count_step_flops, full_size_architecture
from ctr_vla_ros.model.normalization import (gripper_close_one_to_command, gripper_open_one_to_command,
                                             normalize_proprio, unnormalize_actions)
from ctr_vla_ros.model.preprocess import center_crop, center_crop_sample_points, pixel_values, prepare_image
from ctr_vla_ros.policy import InputError, VlaPolicy

UNNORM_KEY = 'libero_spatial_no_noops'


@pytest.fixture(scope='module')
def checkpoint(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope='module')
def policy(checkpoint):
    return VlaPolicy(checkpoint, UNNORM_KEY)


@pytest.fixture
def query(policy, libero_sequence):
    return policy.prepare([libero_sequence['agentview'][0], libero_sequence['wrist'][0]],
                          libero_sequence['proprio8'][0], libero_sequence['instruction'])


def full_embeddings(checkpoint, query):
    tokens = checkpoint.tokens
    return checkpoint.model.sequence_embeddings(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                                tokens.space_id, tokens.stop_id)


@torch.inference_mode()
def test_action_head_reads_positions_513_plus_L_to_568_plus_L(checkpoint, query):
    prompt_length = len(query.prompt_ids)
    layout = checkpoint.model.layout(prompt_length)
    assert layout.length == prompt_length + 571
    assert (layout.action_hidden_positions.start, layout.action_hidden_positions.stop - 1) == \
        (513 + prompt_length, 568 + prompt_length)

    embeddings = full_embeddings(checkpoint, query)
    hidden = checkpoint.model.language_model.model(embeddings, torch.arange(embeddings.shape[1]))
    tokens = checkpoint.tokens
    reference = checkpoint.model(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                 tokens.space_id, tokens.stop_id)
    read = checkpoint.model.predict_actions(hidden[0, 513 + prompt_length:569 + prompt_length])
    torch.testing.assert_close(read, reference, rtol=0, atol=0)
    shifted = checkpoint.model.predict_actions(hidden[0, 514 + prompt_length:570 + prompt_length])
    assert (shifted - reference).abs().max() > 1e-3


@torch.inference_mode()
def test_attention_is_bidirectional(checkpoint, query):
    embeddings = full_embeddings(checkpoint, query)
    positions = torch.arange(embeddings.shape[1])
    llm = checkpoint.model.language_model.model
    before = llm(embeddings, positions)
    changed = embeddings.clone()
    changed[0, -1] += 1.0  # the stop token's embedding
    after = llm(changed, positions)
    difference = (after - before).abs().amax(dim=-1)[0]
    assert difference[0] > 1e-4, 'BOS (position 0) must see the stop token'
    assert difference[1:513].min() > 0, 'every visual token must see the stop token'


def test_center_crop_samples_tensorflow_rows():
    points = center_crop_sample_points(224)
    np.testing.assert_allclose(points[[0, 1, -1]], [5.7218, 6.6705, 217.2782], atol=1e-4)
    assert np.allclose(np.diff(points), 0.948683, atol=1e-6)
    ramp = np.repeat(np.arange(224, dtype=np.uint8)[:, None, None], 224, axis=1).repeat(3, axis=2)
    cropped = center_crop(ramp)
    # Linear along rows: the bilinear sample is the coordinate itself; floor(x*255.5) back to uint8.
    expected_rows = np.floor(points / 255.0 * 255.5).astype(np.uint8)
    np.testing.assert_array_equal(cropped[:, 100, 0], expected_rows)
    assert cropped[0, 0, 0] == 5 and cropped[-1, 0, 0] == 217


def test_prepare_image_resizes_rotates_and_converts_bgr():
    generator = np.random.default_rng(1)
    image = generator.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    prepared = prepare_image(image, rotate180=False, crop=False)
    assert prepared.shape == (224, 224, 3) and prepared.dtype == np.uint8
    square = generator.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_image(square, rotate180=True, crop=False), square[::-1, ::-1])
    values = pixel_values([square])
    assert values.shape == (1, 6, 224, 224)
    np.testing.assert_allclose(values[0, 3, 0, 0].item(), (square[0, 0, 0] / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(values[0, 0, 0, 0].item(), (square[0, 0, 0] / 255 - 0.485) / 0.229, atol=1e-6)


def test_unnormalization_and_gripper_against_hand_computed_values():
    statistics = {'q01': [-1.0, 0.0, 2.0], 'q99': [3.0, 1.0, 4.0], 'mask': [True, True, False]}
    actions = unnormalize_actions(np.array([0.0, -1.0, 0.7]), statistics)
    np.testing.assert_allclose(actions, [1.000000005, 0.0, 0.7], rtol=0, atol=1e-12)
    proprio = normalize_proprio(np.array([1.0, 5.0, -9.0]), {'q01': [-1.0, 0.0, 0.0], 'q99': [3.0, 1.0, 2.0]})
    np.testing.assert_allclose(proprio, [0.0, 1.0, -1.0], atol=1e-7)
    np.testing.assert_array_equal(gripper_open_one_to_command(np.array([0.9, 0.1, 1.0, 0.0])), [-1, 1, -1, 1])
    np.testing.assert_allclose(gripper_close_one_to_command(np.array([0.0, 0.25, 1.0])), [-1.0, -0.5, 1.0])


def test_bf16_agrees_with_fp32_within_stated_tolerance(tiny_checkpoint, policy, libero_sequence):
    """bf16 (the release's dtype) vs fp32 on the same inputs: within 0.05 in normalised action units."""
    bf16_policy = VlaPolicy(load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16), UNNORM_KEY)
    inputs = ([libero_sequence['agentview'][3], libero_sequence['wrist'][3]], libero_sequence['proprio8'][3],
              libero_sequence['instruction'])
    fp32 = policy.predict(*inputs).normalized_actions
    bf16 = bf16_policy.predict(*inputs).normalized_actions
    assert np.abs(fp32 - bf16).max() < 0.05
    assert np.abs(fp32).mean() > 0.05  # the comparison is not between two near-zero outputs


def test_policy_refuses_bad_input(policy, libero_sequence):
    images = [libero_sequence['agentview'][0], libero_sequence['wrist'][0]]
    state, instruction = libero_sequence['proprio8'][0], libero_sequence['instruction']
    with pytest.raises(InputError, match='expected 2 camera images'):
        policy.prepare(images[:1], state, instruction)
    with pytest.raises(InputError, match='HxWx3 uint8'):
        policy.prepare([images[0].astype(np.float32), images[1]], state, instruction)
    with pytest.raises(InputError, match='non-finite'):
        policy.prepare(images, np.where(np.arange(8) == 2, np.nan, state), instruction)
    with pytest.raises(InputError, match='8-D state'):
        policy.prepare(images, state[:7], instruction)
    with pytest.raises(InputError, match='empty'):
        policy.prepare(images, state, '  ')


@torch.inference_mode()
def test_flops_match_torch_flop_counter(checkpoint, query):
    tokens = checkpoint.tokens
    # torch counts SDPA only for its GPU kernels; give its CPU kernel torch's own SDPA formula.
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: cpu_attention_flops})
    with counter:
        checkpoint.model(query.pixel_values, query.normalized_proprio, query.prompt_ids, tokens.space_id,
                         tokens.stop_id)
    counted = counter.get_flop_counts()
    analytic = count_step_flops(checkpoint.architecture, len(query.prompt_ids))

    def module_total(name):
        return sum(counter.get_flop_counts()[name].values())

    assert module_total('Global') == analytic.total
    assert module_total('OpenVlaOft.vision_backbone.featurizer') == analytic.vision['dinov2']
    assert module_total('OpenVlaOft.vision_backbone.fused_featurizer') == analytic.vision['siglip']
    assert module_total('OpenVlaOft.projector') == analytic.projector
    assert module_total('OpenVlaOft.language_model.model') == analytic.llm
    assert counted['OpenVlaOft.language_model.model'][cpu_attention] == analytic.llm_attention


def test_full_size_flops_match_published_cost():
    flops = count_step_flops(full_size_architecture(), prompt_length=34)  # S = 605
    assert flops.vision_total == pytest.approx(0.74e12, rel=0.01)
    assert flops.projector == pytest.approx(0.073e12, rel=0.01)
    assert flops.llm == pytest.approx(8.03e12, rel=0.01)
    assert flops.llm_attention == pytest.approx(0.19e12, rel=0.02)
    assert flops.total == pytest.approx(8.84e12, rel=0.01)


def test_a_random_model_is_built_in_place_in_its_dtype_and_the_release_size_is_the_releases():
    from ctr_vla_ros.model.openvla_oft import OpenVlaOft
    from ctr_vla_ros.model.random_checkpoint import architecture_for, initial_value, random_model

    architecture = architecture_for('tiny', 2, 2, 32064)
    model = random_model(architecture, torch.bfloat16, 'cpu', seed=1)
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.bfloat16 and parameter.device.type == 'cpu', name
        kind, value = initial_value(name, parameter.shape)
        if kind == 'constant':
            assert bool((parameter == value).all()), name
        elif parameter.numel() > 10_000:
            assert float(parameter.float().std()) == pytest.approx(value, rel=0.05), name
    again = random_model(architecture, torch.bfloat16, 'cpu', seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    with torch.no_grad():
        hidden = model.language_model.model(torch.randn(1, 5, architecture.llm.hidden_size, dtype=torch.bfloat16),
                                            torch.arange(5))
    assert bool(torch.isfinite(hidden).all())

    # The release: 7.5 B parameters (Llama-2-7B with the 32064-row vocabulary, DINOv2-L, SigLIP-So400m without the
    # blocks it never reads), counted on the meta device: nothing is allocated.
    release = full_size_architecture()
    with torch.device('meta'):
        full = OpenVlaOft(release)
    count = sum(parameter.numel() for parameter in full.parameters())
    assert (release.llm.num_layers, release.llm.hidden_size, [tower.depth for tower in release.vision_towers]) == \
        (32, 4096, [24, 27])
    assert 7.4e9 < count < 7.8e9, count
