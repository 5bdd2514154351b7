"""`make bench-gpu`: OpenVLA-OFT at the release's full size in bf16 on one CUDA GPU, CTR off and on, eager and with
CUDA graphs, on the LIBERO sequences of data/libero/. Needs nothing but PyTorch (with numpy, pillow, PyYAML,
safetensors, tokenizers and transformers, which PyTorch machines carry) and this repository: run it from the
repository root without installing the package.

    python3 -m ctr_vla_ros.benchmarks.gpu --output DIR

The model (DINOv2-L + SigLIP-So400m, Llama-2-7B, two images, proprio, L1 head) is built with random weights directly
on the GPU (no checkpoint file). Every setting runs on the same inputs, interleaved query by query, in one run:
- `eager`: the exact step (`ctr.row_bucket` 1, no graphs), as the CPU runs it;
- `graphs`: rows padded to `ctr.row_bucket` 32 and every shape replayed as a CUDA graph.
Per setting: median and mean time per query (wall clock around the whole predict, preprocessing and the final
read of the actions included) and per stage (CUDA events), FLOPs executed (padding counted) and saved, action
deviation from `off` in the same mode and from the eager step of the same configuration (bf16), host
synchronisations per query (torch's sync debug mode), peak GPU memory. DIR gets `gpu_<gpu name>.json` and
`gpu_<gpu name>.md` (the table); commit them into benchmarks/results/.

Goals (the GPU issue): off with graphs at most 25 ms per query; `fast` with graphs at least 1.8x faster than off
with graphs; every configuration's time saved at least 80% of its FLOPs saved.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctr_vla_ros.benchmarks.ctr import load_sequence
from ctr_vla_ros.benchmarks.measurement import machine_description, matmul_throughput
from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.model.config import ModelArchitecture
from ctr_vla_ros.model.flops import count_step_flops, full_size_architecture
from ctr_vla_ros.model.random_checkpoint import random_loaded_checkpoint
from ctr_vla_ros.policy import Prediction, VlaPolicy

REPO = Path(__file__).resolve().parents[2]
SEQUENCES = sorted((REPO / 'data' / 'libero').glob('*.npz'))
UNNORM_KEY = 'libero_spatial_no_noops'
CONFIGURATIONS = ('off', 'paper', 'fast', 'prune_static')
MODES = {'eager': {'row_bucket': 1, 'cuda_graphs': False}, 'graphs': {'row_bucket': 32, 'cuda_graphs': True}}
# Off a GPU (the suite's run of this script on a tiny model) the padded shapes run without graphs.
CPU_MODES = {'eager': MODES['eager'], 'padded': {'row_bucket': 32, 'cuda_graphs': False}}
STAGES = ('preprocess', 'mask', 'vision', 'projector', 'llm', 'head')
GOAL_OFF_MS = 25.0
GOAL_FAST_SPEEDUP = 1.8
GOAL_TIME_PER_FLOPS = 0.8


def sequence_inputs(sequence: dict[str, Any], index: int) -> tuple[list[np.ndarray], np.ndarray, str]:
    return [sequence['agentview'][index], sequence['wrist'][index]], sequence['proprio8'][index], \
        sequence['instruction']


def timed_predict(policy: VlaPolicy, inputs: tuple, timestamp: float) -> tuple[Prediction, float, int]:
    """One query: the prediction, its wall time (s) and the host synchronisations it made (on a GPU)."""
    cuda = policy.device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        if cuda:
            torch.cuda.set_sync_debug_mode('warn')
        started = time.perf_counter()
        prediction = policy.predict(*inputs, timestamp=timestamp)
        elapsed = time.perf_counter() - started
        if cuda:
            torch.cuda.set_sync_debug_mode('default')
    syncs = sum(1 for warning in caught if 'synchroniz' in str(warning.message))
    return prediction, elapsed, syncs


def run(output: Path, repeats: int, architecture: ModelArchitecture | None = None, device: str = 'cuda',
        dtype: torch.dtype = torch.bfloat16, queries: int | None = None) -> dict[str, Any]:
    """The whole check. `architecture`, `device`, `dtype` and `queries` (per sequence, default all) other than
    the defaults only to test this script."""
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('no CUDA device: this benchmark runs on a GPU')
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    modes = MODES if device.type == 'cuda' else CPU_MODES
    started = time.perf_counter()
    architecture = architecture or full_size_architecture()
    checkpoint = random_loaded_checkpoint(architecture, dtype, device)
    build_seconds = time.perf_counter() - started
    sequences = [{key: value[:queries] if key != 'instruction' else value for key, value in
                  load_sequence(path).items()} for path in SEQUENCES]

    policies = {}
    capture_seconds = {}
    for name in CONFIGURATIONS:
        for mode, settings in modes.items():
            started = time.perf_counter()
            policies[name, mode] = VlaPolicy(checkpoint, UNNORM_KEY, center_crop=False,
                                             ctr=PRESETS[name].replace(**settings))
            # Warm-up pass: cuDNN/cuBLAS choices, and with graphs every capture (the vision graphs at start-up, the
            # LLM graphs of each prompt length on its first query).
            for sequence in sequences:
                policies[name, mode].engine.reset()
                for index in range(len(sequence['agentview'])):
                    policies[name, mode].predict(*sequence_inputs(sequence, index), timestamp=0.1 * index)
            capture_seconds[name, mode] = time.perf_counter() - started
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)

    records: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in policies}
    for repeat in range(repeats):
        for sequence_index, sequence in enumerate(sequences):
            for policy in policies.values():
                policy.engine.reset()
            for index in range(len(sequence['agentview'])):
                inputs = sequence_inputs(sequence, index)
                predictions = {}
                for key, policy in policies.items():
                    prediction, elapsed, syncs = timed_predict(policy, inputs, 0.1 * index)
                    predictions[key] = prediction
                    report = prediction.report
                    records[key].append({
                        'repeat': repeat, 'sequence': sequence_index, 'query': index, 'time': elapsed,
                        'syncs': syncs, 'keyframe': report.keyframe,
                        'stages': {stage: getattr(report.times, stage) for stage in STAGES},
                        'flops': report.flops.total, 'full_flops': report.full_recompute_flops.total,
                        'vision_reuse': float(report.vision_reuse.mean()), 'llm_reuse': float(report.llm_reuse.mean()),
                    })
                for (name, mode), prediction in predictions.items():
                    off = predictions['off', mode].normalized_actions
                    eager = predictions[name, 'eager'].normalized_actions
                    records[name, mode][-1]['deviation_from_off'] = float(np.abs(prediction.normalized_actions
                                                                                 - off).max())
                    records[name, mode][-1]['deviation_from_eager'] = float(np.abs(prediction.normalized_actions
                                                                                   - eager).max())

    prompt_length = len(checkpoint.tokens.prompt_ids(sequences[0]['instruction']))
    full_flops = count_step_flops(architecture, prompt_length).total
    throughput = matmul_throughput(8192 if device.type == 'cuda' else 512, 10, dtype, device)
    results = {
        'gpu': gpu, 'machine': machine_description(), 'dtype': str(dtype).removeprefix('torch.'),
        'model': f'OpenVLA-OFT, random weights, {architecture.llm.num_layers}-layer LLM of width '
                 f'{architecture.llm.hidden_size}',
        'sequences': [path.name for path in SEQUENCES], 'repeats': repeats, 'build_seconds': build_seconds,
        'bf16_matmul_flops_per_second': throughput, 'full_query_flops': full_flops,
        'physical_limit_ms': 1000 * full_flops / throughput,
        'peak_memory_bytes': torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None,
        'settings': {}, 'goals': {},
    }
    for (name, mode), items in records.items():
        times = [item['time'] for item in items]
        results['settings'][f'{name}/{mode}'] = {
            'configuration': name, 'mode': mode, 'queries': len(items),
            'median_ms': 1000 * statistics.median(times), 'mean_ms': 1000 * statistics.fmean(times),
            'stage_median_ms': {stage: 1000 * statistics.median(item['stages'][stage] for item in items)
                                for stage in STAGES},
            'flops_per_query': statistics.fmean(item['flops'] for item in items),
            'flops_saved': 1 - sum(item['flops'] for item in items) / sum(item['full_flops'] for item in items),
            'vision_reuse': statistics.fmean(item['vision_reuse'] for item in items),
            'llm_reuse': statistics.fmean(item['llm_reuse'] for item in items),
            'keyframes': sum(item['keyframe'] for item in items),
            'max_deviation_from_off': max(item['deviation_from_off'] for item in items),
            'max_deviation_from_eager': max(item['deviation_from_eager'] for item in items),
            'syncs_per_query': statistics.fmean(item['syncs'] for item in items),
            'warm_up_and_capture_seconds': capture_seconds[name, mode],
            'queries_detail': items,
        }
    for key, setting in results['settings'].items():
        off = results['settings'][f'off/{setting["mode"]}']
        setting['speedup_vs_off'] = off['mean_ms'] / setting['mean_ms']
        setting['time_saved'] = 1 - setting['mean_ms'] / off['mean_ms']
        setting['time_saved_per_flops_saved'] = (setting['time_saved'] / setting['flops_saved']
                                                 if setting['flops_saved'] > 0 else None)
    fastest_mode = list(modes)[-1]
    graphs = {name: results['settings'][f'{name}/{fastest_mode}'] for name in CONFIGURATIONS}
    results['goals'] = {
        f'off with graphs <= {GOAL_OFF_MS} ms': graphs['off']['median_ms'] <= GOAL_OFF_MS,
        f'fast with graphs >= {GOAL_FAST_SPEEDUP}x off': graphs['fast']['speedup_vs_off'] >= GOAL_FAST_SPEEDUP,
        f'time saved >= {GOAL_TIME_PER_FLOPS:.0%} of FLOPs saved (graphs)': all(
            (setting['time_saved_per_flops_saved'] or 0) >= GOAL_TIME_PER_FLOPS
            for name, setting in graphs.items() if name != 'off'),
    }
    output.mkdir(parents=True, exist_ok=True)
    stem = 'gpu_' + re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_').lower()
    (output / f'{stem}.json').write_text(json.dumps(results, indent=1))
    (output / f'{stem}.md').write_text(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f'# {results["model"]}, {results["dtype"]}, on {results["gpu"]} ({results["machine"]["date"]}, '
             f'torch {results["machine"]["torch"]})', '',
             f'Physical limit of a full query: {results["physical_limit_ms"]:.1f} ms '
             f'({results["full_query_flops"] / 1e12:.2f} TFLOP at {results["bf16_matmul_flops_per_second"] / 1e12:.0f} '
             f'TFLOP/s measured); peak GPU memory {(results["peak_memory_bytes"] or 0) / 2 ** 30:.1f} GiB; '
             f'{results["repeats"]} passes over {", ".join(results["sequences"])}.', '',
             '| setting | median ms | mean ms | speed-up vs off | FLOPs saved | time saved / FLOPs saved | '
             'mask / vision / projector / LLM / head ms (median) | max deviation from off | from eager | '
             'syncs per query |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for key, setting in results['settings'].items():
        stages = ' / '.join(f'{setting["stage_median_ms"][stage]:.2f}' for stage in STAGES[1:])
        ratio = setting['time_saved_per_flops_saved']
        lines.append(f'| {key} | {setting["median_ms"]:.2f} | {setting["mean_ms"]:.2f} | '
                     f'{setting["speedup_vs_off"]:.2f}x | {setting["flops_saved"]:.1%} | '
                     f'{"-" if ratio is None else f"{ratio:.2f}"} | {stages} | '
                     f'{setting["max_deviation_from_off"]:.4f} | {setting["max_deviation_from_eager"]:.4f} | '
                     f'{setting["syncs_per_query"]:.1f} |')
    lines += ['', 'Goals:'] + [f'- {goal}: {"met" if met else "NOT met"}' for goal, met in results['goals'].items()]
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', type=Path, required=True, help='directory for the results JSON and table')
    parser.add_argument('--repeats', type=int, default=3, help='measured passes over the sequences')
    args = parser.parse_args(argv)
    results = run(args.output, args.repeats)
    print(table(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
