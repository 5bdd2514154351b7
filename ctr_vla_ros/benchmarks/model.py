"""Model benchmark: per-stage median time and FLOPs of the plain full-recompute step, peak memory and load time,
for one checkpoint, next to this CPU's large-matmul throughput measured in the same run.

    python -m ctr_vla_ros.benchmarks.model --checkpoint checkpoints/bench --steps 5

Run once per checkpoint (a fresh process each, so peak memory is that checkpoint's). Results go to
benchmarks/results/model_<name>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.flops import count_step_flops, full_size_architecture
from ctr_vla_ros.tools.node_processes import REPO
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.benchmarks.measurement import machine_description, matmul_throughput, peak_memory_bytes, write_results
from ctr_vla_ros.benchmarks.ctr import load_sequence

STAGES = ('preprocess', 'mask', 'vision', 'projector', 'llm', 'head')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--sequence', type=Path, default=REPO / 'data' / 'libero' / 'libero_spatial_t0_i0.npz')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--dtype', choices=['fp32', 'bf16'], default='fp32')
    args = parser.parse_args(argv)
    dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16}[args.dtype]

    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint, dtype=dtype)
    load_time = time.perf_counter() - started
    policy = VlaPolicy(checkpoint, 'libero_spatial_no_noops', ctr=CtrConfig(enabled=False))
    sequence = load_sequence(args.sequence)

    reports = []
    for index in tqdm(range(args.steps + 1), desc=f'{checkpoint.name} plain steps', unit='step'):
        prediction = policy.predict([sequence['agentview'][index], sequence['wrist'][index]],
                                    sequence['proprio8'][index], sequence['instruction'])
        if index > 0:  # the first step warms up allocators and caches
            reports.append(prediction.report)

    stage_times = {stage: statistics.median(getattr(report.times, stage) for report in reports)
                   for stage in STAGES}
    step_time = statistics.median(report.times.total for report in reports)
    flops = reports[0].flops
    matmul = matmul_throughput(dtype=dtype)
    full_size = count_step_flops(full_size_architecture(), len(checkpoint.tokens.prompt_ids(sequence['instruction'])))
    results = {
        'checkpoint': checkpoint.name, 'dtype': args.dtype, 'machine': machine_description(),
        'architecture': {'vision_depth': [tower.depth for tower in checkpoint.architecture.vision_towers],
                         'llm_layers': checkpoint.architecture.llm.num_layers,
                         'llm_hidden': checkpoint.architecture.llm.hidden_size},
        'load_time_s': load_time, 'peak_memory_bytes': peak_memory_bytes(), 'steps': len(reports),
        'stage_time_s': stage_times, 'step_time_s': step_time,
        'stage_flops': {'vision_dinov2': flops.vision['dinov2'], 'vision_siglip': flops.vision['siglip'],
                        'projector': flops.projector, 'llm_linear': flops.llm_linear,
                        'llm_attention': flops.llm_attention, 'head': flops.head},
        'step_flops': flops.total, 'achieved_flops_per_s': flops.total / step_time,
        'matmul_flops_per_s': matmul, 'full_size_step_flops': full_size.total,
        'full_size_step_time_estimate_s': full_size.total / (flops.total / step_time),
    }
    path = write_results(f'model_{checkpoint.name}_{args.dtype}', results)

    print(f'\n{checkpoint.name} ({args.dtype}): load {load_time:.1f} s, peak memory '
          f'{results["peak_memory_bytes"] / 2**30:.2f} GiB, step {step_time * 1e3:.1f} ms (median of {len(reports)})')
    print(f'{"stage":<12}{"time ms":>10}{"GFLOP":>12}')
    stage_flops = {'vision': flops.vision_total, 'projector': flops.projector, 'llm': flops.llm,
                   'head': flops.head}
    for stage in STAGES:
        print(f'{stage:<12}{stage_times[stage] * 1e3:>10.1f}{stage_flops.get(stage, 0.0) / 1e9:>12.2f}')
    print(f'achieved {results["achieved_flops_per_s"] / 1e9:.1f} GFLOP/s = '
          f'{results["achieved_flops_per_s"] / matmul:.0%} of a {4096}^2 matmul ({matmul / 1e9:.1f} GFLOP/s)')
    print(f'full-size OpenVLA-OFT: {full_size.total / 1e12:.2f} TFLOP per step, about '
          f'{results["full_size_step_time_estimate_s"]:.0f} s per step at this rate')
    print(f'results: {path}')


if __name__ == '__main__':
    main()
