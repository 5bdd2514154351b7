"""CTR benchmark: CTR and full recompute on the same LIBERO query sequences, in the same run, interleaved query by
query so both see the same machine conditions.

    python -m ctr_vla_ros.benchmarks.ctr --checkpoint checkpoints/bench data/libero/*.npz

For each sequence (two cameras, one frame per model query) and each configuration it records per query: per-stage
time, executed and full-recompute FLOPs, reuse ratios per camera, recomputed LLM tokens and the action deviation
from full recompute (normalised action units). Configurations:
  zero-mask  CTR on with a threshold of 0 (nothing is static): the bookkeeping overhead
  paper            the paper's method (threshold 0.004, K 160, keyframe every 5, cap 120 per image, each patch
                   compared with the previous query's image)
  patch_reference  the same, each patch compared with the pixels it was last recomputed from
  fast             the documented faster preset (see ctr_vla_ros/ctr/config.py PRESETS)
  prune_static     fast's mask, static visual tokens pruned from the LLM above layer 0
Results go to benchmarks/results/ctr_<checkpoint>.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.policy import Prediction, VlaPolicy
from ctr_vla_ros.benchmarks.measurement import machine_description, matmul_throughput, write_results

CONFIGS = {
    'zero-mask': CtrConfig(difference_threshold=0.0, cosine_threshold=1.0),
    'paper': PRESETS['paper'],
    'patch_reference': PRESETS['patch_reference'],
    'fast': PRESETS['fast'],
    'prune_static': PRESETS['prune_static'],
}
UNNORM_KEY = 'libero_spatial_no_noops'


def load_sequence(path: Path) -> dict[str, Any]:
    data = np.load(path)
    return {key: data[key] for key in ('agentview', 'wrist', 'proprio8')} | {'instruction': str(data['instruction'])}


def query_record(prediction: Prediction, baseline: Prediction | None) -> dict[str, Any]:
    report = prediction.report
    record = {
        'keyframe': report.keyframe, 'times': {stage: getattr(report.times, stage) for stage in
                                               ('preprocess', 'mask', 'vision', 'projector', 'llm', 'head')},
        'total_time': report.times.total, 'flops': report.flops.total,
        'full_flops': report.full_recompute_flops.total, 'vision_flops': report.flops.vision_total,
        'llm_flops': report.flops.llm, 'vision_reuse': report.vision_reuse.tolist(),
        'llm_reuse': report.llm_reuse.tolist(),
        'llm_computed_visual_tokens': int(round((1 - report.llm_reuse.mean()) * report.patch_states.size)),
    }
    if baseline is not None:
        deviation = np.abs(prediction.normalized_actions - baseline.normalized_actions)
        record['deviation_max'] = float(deviation.max())
        record['deviation_mean'] = float(deviation.mean())
    return record


def summarize(records: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str, rows: list[dict[str, Any]]) -> float:
        return statistics.median(row[key] for row in rows)

    step, base_step = median('total_time', records), median('total_time', baseline)
    flops, base_flops = sum(row['flops'] for row in records), sum(row['flops'] for row in baseline)
    return {
        'median_step_s': step, 'median_baseline_step_s': base_step, 'speedup': base_step / step,
        'time_reduction': 1 - step / base_step, 'flops_reduction': 1 - flops / base_flops,
        'median_mask_s': statistics.median(row['times']['mask'] for row in records),
        'mean_vision_reuse': float(np.mean([row['vision_reuse'] for row in records], axis=0).mean()),
        'mean_llm_reuse': float(np.mean([row['llm_reuse'] for row in records], axis=0).mean()),
        'deviation_max': max(row.get('deviation_max', 0.0) for row in records),
        'deviation_mean': float(np.mean([row.get('deviation_mean', 0.0) for row in records])),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sequences', type=Path, nargs='+', help='LIBERO query-cadence .npz files')
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--queries', type=int, default=20, help='queries per sequence (from the start)')
    parser.add_argument('--configs', nargs='+', choices=sorted(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    results: dict[str, Any] = {'checkpoint': checkpoint.name, 'dtype': 'fp32', 'machine': machine_description(),
                               'matmul_flops_per_s': matmul_throughput(), 'configs': {}, 'sequences': {}}
    for name in args.configs:
        results['configs'][name] = vars(CONFIGS[name]).copy()
    for path in args.sequences:
        sequence = load_sequence(path)
        queries = min(args.queries, len(sequence['agentview']))
        baseline_policy = VlaPolicy(checkpoint, UNNORM_KEY, ctr=CtrConfig(enabled=False))
        policies = {name: VlaPolicy(checkpoint, UNNORM_KEY, ctr=CONFIGS[name]) for name in args.configs}
        records: dict[str, list[dict[str, Any]]] = {'baseline': []} | {name: [] for name in args.configs}
        for index in tqdm(range(queries), desc=path.stem, unit='query'):
            inputs = ([sequence['agentview'][index], sequence['wrist'][index]], sequence['proprio8'][index],
                      sequence['instruction'])
            # Query timestamps at the LIBERO cadence: 8 control steps at 20 Hz.
            timestamp = index * 0.4
            baseline = baseline_policy.predict(*inputs, timestamp=timestamp)
            records['baseline'].append(query_record(baseline, None))
            for name, policy in policies.items():
                records[name].append(query_record(policy.predict(*inputs, timestamp=timestamp), baseline))
        summaries = {name: summarize(records[name], records['baseline']) for name in args.configs}
        results['sequences'][path.stem] = {'queries': queries, 'records': records, 'summary': summaries}
        print(f'\n{path.stem} ({queries} queries, {checkpoint.name}, fp32)')
        print(f'{"config":<11}{"step ms":>9}{"base ms":>9}{"speedup":>9}{"time -%":>9}{"FLOPs -%":>10}'
              f'{"mask ms":>9}{"reuse V/L":>12}{"dev max":>9}{"dev mean":>10}')
        for name, summary in summaries.items():
            print(f'{name:<11}{summary["median_step_s"] * 1e3:>9.1f}{summary["median_baseline_step_s"] * 1e3:>9.1f}'
                  f'{summary["speedup"]:>8.2f}x{summary["time_reduction"] * 100:>9.1f}'
                  f'{summary["flops_reduction"] * 100:>10.1f}{summary["median_mask_s"] * 1e3:>9.2f}'
                  f'{summary["mean_vision_reuse"]:>6.2f}/{summary["mean_llm_reuse"]:<5.2f}'
                  f'{summary["deviation_max"]:>9.3f}{summary["deviation_mean"]:>10.4f}')
    print(f'results: {write_results(f"ctr_{checkpoint.name}", results)}')


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
