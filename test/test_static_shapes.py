"""Static shapes for the GPU path: the padded (bucketed) step equals the exact one, and after the mask it never waits
for the device. The CUDA graphs themselves need a GPU (`make bench-gpu`); everything they replay runs here."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.ctr.engine import CtrEngine
from ctr_vla_ros.ctr.static_shapes import bucket_size, bucket_sizes, padded_rows
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.random_checkpoint import architecture_for, random_loaded_checkpoint
from ctr_vla_ros.policy import VlaPolicy

UNNORM_KEY = 'libero_spatial_no_noops'
BUCKET = 32
# The exact and the padded step run matrix products of different row counts, whose sums may round differently.
ROUNDING = 1e-4


def test_buckets_round_row_counts_up_to_a_few_sizes():
    assert [bucket_size(count, 32, 256) for count in (0, 1, 32, 33, 250, 256)] == [0, 32, 32, 64, 256, 256]
    assert bucket_size(300, 32, 512) == 320
    assert bucket_sizes(32, 256) == [32, 64, 96, 128, 160, 192, 224, 256]
    assert bucket_sizes(1, 4) == [1, 2, 3, 4]
    assert bucket_sizes(100, 256) == [100, 200, 256]


def test_padded_rows_are_the_computed_rows_in_order_then_repeats_of_the_first():
    computed = torch.zeros(20, dtype=torch.bool)
    computed[[3, 7, 8, 15]] = True
    assert padded_rows(computed, 4).tolist() == [3, 7, 8, 15]
    assert padded_rows(computed, 4).tolist() == computed.nonzero().squeeze(1).tolist()
    assert padded_rows(computed, 9).tolist() == [3, 7, 8, 15, 3, 3, 3, 3, 3]
    assert padded_rows(computed, 0).numel() == 0
    assert padded_rows(torch.ones(5, dtype=torch.bool), 5).tolist() == [0, 1, 2, 3, 4]


def test_cuda_graphs_are_refused_off_a_gpu(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match='cuda_graphs needs the model on a CUDA device'):
        CtrEngine(checkpoint.model, checkpoint.tokens, CtrConfig(row_bucket=BUCKET, cuda_graphs=True))
    with pytest.raises(ValueError, match='row_bucket must be >= 1'):
        CtrConfig(row_bucket=0)


def drifting_inputs(sequence, index):
    """The recorded episode with one moving block pasted into the primary view: every query has static patches to
    reuse and dynamic ones to recompute, in both cameras."""
    primary, wrist = sequence['agentview'][index].copy(), sequence['wrist'][index].copy()
    offset = 12 * index
    primary[40 + offset:90 + offset, 30:80] = 255
    return [primary, wrist], sequence['proprio8'][index], sequence['instruction']


def run_sequence(checkpoint, config, sequence, queries):
    policy = VlaPolicy(checkpoint, UNNORM_KEY, center_crop=False, ctr=config)
    results = []
    for index in range(queries):
        prediction = policy.predict(*drifting_inputs(sequence, index), timestamp=0.1 * index)
        results.append((prediction, [cache.key.clone() for cache in policy.engine.cached_llm],
                        policy.engine.cached_visual_tokens.clone()))
    return results


REUSE_SETTINGS = {
    'off': PRESETS['off'],
    'paper': PRESETS['paper'],
    'fast': PRESETS['fast'],
    'late_llm_reuse': PRESETS['fast'].replace(llm_reuse_start_layer=1),
    'pruned': PRESETS['fast'].replace(llm_prune_layer=1, attention_layer=0),
    'separate_masks': PRESETS['fast'].replace(llm_threshold_scale=0.5),
}


@pytest.mark.parametrize('name', REUSE_SETTINGS)
def test_the_padded_step_equals_the_exact_step_on_the_tiny_checkpoint(name, tiny_checkpoint, libero_sequence):
    check_padded_equals_exact(load_checkpoint(tiny_checkpoint), REUSE_SETTINGS[name], libero_sequence, 8)


def test_the_padded_step_equals_the_exact_step_at_the_release_layer_sizes(tiny_checkpoint, libero_sequence):
    """The real tower widths and Llama-2-7B's layer shape (one block and one layer each, to fit a CPU test)."""
    vocab_size = load_checkpoint(tiny_checkpoint).architecture.llm.vocab_size
    checkpoint = random_loaded_checkpoint(architecture_for('bench', 1, 1, vocab_size), torch.float32)
    check_padded_equals_exact(checkpoint, PRESETS['fast'], libero_sequence, 4)


def check_padded_equals_exact(checkpoint, config, sequence, queries):
    exact = run_sequence(checkpoint, config, sequence, queries)
    padded = run_sequence(checkpoint, config.replace(row_bucket=BUCKET), sequence, queries)
    reused_any = False
    for (ours, our_keys, our_tokens), (theirs, their_keys, their_tokens) in zip(padded, exact, strict=True):
        assert ours.report.keyframe_reason == theirs.report.keyframe_reason
        np.testing.assert_array_equal(ours.report.patch_states, theirs.report.patch_states)
        np.testing.assert_array_equal(ours.report.llm_reuse, theirs.report.llm_reuse)
        reused_any |= bool(ours.report.vision_reuse.any())
        np.testing.assert_allclose(ours.normalized_actions, theirs.normalized_actions, atol=ROUNDING)
        torch.testing.assert_close(our_tokens, their_tokens, atol=ROUNDING, rtol=ROUNDING)
        for our_layer, their_layer in zip(our_keys, their_keys, strict=True):
            torch.testing.assert_close(our_layer, their_layer, atol=ROUNDING, rtol=ROUNDING)
        # Padding is computed, so it is counted: never fewer FLOPs than the exact step, never more than full.
        flops, full = ours.report.flops, ours.report.full_recompute_flops
        assert theirs.report.flops.total <= flops.total
        assert flops.vision_total <= full.vision_total and flops.llm_linear <= full.llm_linear
    assert reused_any == config.enabled


# Calls that make the host wait for the device when their tensor is on a GPU (the engine downloads with `.cpu()`).
HOST_READS = {'__bool__', '__int__', '__float__', '__index__', 'item', 'tolist', 'nonzero', 'cpu', 'numpy', 'equal',
              'masked_select', 'unique', 'argwhere'}
COMPUTE = {'linear', 'conv2d', 'scaled_dot_product_attention'}


class CallLog(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', str(func))
        kwargs = kwargs or {}
        if name == '__getitem__' and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
            name = 'boolean_index'
        self.calls.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize('config', ['fast', 'prune_static'])
@pytest.mark.parametrize('row_bucket', [1, BUCKET])
def test_between_the_mask_and_the_actions_the_step_never_waits_for_the_device(config, row_bucket, tiny_checkpoint,
                                                                                libero_sequence):
    """By construction: the step reads the device once before the model runs (the row counts, and with pruning
    whether the inputs changed), then nothing until the model's last operation; on a GPU each read below would be a
    host synchronisation."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    policy = VlaPolicy(checkpoint, UNNORM_KEY, center_crop=False, ctr=PRESETS[config].replace(row_bucket=row_bucket))
    for index in range(2):
        query = policy.prepare(*drifting_inputs(libero_sequence, index))
        log = CallLog()
        with log:
            report = policy.engine.step(query, timestamp=0.1 * index)[1]
        compute = [position for position, name in enumerate(log.calls) if name in COMPUTE]
        reads = [(position, name) for position, name in enumerate(log.calls)
                 if name in HOST_READS | {'boolean_index'}]
        before = [name for position, name in reads if position < compute[0]]
        during = [name for position, name in reads if compute[0] < position < compute[-1]]
        # The instruction comparison reads the prompt ids, which live on the host; then the row counts.
        assert before == ['equal', 'tolist'] if report.keyframe_reason != 'first_query' else ['tolist']
        assert during == []


def test_the_gpu_check_runs_end_to_end_off_a_gpu(tiny_checkpoint, tmp_path):
    """`make bench-gpu` itself needs a GPU; here the same script runs on the CPU on a tiny model, with padded
    shapes instead of graphs, and must produce its full results."""
    import json

    from ctr_vla_ros.benchmarks import gpu

    vocab_size = load_checkpoint(tiny_checkpoint).architecture.llm.vocab_size
    gpu.run(tmp_path, 1, architecture_for('tiny', 2, 2, vocab_size), 'cpu', torch.float32, queries=3)
    results = json.loads((tmp_path / 'gpu_cpu.json').read_text())
    assert set(results['settings']) == {f'{name}/{mode}' for name in gpu.CONFIGURATIONS for mode in gpu.CPU_MODES}
    for key, setting in results['settings'].items():
        assert setting['queries'] == 2 * 3
        assert setting['max_deviation_from_eager'] <= ROUNDING
        assert (setting['flops_saved'] > 0) == (setting['configuration'] != 'off')
        assert setting['max_deviation_from_off'] == 0 or setting['configuration'] != 'off'
    assert results['settings']['fast/padded']['llm_reuse'] > 0
    assert len(results['goals']) == 3
    assert '| fast/padded |' in (tmp_path / 'gpu_cpu.md').read_text()
