"""The CTR engine: exact where it must be, keyframes on every reset condition, mask semantics."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.ctr.engine import CtrEngine, precise_chunk
from ctr_vla_ros.ctr.mask import PatchState, patch_cosine_similarity, patch_difference, reuse_mask, top_k_relevant
from ctr_vla_ros.model.attention import AttentionProbe
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.flops import count_step_flops
from ctr_vla_ros.model.llama import apply_rotary
from ctr_vla_ros.policy import VlaPolicy

REPO = Path(__file__).resolve().parents[1]
UNNORM_KEY = 'libero_spatial_no_noops'
EXACT = 1e-5
# Everything static, nothing forced, no cap, no interval keyframes: every patch reused after the first query.
REUSE_EVERYTHING = CtrConfig(difference_threshold=1.0, top_k=0, max_reuse_per_image=0, keyframe_interval=1000,
                             input_timeout=1e6)


@pytest.fixture(scope='module')
def checkpoint(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def make_policy(checkpoint, config):
    return VlaPolicy(checkpoint, UNNORM_KEY, center_crop=False, ctr=config)


def inputs(sequence, index, instruction=None):
    return ([sequence['agentview'][index], sequence['wrist'][index]], sequence['proprio8'][index],
            instruction or sequence['instruction'])


def plain_model(policy, *query_inputs):
    query = policy.prepare(*query_inputs)
    tokens = policy.checkpoint.tokens
    with torch.inference_mode():
        return policy.checkpoint.model(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                       tokens.space_id, tokens.stop_id).double().numpy()


def test_keyframe_equals_plain_model(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig())
    prediction = policy.predict(*inputs(libero_sequence, 0))
    assert prediction.report.keyframe_reason == 'first_query'
    assert np.all(prediction.report.patch_states == PatchState.KEYFRAME)
    reference = plain_model(policy, *inputs(libero_sequence, 0))
    assert np.abs(prediction.normalized_actions - reference).max() <= EXACT


def test_disabled_engine_equals_plain_model_every_query(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig(enabled=False))
    for index in range(3):
        prediction = policy.predict(*inputs(libero_sequence, index))
        assert prediction.report.keyframe_reason == 'ctr_disabled'
        assert prediction.report.flops.total == prediction.report.full_recompute_flops.total
        assert np.abs(prediction.normalized_actions - plain_model(policy, *inputs(libero_sequence, index))).max() \
            <= EXACT


@pytest.mark.parametrize('config', [
    REUSE_EVERYTHING,
    REUSE_EVERYTHING.replace(vision_reuse=False),
    REUSE_EVERYTHING.replace(llm_reuse=False),
    REUSE_EVERYTHING.replace(llm_reuse_start_layer=1, attention_layer=0),
    REUSE_EVERYTHING.replace(top_k=150),  # a partial mask: recomputed rows attend over cached rows
    REUSE_EVERYTHING.replace(top_k=40, max_reuse_per_image=100, static_metric='rgb_cosine',
                             cosine_threshold=-1.0),
    REUSE_EVERYTHING.replace(llm_prune_layer=1, attention_layer=0),  # nothing changed: nothing stale to prune
    REUSE_EVERYTHING.replace(top_k=150, llm_prune_layer=2, attention_layer=0),
], ids=['all-reused', 'llm-only', 'vision-only', 'llm-from-layer-1', 'partial', 'capped-cosine', 'pruning',
        'partial-pruning'])
def test_identical_inputs_with_reuse_equal_plain_model(checkpoint, libero_sequence, config):
    policy = make_policy(checkpoint, config)
    first = policy.predict(*inputs(libero_sequence, 5))
    second = policy.predict(*inputs(libero_sequence, 5))
    report = second.report
    assert report.keyframe_reason == ''
    reused = (report.vision_reuse if config.vision_reuse else report.llm_reuse).mean()
    assert reused > 0.3, 'the test must actually reuse'
    if config is REUSE_EVERYTHING:
        assert report.vision_reuse.tolist() == [1.0, 1.0] and report.llm_reuse.tolist() == [1.0, 1.0]
        assert report.flops.vision_total == 0 and report.flops.projector == 0
    reference = plain_model(policy, *inputs(libero_sequence, 5))
    assert np.abs(first.normalized_actions - reference).max() <= EXACT
    assert np.abs(second.normalized_actions - reference).max() <= EXACT


def pruned_reference(policy, query_inputs, reuse_llm, prune_layer):
    """The plain model with the reused visual tokens masked out of every attention from `prune_layer` on: an
    independent formulation of pruning (a key mask over the whole sequence instead of a compact stream)."""
    model, tokens = policy.checkpoint.model, policy.checkpoint.tokens
    query = policy.prepare(*query_inputs)
    layout = model.layout(len(query.prompt_ids))
    llm = model.language_model.model
    with torch.inference_mode():
        embeddings = model.sequence_embeddings(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                               tokens.space_id, tokens.stop_id)
        positions = torch.arange(layout.length)
        hidden = llm(embeddings, positions, layers=range(prune_layer))
        keys = torch.ones(layout.length, dtype=torch.bool)
        keys[1:1 + layout.num_visual_tokens] = ~torch.from_numpy(reuse_llm).flatten()
        hidden = llm(hidden, positions, layers=range(prune_layer, len(llm.layers)), key_padding_mask=keys[None])
        action_rows = hidden[0, layout.action_hidden_positions.start:layout.action_hidden_positions.stop]
        return model.predict_actions(action_rows).double().numpy()


@pytest.mark.parametrize('top_k', [0, 150], ids=['all-reused', 'partial'])
def test_pruning_equals_the_plain_model_with_reused_tokens_masked_out(checkpoint, libero_sequence, top_k):
    """Once an input differs from the keyframe's (here the robot state, the images unchanged), reused visual tokens
    are neither computed nor attended from llm_prune_layer on; below it they keep their cached keys and values, exact
    at layer 0 for an unchanged image. It lasts until the next keyframe, unchanged inputs again included."""
    config = REUSE_EVERYTHING.replace(top_k=top_k, llm_prune_layer=1, attention_layer=0)
    policy = make_policy(checkpoint, config)
    images, proprio, instruction = inputs(libero_sequence, 5)
    moved = (images, libero_sequence['proprio8'][6], instruction)
    assert not np.array_equal(moved[1], proprio)
    policy.predict(images, proprio, instruction)
    for _ in range(2):
        second = policy.predict(*moved)
        report = second.report
        assert report.keyframe_reason == '' and report.llm_reuse.mean() > 0.3
        reuse = report.patch_states == PatchState.REUSED
        np.testing.assert_array_equal(reuse.mean(axis=1), report.llm_reuse)
        reference = pruned_reference(policy, moved, reuse, prune_layer=1)
        assert np.abs(second.normalized_actions - reference).max() <= EXACT
        assert np.abs(second.normalized_actions - plain_model(policy, *moved)).max() > 1e-4, \
            'pruning must change the output'
    # Layer 0 attends over the whole sequence (cached keys included), the layers above over the computed positions.
    prompt_length = len(policy.prepare(*moved).prompt_ids)
    length = checkpoint.model.layout(prompt_length).length
    computed, layers = length - int(reuse.sum()), checkpoint.architecture.llm.num_layers
    expected = count_step_flops(checkpoint.architecture, prompt_length, [0, 0], [computed] * layers,
                                [length] + [computed] * (layers - 1), probe_queries=prompt_length - 1)
    assert report.flops.llm_attention == pytest.approx(expected.llm_attention)
    assert report.flops.llm_linear == pytest.approx(expected.llm_linear)


def test_the_probe_must_read_a_layer_every_token_reaches(checkpoint):
    with pytest.raises(ValueError, match='must come before llm_prune_layer'):
        make_policy(checkpoint, CtrConfig(llm_prune_layer=1, attention_layer=-1))
    with pytest.raises(ValueError, match='llm_prune_layer'):
        CtrConfig(llm_reuse_start_layer=2, llm_prune_layer=1)


def test_reuse_changes_the_output_when_inputs_change(checkpoint, libero_sequence):
    """The converse of exactness: reused states are really used (not silently recomputed)."""
    policy = make_policy(checkpoint, REUSE_EVERYTHING)
    policy.predict(*inputs(libero_sequence, 0))
    reused = policy.predict(*inputs(libero_sequence, 19))
    assert np.abs(reused.normalized_actions - plain_model(policy, *inputs(libero_sequence, 19))).max() > 1e-3


def drifted(image, patch_value_offset):
    """The image with patch (0, 0) of the 16x16 grid brightened by a whole number of grey levels."""
    out = image.astype(np.int16).copy()
    out[:14, :14] += patch_value_offset
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize('reference, expected_third_state', [('patch', PatchState.RECOMPUTED_DYNAMIC),
                                                             ('query', PatchState.REUSED)])
def test_mask_compares_with_the_pixels_that_produced_the_cache(checkpoint, libero_sequence, reference,
                                                               expected_third_state):
    """Drift of one grey level per query stays under the threshold (1/255 < 0.004) step to step, but after two
    queries it is 2/255 away from the pixels the cached state was computed from."""
    config = CtrConfig(difference_threshold=0.004, top_k=0, max_reuse_per_image=0, keyframe_interval=1000,
                       input_timeout=1e6, reference=reference)
    policy = make_policy(checkpoint, config)
    primary = libero_sequence['agentview'][0][16:240, 16:240]  # 224x224: the model sees it unchanged
    wrist = libero_sequence['wrist'][0][16:240, 16:240]
    state, instruction = libero_sequence['proprio8'][0], libero_sequence['instruction']
    states = [policy.predict([drifted(primary, offset), wrist], state, instruction).report.patch_states[0, 0]
              for offset in (0, 1, 2)]
    assert states[:2] == [PatchState.KEYFRAME, PatchState.REUSED]
    assert states[2] == expected_third_state


def test_every_reset_condition_forces_a_keyframe(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig(keyframe_interval=3, input_timeout=1.0))
    engine = policy.engine

    def reason(index=1, timestamp=0.0, instruction=None, primary=None):
        images, state, text = inputs(libero_sequence, index, instruction)
        if primary is not None:
            images = [primary, images[1]]
        return policy.predict(images, state, text, timestamp=timestamp).report.keyframe_reason

    assert reason(timestamp=0.0) == 'first_query'
    assert [reason(timestamp=0.1), reason(timestamp=0.2)] == ['', '']
    assert reason(timestamp=0.3) == 'interval'
    assert reason(timestamp=0.4, instruction='put the bowl on the stove') == 'instruction_changed'
    assert reason(timestamp=0.5, instruction='put the bowl on the stove') == ''
    assert reason(timestamp=2.0, instruction='put the bowl on the stove') == 'input_gap'
    assert reason(timestamp=2.1, instruction='put the bowl on the stove',
                  primary=libero_sequence['agentview'][1][:240]) == 'camera_changed'
    engine.reset()
    assert reason(timestamp=2.2) == 'episode_reset'
    engine.reset('model_reload')
    assert reason(timestamp=2.3) == 'model_reload'
    assert engine.keyframe_count == 7 and engine.reset_count == 2


def test_a_chunk_asks_for_precise_mode_when_slow_or_when_the_gripper_command_changes():
    chunk = torch.zeros(8, 7)
    chunk[:, 0], chunk[:, 1] = 0.3, -0.4  # 0.5 per step
    assert precise_chunk(chunk, CtrConfig(precise_speed=0.6))
    assert not precise_chunk(chunk, CtrConfig(precise_speed=0.4))
    assert not precise_chunk(chunk, CtrConfig())  # off by default
    assert not precise_chunk(chunk, CtrConfig(enabled=False, precise_speed=0.6))
    chunk[5:, 6] = 0.8  # the gripper command moves by 0.8 within the chunk
    assert precise_chunk(chunk, CtrConfig(precise_gripper_change=0.5))
    assert not precise_chunk(chunk, CtrConfig(precise_gripper_change=0.9))


def test_precise_mode_recomputes_everything_while_chunks_ask_for_it(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, REUSE_EVERYTHING.replace(precise_speed=1e3))  # every chunk is slow
    reports = []
    for index in range(3):
        prediction = policy.predict(*inputs(libero_sequence, index))
        reports.append(prediction.report)
        assert np.abs(prediction.normalized_actions - plain_model(policy, *inputs(libero_sequence, index))).max() \
            <= EXACT
    assert [report.keyframe_reason for report in reports] == ['first_query', 'precise', 'precise']
    assert [report.flops.total for report in reports] == [reports[0].flops.total] * 3  # each a full keyframe
    policy.engine.reset()
    assert policy.predict(*inputs(libero_sequence, 0)).report.keyframe_reason == 'episode_reset'


@pytest.mark.parametrize('requery', [True, False])
def test_a_reuse_query_that_asks_for_precision_is_rerun_with_full_recompute(checkpoint, libero_sequence, requery):
    reuse, precise = make_policy(checkpoint, REUSE_EVERYTHING), make_policy(checkpoint, REUSE_EVERYTHING)
    keyframe = [policy.predict(*inputs(libero_sequence, 0)).report for policy in (reuse, precise)][1]
    # From the second query on every chunk asks for precision; the first was judged with the mode off.
    precise.engine.config = REUSE_EVERYTHING.replace(precise_speed=1e3, precise_requery=requery)
    reused = reuse.predict(*inputs(libero_sequence, 19))
    second = precise.predict(*inputs(libero_sequence, 19))
    plain = plain_model(precise, *inputs(libero_sequence, 19))
    assert np.abs(reused.normalized_actions - plain).max() > 1e-3  # what the reuse run predicted differs
    if requery:
        assert second.report.keyframe_reason == 'precise_requery'
        assert np.abs(second.normalized_actions - plain).max() <= EXACT
        assert second.report.flops.total == pytest.approx(reused.report.flops.total + keyframe.flops.total)
    else:
        assert second.report.keyframe_reason == ''
        assert np.abs(second.normalized_actions - reused.normalized_actions).max() <= EXACT
        assert second.report.flops.total == pytest.approx(reused.report.flops.total)
    assert precise.predict(*inputs(libero_sequence, 2)).report.keyframe_reason == 'precise'


def test_a_reuse_query_whose_chunk_jumps_is_rerun_with_full_recompute(checkpoint, libero_sequence):
    reuse, guarded = make_policy(checkpoint, REUSE_EVERYTHING), make_policy(checkpoint, REUSE_EVERYTHING)
    first = [policy.predict(*inputs(libero_sequence, 0)) for policy in (reuse, guarded)][1]
    reused = reuse.predict(*inputs(libero_sequence, 19))
    jump = float(np.linalg.norm(reused.normalized_actions[0, :3] - first.normalized_actions[-1, :3]))
    plain = plain_model(guarded, *inputs(libero_sequence, 19))
    assert np.abs(reused.normalized_actions - plain).max() > 1e-3  # what the reuse run predicted differs
    # A threshold above the jump lets the reused chunk through ...
    guarded.engine.config = REUSE_EVERYTHING.replace(consistency_threshold=jump * 1.01)
    through = guarded.predict(*inputs(libero_sequence, 19))
    assert through.report.keyframe_reason == ''
    assert np.abs(through.normalized_actions - reused.normalized_actions).max() <= EXACT
    # ... one below it re-runs the query with full recompute and acts on that, both runs counted.
    guarded.engine.reset()
    guarded.predict(*inputs(libero_sequence, 0))
    guarded.engine.config = REUSE_EVERYTHING.replace(consistency_threshold=jump * 0.99)
    second = guarded.predict(*inputs(libero_sequence, 19))
    assert second.report.keyframe_reason == 'consistency'
    assert np.abs(second.normalized_actions - plain).max() <= EXACT
    assert second.report.flops.total == pytest.approx(reused.report.flops.total + first.report.flops.total)


def test_steady_actions_on_a_static_scene_reuse_the_last_chunk_without_running_the_model(checkpoint,
                                                                                         libero_sequence):
    """Action reuse: after two computed chunks that agree, a query whose mask reuses enough tokens gets the last
    chunk again with no FLOPs; once per `action_reuse_max`, then the model runs again."""
    config = PRESETS['prune_static'].replace(action_reuse_static=0.9, action_reuse_deviation=1e-4,
                                             keyframe_interval=1000, input_timeout=1e6)
    policy = make_policy(checkpoint, config)
    # Identical inputs: the first two chunks agree (the second is exact, see the identical-input tests).
    first, second, third, fourth = (policy.predict(*inputs(libero_sequence, 5)) for _ in range(4))
    assert not second.report.actions_reused and second.report.flops.total > 0
    assert third.report.actions_reused and third.report.keyframe_reason == ''
    assert third.report.flops.total == 0 and third.report.full_recompute_flops == first.report.full_recompute_flops
    np.testing.assert_array_equal(third.normalized_actions, second.normalized_actions)
    np.testing.assert_array_equal(third.report.llm_reuse, [1.0, 1.0])
    assert not fourth.report.actions_reused and fourth.report.flops.total > 0  # at most one in a row
    assert np.abs(fourth.normalized_actions - first.normalized_actions).max() <= EXACT

    # A scene that changed more than the threshold allows, or chunks that disagree, run the model.
    moving = make_policy(checkpoint, config)
    for index in (5, 5, 19):
        moved = moving.predict(*inputs(libero_sequence, index))
    assert moved.report.llm_reuse.mean() < 0.9 and not moved.report.actions_reused
    disagreeing = make_policy(checkpoint, config.replace(action_reuse_static=0.01))
    for index in (5, 19, 19):
        last = disagreeing.predict(*inputs(libero_sequence, index))
    assert not last.report.actions_reused and last.report.flops.total > 0


def test_a_query_that_reused_nothing_is_not_rerun(checkpoint, libero_sequence):
    nothing_static = REUSE_EVERYTHING.replace(difference_threshold=0.0)
    policy = make_policy(checkpoint, nothing_static)
    first = policy.predict(*inputs(libero_sequence, 0))
    policy.engine.config = nothing_static.replace(precise_speed=1e3)
    second = policy.predict(*inputs(libero_sequence, 19))
    assert second.report.keyframe_reason == '' and not second.report.vision_reuse.any()
    assert second.report.flops.total == first.report.flops.total  # one full run, not two
    assert policy.predict(*inputs(libero_sequence, 18)).report.keyframe_reason == 'precise'


def test_top_k_and_per_image_cap_are_honoured(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig(difference_threshold=1.0, top_k=37, max_reuse_per_image=100,
                                               keyframe_interval=1000, input_timeout=1e6))
    policy.predict(*inputs(libero_sequence, 0))
    report = policy.predict(*inputs(libero_sequence, 1)).report
    states = report.patch_states
    assert (states == PatchState.RECOMPUTED_TASK_RELEVANT).sum() == 37
    assert (states == PatchState.RECOMPUTED_DYNAMIC).sum() == 0
    for image in range(2):
        relevant = (states[image] == PatchState.RECOMPUTED_TASK_RELEVANT).sum()
        assert (states[image] == PatchState.REUSED).sum() == min(100, 256 - relevant)
    scores = report.attention_scores.ravel()
    expected_relevant = np.zeros(512, bool)
    expected_relevant[np.argsort(-scores, kind='stable')[:37]] = True
    np.testing.assert_array_equal(states.ravel() == PatchState.RECOMPUTED_TASK_RELEVANT, expected_relevant)
    assert report.vision_reuse.tolist() == [100 / 256, 100 / 256]


def test_changed_instruction_changes_task_relevance_one_query_later(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig(difference_threshold=1.0, top_k=40, keyframe_interval=1000,
                                               input_timeout=1e6))
    other = 'open the top drawer and put the bowl inside'
    reports = [policy.predict(*inputs(libero_sequence, index, instruction)).report
               for index, instruction in [(0, None), (1, None), (2, other), (3, other)]]
    assert [report.keyframe_reason for report in reports] == ['first_query', '', 'instruction_changed', '']
    assert reports[2].attention_scores is None  # a keyframe uses no task relevance
    old_scores, new_scores = reports[1].attention_scores, reports[3].attention_scores
    assert not np.allclose(old_scores, new_scores)
    relevant = reports[3].patch_states.ravel() == PatchState.RECOMPUTED_TASK_RELEVANT
    np.testing.assert_array_equal(np.flatnonzero(relevant), np.sort(np.argsort(-new_scores.ravel())[:40]))


@torch.inference_mode()
def test_attention_probe_equals_explicit_attention_map(checkpoint, libero_sequence):
    policy = make_policy(checkpoint, CtrConfig())
    query = policy.prepare(*inputs(libero_sequence, 0))
    model, tokens = checkpoint.model, checkpoint.tokens
    llm = model.language_model.model
    hidden_size = checkpoint.architecture.llm.hidden_size
    embeddings = model.sequence_embeddings(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                           tokens.space_id, tokens.stop_id)
    positions = torch.arange(embeddings.shape[1])
    layout = model.layout(len(query.prompt_ids))
    prompt = torch.arange(layout.prompt_positions.start, layout.prompt_positions.stop)
    probe = AttentionProbe(prompt, torch.arange(1, 513))
    llm(embeddings, positions, probe_layer=1, probe=probe)

    layer_input = llm(embeddings, positions, layers=range(1))
    attention = llm.layers[1].self_attn
    normed = llm.layers[1].input_layernorm(layer_input)
    heads = checkpoint.architecture.llm.num_heads
    cos, sin = llm.rotary_emb(positions, normed.dtype)
    q = apply_rotary(attention.q_proj(normed).view(1, -1, heads, hidden_size // heads).transpose(1, 2), cos, sin)
    k = apply_rotary(attention.k_proj(normed).view(1, -1, heads, hidden_size // heads).transpose(1, 2), cos, sin)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (hidden_size // heads) ** 0.5, dim=-1)
    expected = weights[0][:, prompt][:, :, 1:513].mean(dim=(0, 1))
    torch.testing.assert_close(probe.scores, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('relevance_queries', ['prompt', 'action'])
@torch.inference_mode()
def test_task_relevance_ranks_by_the_attention_of_the_prompt_or_the_action_positions(checkpoint, libero_sequence,
                                                                                      relevance_queries):
    """The scores a query's mask uses are the previous query's attention onto each visual token at the probe layer,
    averaged over heads and over the prompt's positions or the positions the action head reads."""
    config = CtrConfig(attention_layer=1, llm_prune_layer=-1, relevance_queries=relevance_queries)
    policy = make_policy(checkpoint, config)
    first = policy.prepare(*inputs(libero_sequence, 0))
    _, keyframe = policy.engine.step(first, timestamp=0.0)
    _, report = policy.engine.step(policy.prepare(*inputs(libero_sequence, 1)), timestamp=0.1)

    model, tokens = checkpoint.model, checkpoint.tokens
    llm, architecture = model.language_model.model, checkpoint.architecture
    embeddings = model.sequence_embeddings(first.pixel_values, first.normalized_proprio, first.prompt_ids,
                                           tokens.space_id, tokens.stop_id)
    positions = torch.arange(embeddings.shape[1])
    layout = model.layout(len(first.prompt_ids))
    queries = layout.prompt_positions if relevance_queries == 'prompt' else layout.action_hidden_positions
    layer = llm.layers[1]
    normed = layer.input_layernorm(llm(embeddings, positions, layers=range(1)))
    heads, head_dim = architecture.llm.num_heads, architecture.llm.hidden_size // architecture.llm.num_heads
    cos, sin = llm.rotary_emb(positions, normed.dtype)
    q = apply_rotary(layer.self_attn.q_proj(normed).view(1, -1, heads, head_dim).transpose(1, 2), cos, sin)
    k = apply_rotary(layer.self_attn.k_proj(normed).view(1, -1, heads, head_dim).transpose(1, 2), cos, sin)
    weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, dim=-1)
    visual = layout.num_visual_tokens
    expected = weights[0][:, list(queries)][:, :, 1:visual + 1].mean(dim=(0, 1))
    np.testing.assert_allclose(report.attention_scores.ravel(), expected.numpy(), rtol=1e-4, atol=1e-7)
    # The probe's FLOPs: its queries' scores against the whole sequence.
    without_probe = count_step_flops(architecture, len(first.prompt_ids))
    assert keyframe.flops.llm - without_probe.llm == \
        pytest.approx(2 * len(queries) * layout.length * architecture.llm.hidden_size)


def test_action_relevance_needs_a_layer_after_the_first(checkpoint, libero_sequence):
    config = CtrConfig(attention_layer=0, relevance_queries='action')
    with pytest.raises(ValueError, match='action slots enter the LLM as zeros'):
        make_policy(checkpoint, config)
    make_policy(checkpoint, config.replace(enabled=False))  # off: no probe runs


def test_mask_functions():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=generator)
    same = patch_difference(images, images)
    assert same.shape == (2, 256) and same.abs().max() == 0
    brighter = images.clone()
    brighter[0, 14:28, :14] = (brighter[0, 14:28, :14].int() + 10).clamp(max=255).to(torch.uint8)
    difference = patch_difference(brighter, images)
    assert difference[0, 16] > 0.02 and difference[0, 0] == 0 and difference[1].max() == 0
    np.testing.assert_allclose(patch_cosine_similarity(images, images).numpy(), 1.0, atol=1e-6)
    relevant = top_k_relevant(torch.arange(512, dtype=torch.float32), 3, 2)
    assert relevant[1, -3:].all() and relevant.sum() == 3
    static = torch.ones(1, 8, dtype=torch.bool)
    similarity = torch.arange(8, dtype=torch.float32)[None]
    capped = reuse_mask(static, torch.zeros_like(static), similarity, max_reuse_per_image=3)
    assert capped[0].tolist() == [False] * 5 + [True] * 3


def test_config_validation_and_yaml(checkpoint, tmp_path):
    path = tmp_path / 'ctr.yaml'
    path.write_text('ctr:\n  top_k: 64\n  difference_threshold: 1e-2\n  llm_reuse: false\n')
    config = CtrConfig.from_yaml(path)
    assert (config.top_k, config.difference_threshold, config.llm_reuse) == (64, 0.01, False)
    with pytest.raises(ValueError, match='unknown keys \\[.topk.\\] in "ctr"'):
        CtrConfig.from_dict({'topk': 3})
    with pytest.raises(ValueError, match='keyframe_interval must be >= 1'):
        CtrConfig(keyframe_interval=0)
    with pytest.raises(ValueError, match='precise_speed and precise_gripper_change must be >= 0'):
        CtrConfig(precise_gripper_change=-0.5)
    with pytest.raises(ValueError, match='consistency_threshold must be >= 0'):
        CtrConfig(consistency_threshold=-0.1)
    with pytest.raises(ValueError, match='static_metric must be one of'):
        CtrConfig(static_metric='ssim')
    with pytest.raises(ValueError, match='must be true or false'):
        CtrConfig.from_dict({'enabled': 'yes'})
    with pytest.raises(ValueError, match='attention_layer 7 out of range'):
        CtrEngine(checkpoint.model, checkpoint.tokens, CtrConfig(attention_layer=7))


def test_the_paper_preset_is_the_papers_method():
    paper = PRESETS['paper']
    assert (paper.difference_threshold, paper.top_k, paper.keyframe_interval, paper.max_reuse_per_image,
            paper.reference, paper.static_metric) == (0.004, 160, 5, 120, 'query', 'gray_difference')
    assert paper.vision_reuse and paper.llm_reuse and paper.unified and paper.llm_reuse_start_layer == 0
    assert paper.llm_prune_layer == -1 and paper.attention_layer == -1  # cached keys/values at every layer
    assert PRESETS['patch_reference'] == paper.replace(reference='patch')
    assert CtrConfig.from_yaml(REPO / 'config' / 'ctr_paper.yaml') == paper


def test_the_default_is_prune_static_fast_pruned_above_layer_0():
    prune_static = PRESETS['prune_static']
    assert prune_static == PRESETS['fast'].replace(llm_prune_layer=1, attention_layer=0)
    assert CtrConfig() == prune_static
    assert CtrConfig.from_yaml(REPO / 'config' / 'ctr_vla.yaml') == prune_static


def test_the_fragility_control_perturbs_keys_and_values_by_the_size_asked_for(checkpoint, libero_sequence):
    """Visual noise (CTR off): the chosen share of visual positions gets noise of the asked relative size on its
    keys and values at every layer, the rest is untouched, and the draws follow the seed from the last reset."""
    from ctr_vla_ros.ctr.engine import VisualNoise

    layers = checkpoint.architecture.llm.num_layers
    plain = make_policy(checkpoint, PRESETS['off'])
    plain.predict(*inputs(libero_sequence, 0))
    fresh = [(layer.key.clone(), layer.value.clone()) for layer in plain.engine.cached_llm]

    def noisy(seed):
        policy = make_policy(checkpoint, PRESETS['off'])
        policy.engine.visual_noise = VisualNoise(0.25, tuple(0.1 * (layer + 1) for layer in range(layers)), seed)
        policy.engine.reset()
        return policy, policy.predict(*inputs(libero_sequence, 0))

    policy, first = noisy(seed=3)
    tokens = checkpoint.architecture.patches_per_image * 2
    (key, value), cached = fresh[0], policy.engine.cached_llm[0]  # later layers also see the noise before them
    changed = (cached.key != key).any(dim=(0, 1, 3))
    assert int(changed.sum()) == round(0.25 * tokens) and not changed[0] and not changed[tokens + 1:].any()
    rows = changed.nonzero().squeeze(1)
    for perturbed, original in ((cached.key, key), (cached.value, value)):
        error = torch.linalg.norm(perturbed[:, :, rows] - original[:, :, rows]) / torch.linalg.norm(
            original[:, :, rows])
        assert float(error) == pytest.approx(0.1, rel=1e-4)
    assert not np.allclose(first.normalized_actions, plain.predict(*inputs(libero_sequence, 0)).normalized_actions)
    np.testing.assert_array_equal(noisy(seed=3)[1].normalized_actions, first.normalized_actions)
    assert not np.array_equal(noisy(seed=4)[1].normalized_actions, first.normalized_actions)
    with pytest.raises(ValueError, match='CTR off'):
        reusing = make_policy(checkpoint, PRESETS['paper'])
        reusing.engine.visual_noise = VisualNoise(0.25, (0.1,) * layers)
        reusing.predict(*inputs(libero_sequence, 0))
