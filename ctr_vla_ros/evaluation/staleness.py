"""How stale reused visual tokens are, per LLM layer: the same query sequence through a CTR configuration and
through full recompute, and after every query, at the positions the configuration reused, the relative error of
their keys and values at each layer (and of the visual tokens entering the LLM) against the fresh recompute.

    python -m ctr_vla_ros.evaluation.staleness --checkpoint models/libero_goal_small \\
        --unnorm-key libero_goal_no_noops data/libero/libero_goal_t5_i2.npz --configs paper fast

Writes benchmarks/results/staleness_<checkpoint>.json and docs/staleness_<checkpoint>.png. Relative error of a set
of rows: ||reused - fresh|| / ||fresh|| over all reused rows of the query (Frobenius norms), averaged over queries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctr_vla_ros.ctr.mask import PatchState
from ctr_vla_ros.evaluation.configurations import CONFIGS
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.benchmarks.ctr import load_sequence
from ctr_vla_ros.benchmarks.measurement import DOCS_DIR, RESULTS_DIR, machine_description


def relative_error(reused: torch.Tensor, fresh: torch.Tensor) -> float:
    return float(torch.linalg.norm((reused - fresh).float()) / torch.linalg.norm(fresh.float()))


def measure(policy: VlaPolicy, full: VlaPolicy, sequence: dict[str, Any]) -> list[dict[str, Any]]:
    """Per query of the sequence (a query every entry, 0.4 s apart): the reused share and, where any position was
    reused, the relative errors of the visual tokens and of every layer's keys and values."""
    records = []
    for index in range(len(sequence['agentview'])):
        inputs = ([sequence['agentview'][index], sequence['wrist'][index]], sequence['proprio8'][index],
                  sequence['instruction'])
        report = policy.predict(*inputs, timestamp=0.4 * index).report
        full.predict(*inputs, timestamp=0.4 * index)
        reused = torch.from_numpy(report.patch_states.reshape(-1) == PatchState.REUSED)
        record: dict[str, Any] = {'query': index, 'keyframe': report.keyframe, 'reused': float(reused.float().mean())}
        if bool(reused.any()):
            positions = 1 + reused.nonzero().squeeze(1)  # after BOS, in sequence order
            tokens = policy.engine.cached_visual_tokens.flatten(0, 1)
            fresh_tokens = full.engine.cached_visual_tokens.flatten(0, 1)
            record['visual_tokens'] = relative_error(tokens[reused], fresh_tokens[reused])
            record['keys'] = [relative_error(ours.key[:, :, positions], theirs.key[:, :, positions])
                              for ours, theirs in zip(policy.engine.cached_llm, full.engine.cached_llm)]
            record['values'] = [relative_error(ours.value[:, :, positions], theirs.value[:, :, positions])
                                for ours, theirs in zip(policy.engine.cached_llm, full.engine.cached_llm)]
        records.append(record)
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [record for record in records if 'keys' in record]
    if not measured:
        return {'queries': len(records), 'queries_with_reuse': 0}
    return {'queries': len(records), 'queries_with_reuse': len(measured),
            'mean_reused': float(np.mean([record['reused'] for record in measured])),
            'visual_tokens': float(np.mean([record['visual_tokens'] for record in measured])),
            'keys': np.mean([record['keys'] for record in measured], axis=0).tolist(),
            'values': np.mean([record['values'] for record in measured], axis=0).tolist()}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, kind in zip(axes, ('keys', 'values')):
        for key, summary in results['summaries'].items():
            if 'keys' not in summary:
                continue
            sequence, config = key.split(' / ')
            layers = np.arange(len(summary[kind]))
            axis.plot(layers, summary[kind], marker='o', label=f'{config} ({sequence})')
            axis.set_xticks(layers)
        axis.set_title(f'reused {kind} vs fresh recompute')
        axis.set_xlabel('LLM layer')
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('relative error (mean over queries)')
    axes[0].legend(fontsize=8)
    figure.suptitle(f'Staleness of reused visual tokens, {results["checkpoint"]}')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sequences', type=Path, nargs='+', help='query sequences (data/libero/*.npz)')
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--unnorm-key', required=True)
    parser.add_argument('--configs', nargs='+', default=['paper', 'patch_reference', 'fast'],
                        choices=sorted(name for name in CONFIGS if name != 'off'))
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    results: dict[str, Any] = {'checkpoint': args.checkpoint.name, 'machine': machine_description(),
                               'summaries': {}, 'queries': {}}
    for path in args.sequences:
        sequence = load_sequence(path)
        for name in args.configs:
            policy = VlaPolicy(checkpoint, args.unnorm_key, ctr=CONFIGS[name])
            full = VlaPolicy(checkpoint, args.unnorm_key, ctr=CONFIGS['off'])
            records = measure(policy, full, sequence)
            key = f'{path.stem} / {name}'
            results['queries'][key] = records
            results['summaries'][key] = summary = summarize(records)
            if 'keys' in summary:
                print(f'{key}: {summary["queries_with_reuse"]} queries with reuse ({summary["mean_reused"]:.0%} of '
                      f'the visual tokens); relative error of the reused visual tokens {summary["visual_tokens"]:.3f}, '
                      'keys per layer ' + ' '.join(f'{value:.3f}' for value in summary['keys']) + ', values '
                      + ' '.join(f'{value:.3f}' for value in summary['values']))
    output = RESULTS_DIR / f'staleness_{args.checkpoint.name}.json'
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    figure = DOCS_DIR / f'staleness_{args.checkpoint.name}.png'
    plot(results, figure)
    print(f'results: {output}; figure: {figure}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
