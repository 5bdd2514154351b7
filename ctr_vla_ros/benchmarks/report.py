"""Regenerate benchmarks/README.md and its PNG plots from benchmarks/results/*.json (written by the model, CTR,
node and GPU benchmarks of this package). Every figure states the machine, dtype, checkpoint and date it was
measured with.

    python -m ctr_vla_ros.benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ctr_vla_ros.evaluation.statistics import markdown_table  # noqa: E402

BENCHMARKS = Path('benchmarks')
RESULTS = BENCHMARKS / 'results'
CONFIG_ORDER = ('zero-mask', 'paper', 'patch_reference', 'fast', 'prune_static')


def provenance(results: dict[str, Any], dtype: str = 'fp32') -> str:
    machine = results['machine']
    return (f'{results["checkpoint"]} checkpoint, {dtype}, {machine["cpu"]} ({machine["torch_threads"]} threads), '
            f'torch {machine["torch"]}, {machine["date"]}')


def save(figure: plt.Figure, name: str, subtitle: str) -> str:
    figure.text(0.5, 0.005, subtitle, ha='center', va='bottom', fontsize=7, color='dimgray')
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(BENCHMARKS / name, dpi=110)
    plt.close(figure)
    return name


def model_section(results: list[dict[str, Any]]) -> list[str]:
    lines = ['## Model: the plain full-recompute step', '',
             'Command: `make bench-model` (`python -m ctr_vla_ros.benchmarks.model --checkpoint DIR`).', '',
             '| checkpoint | dtype | load s | peak GiB | step ms | vision ms | projector ms | LLM ms | head ms | '
             'GFLOP/step | achieved GFLOP/s | matmul GFLOP/s | of matmul |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for item in results:
        times = item['stage_time_s']
        lines.append(
            f'| {item["checkpoint"]} ({item["architecture"]["vision_depth"][0]} blocks/tower, '
            f'{item["architecture"]["llm_layers"]} LLM layers) | {item["dtype"]} | {item["load_time_s"]:.1f} | '
            f'{item["peak_memory_bytes"] / 2**30:.2f} | {item["step_time_s"] * 1e3:.0f} | '
            f'{times["vision"] * 1e3:.0f} | {times["projector"] * 1e3:.0f} | {times["llm"] * 1e3:.0f} | '
            f'{times["head"] * 1e3:.1f} | {item["step_flops"] / 1e9:.1f} | '
            f'{item["achieved_flops_per_s"] / 1e9:.0f} | {item["matmul_flops_per_s"] / 1e9:.0f} | '
            f'{item["achieved_flops_per_s"] / item["matmul_flops_per_s"]:.0%} |')
    if results:
        full = max(results, key=lambda item: item['step_flops'])  # the most realistic per-layer shapes
        lines += ['', f'The full-size OpenVLA-OFT step costs {full["full_size_step_flops"] / 1e12:.2f} TFLOP '
                  f'(S = L + 571); at the rate measured on the `{full["checkpoint"]}` checkpoint this CPU would take '
                  f'about {full["full_size_step_time_estimate_s"]:.0f} s per step.', '']
    return lines


def ctr_section(results: dict[str, Any]) -> list[str]:
    subtitle = provenance(results)
    sequences = results['sequences']
    lines = ['## CTR vs full recompute', '',
             'Command: `make bench-ctr` (`python -m ctr_vla_ros.benchmarks.ctr --checkpoint checkpoints/bench '
             'data/libero/*.npz recorded/*.npz`). CTR and full recompute run on the same inputs in the same '
             'run, interleaved query by query; medians over each sequence; action deviation in normalised action '
             'units (the action head output, range about [-1, 1]).', '',
             f'Measured with: {subtitle}; {results["matmul_flops_per_s"] / 1e9:.0f} GFLOP/s for a 4096^2 matmul.', '',
             '| sequence | config | queries | step ms | baseline ms | speedup | time -% | FLOPs -% | '
             '(time -%)/(FLOPs -%) | mask ms | reuse vision | reuse LLM | deviation max | deviation mean |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for name, sequence in sequences.items():
        for config in CONFIG_ORDER:
            summary = sequence['summary'].get(config)
            if summary is None:
                continue
            ratio = summary['time_reduction'] / summary['flops_reduction'] if summary['flops_reduction'] > 0 else \
                float('nan')
            lines.append(
                f'| {name} | {config} | {sequence["queries"]} | {summary["median_step_s"] * 1e3:.0f} | '
                f'{summary["median_baseline_step_s"] * 1e3:.0f} | {summary["speedup"]:.2f}x | '
                f'{summary["time_reduction"] * 100:.1f} | {summary["flops_reduction"] * 100:.1f} | {ratio:.2f} | '
                f'{summary["median_mask_s"] * 1e3:.2f} | {summary["mean_vision_reuse"]:.2f} | '
                f'{summary["mean_llm_reuse"]:.2f} | {summary["deviation_max"]:.3f} | '
                f'{summary["deviation_mean"]:.4f} |')
    lines += ['', 'Configurations: `zero-mask` = CTR on with threshold 0 (nothing static: the bookkeeping '
              'overhead); `paper` = the paper\'s method: threshold 0.004, K 160, keyframe every 5, cap 120 per '
              'image, each patch compared with the previous query\'s image; `patch_reference` = the same, each '
              'patch compared with the pixels it was last recomputed from; `fast` and `prune_static` = '
              'the presets in `ctr_vla_ros/ctr/config.py`.', '']

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(sequences)
    width = 0.8 / len(CONFIG_ORDER)
    for index, config in enumerate(CONFIG_ORDER):
        speedups = [sequences[name]['summary'].get(config, {}).get('speedup', np.nan) for name in names]
        flops = [100 * sequences[name]['summary'].get(config, {}).get('flops_reduction', np.nan) for name in names]
        positions = np.arange(len(names)) + index * width
        axes[0].bar(positions, speedups, width, label=config)
        axes[1].bar(positions, flops, width, label=config)
    for axis, title in zip(axes, ('whole-step speedup vs full recompute (x)', 'FLOPs reduction (%)')):
        axis.set_xticks(np.arange(len(names)) + width, names, fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    axes[0].axhline(1.0, color='gray', linewidth=0.8)
    lines += [f'![speedup and FLOPs]({save(figure, "ctr_speedup_flops.png", subtitle)})', '']

    # Per-camera reuse of the first measured configuration that reuses at the paper's threshold.
    shown = next(config for config in ('paper', 'patch_reference') if config in sequences[names[0]]['records'])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names):
        records = sequences[name]['records'][shown]
        reuse = np.array([record['vision_reuse'] for record in records])
        axis.plot(reuse[:, 0], label='primary (agentview)')
        axis.plot(reuse[:, 1], label='wrist')
        for query, record in enumerate(records):
            if record['keyframe']:
                axis.axvline(query, color='lightgray', linewidth=0.8, zorder=0)
        axis.set_title(f'{name}: reuse ratio per camera ({shown})', fontsize=9)
        axis.set_xlabel('query (grey: keyframe)')
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8)
    lines += [f'![reuse per camera]({save(figure, "ctr_reuse_per_camera.png", subtitle)})', '']

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for config, marker in zip(CONFIG_ORDER, ('o', 's', 'D', '^', 'v'), strict=True):
        tokens, llm_time, step_time = [], [], []
        for name in names:
            for record in sequences[name]['records'].get(config, []):
                tokens.append(record['llm_computed_visual_tokens'])
                llm_time.append(record['times']['llm'] * 1e3)
                step_time.append(record['total_time'] * 1e3)
        axes[0].scatter(tokens, llm_time, s=12, marker=marker, label=config)
        axes[1].scatter(tokens, step_time, s=12, marker=marker, label=config)
    all_tokens = [record['llm_computed_visual_tokens'] for name in names for config in CONFIG_ORDER
                  for record in sequences[name]['records'].get(config, [])]
    all_llm = [record['times']['llm'] * 1e3 for name in names for config in CONFIG_ORDER
               for record in sequences[name]['records'].get(config, [])]
    if len(set(all_tokens)) > 1:
        slope, intercept = np.polyfit(all_tokens, all_llm, 1)
        grid = np.linspace(min(all_tokens), max(all_tokens), 10)
        axes[0].plot(grid, slope * grid + intercept, color='black', linewidth=0.8,
                     label=f'fit: {slope:.2f} ms/token + {intercept:.0f} ms')
    axes[0].set_title('LLM time vs recomputed visual tokens', fontsize=10)
    axes[1].set_title('whole-step time vs recomputed visual tokens', fontsize=10)
    for axis in axes:
        axis.set_xlabel('visual tokens recomputed in the LLM (of 512)')
        axis.set_ylabel('ms')
        axis.legend(fontsize=8)
    lines += [f'![time vs tokens]({save(figure, "ctr_time_vs_tokens.png", subtitle)})', '']

    figure, axis = plt.subplots(figsize=(7, 3.4))
    for config in CONFIG_ORDER:
        for name in names:
            records = sequences[name]['records'].get(config)
            if records:
                axis.plot([record['deviation_max'] for record in records], label=f'{config} / {name}', linewidth=1)
    axis.set_title('max action deviation from full recompute per query (normalised units)', fontsize=10)
    axis.set_xlabel('query')
    axis.legend(fontsize=7)
    lines += [f'![action deviation]({save(figure, "ctr_action_deviation.png", subtitle)})', '']
    return lines


def node_section(results: list[dict[str, Any]]) -> list[str]:
    lines = ['## Policy node (real processes)', '',
             'Command: `make bench-node` (`python -m ctr_vla_ros.benchmarks.node --checkpoint DIR`): the policy node '
             'in its own process, cameras at 30 Hz from another process, 20 Hz control, once per execution mode.', '',
             '| checkpoint | date | mode | commands / s | MOTION / HOLD / STOP | chunks | predict ms (median) | '
             'node overhead ms (median / p99) | tick jitter ms, stamps (median / p99) | '
             'tick jitter ms, arrivals (median / p99) |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for item in results:
        for mode, measured in item['modes'].items():
            overhead = measured['overhead_s']
            stamps, arrivals = measured['tick_jitter_stamp_s'], measured['tick_jitter_arrival_s']
            kinds = measured['command_kinds']
            lines.append(
                f'| {item["checkpoint"]} | {item["machine"]["date"]} | {mode} | {measured["command_rate_hz"]:.2f} | '
                f'{kinds.get("motion", 0)} / {kinds.get("hold", 0)} / {kinds.get("stop", 0)} | {measured["chunks"]} | '
                f'{measured["inference_latency_s"]["median"] * 1e3:.1f} | {overhead["median"] * 1e3:.2f} / '
                f'{overhead["p99"] * 1e3:.2f} | {stamps["median"] * 1e3:.2f} / {stamps["p99"] * 1e3:.2f} | '
                f'{arrivals["median"] * 1e3:.2f} / {arrivals["p99"] * 1e3:.2f} |')
    lines += ['', 'Commands / s counts every EndEffectorDelta (MOTION, HOLD or STOP) while enabled: it equals the '
              'control rate in both modes. Node overhead = camera stamp to ActionChunk received, minus the time the '
              'frames waited for the executor to need a chunk, minus the predict time, plus the camera transport '
              '(see the script\'s docstring). Tick jitter = |interval between consecutive commands - 50 ms|.', '']
    stops = [item for item in results if 'stop_latency' in item]
    if stops:
        lines += ['How fast a stop takes effect while inference runs (`--stop-calls N`: overlap mode, a query almost '
                  'always in flight, each call at a random moment of a chunk), from sending the request:', '',
                  '| checkpoint | date | call | calls | predict ms (median) | to the STOP\'s stamp ms (median / worst) '
                  '| to the STOP here ms (median / worst) | to the answer ms (median / worst) | MOTIONs after the '
                  'request (worst) |', '|---|---|---|---|---|---|---|---|---|']
        for item in stops:
            stop = item['stop_latency']
            for call, measured in stop['calls_by_kind'].items():
                cells = ' | '.join(f'{measured[key]["median"] * 1e3:.1f} / {measured[key]["max"] * 1e3:.1f}'
                                   for key in ('to_stop_stamp_s', 'to_stop_arrival_s', 'to_answer_s'))
                lines.append(f'| {item["checkpoint"]} | {item["machine"]["date"]} | {call} | {stop["calls"]} | '
                             f'{stop["inference_latency_s"]["median"] * 1e3:.0f} | {cells} | '
                             f'{measured["motions_after_request"]["max"]:.0f} |')
        lines += ['', 'A new client\'s first request waits for the node to discover the client; a kept client\'s '
                  'does not (README, Safety).', '']
    return lines


def eval_section(name: str, results: dict[str, Any]) -> list[str]:
    settings = results['settings']
    tasks = ', '.join(str(task) for task in settings['tasks'])
    kinds = sorted({start.split('-')[0] for start in settings['starts']})
    over_ros = settings.get('harness') == 'ros'
    command = ('`make eval-ros` (`python -m ctr_vla_ros.tools.evaluate`): the LIBERO simulation and the policy node as '
               'separate processes over ROS' if over_ros else
               '`make eval` (`python -m ctr_vla_ros.evaluation.runner`): the LIBERO simulation, the policy and the '
               "policy node's execution rules in one process per worker")
    return [f'## Closed-loop task success: `{settings["checkpoint"]}`, {settings["suite"]} tasks {tasks}'
            f'{" (over ROS)" if over_ros else ""}', '',
            f'Command: {command}; every configuration on the same episodes. {len(settings["starts"])} starts per '
            f'task ({" and ".join(kinds)}), at most {settings["max_steps"]} steps, '
            f'{settings["resolution"]}x{settings["resolution"]} cameras; measured {results["machine"]["date"]} on '
            f'{results["machine"]["cpu"]}. Results: `benchmarks/results/{name}.json`.',
            '', *markdown_table(results['configurations']), '',
            'Success 95% CI: Wilson score interval. Off only / config only: the discordant pairs against `off` on the '
            "same episodes; McNemar p: the exact two-sided test on them. Median query: the policy's whole predict; "
            'speed-up against `off` in the same run. FLOPs saved: executed against full recompute over all '
            'queries.', '']


def staleness_section(name: str, results: dict[str, Any]) -> list[str]:
    lines = [f'## Staleness of reused visual tokens per LLM layer: `{results["checkpoint"]}`', '',
             'Command: `python -m ctr_vla_ros.evaluation.staleness`: every query of a sequence through the '
             'configuration and through full recompute; at the positions the configuration reused, the relative '
             'error of the visual tokens entering the LLM and of their keys and values at each layer, mean over the '
             f'queries with reuse. Measured {results["machine"]["date"]}. Results: `benchmarks/results/{name}.json`, '
             f'plot `docs/{name}.png`.', '',
             '| sequence / configuration | queries with reuse | tokens reused | visual tokens | keys per layer | '
             'values per layer |', '|---|---|---|---|---|---|']
    for key, summary in results['summaries'].items():
        if 'keys' in summary:
            lines.append(f'| {key} | {summary["queries_with_reuse"]}/{summary["queries"]} | '
                         f'{summary["mean_reused"]:.0%} | {summary["visual_tokens"]:.3f} | '
                         + ' / '.join(f'{value:.3f}' for value in summary['keys']) + ' | '
                         + ' / '.join(f'{value:.3f}' for value in summary['values']) + ' |')
    return lines + ['']


def main() -> None:
    loaded = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob('*.json'))}
    lines = ['# Benchmarks', '',
             'Regenerated by `make bench` from `benchmarks/results/*.json`; every number below was measured, in '
             'the run named next to it. The model, CTR and node benchmarks run random-weight checkpoints (speed and '
             'FLOPs are real, action deviations are those of random weights); task success is measured in closed '
             'loop with the checkpoint trained by this package.', '']
    model = [value for key, value in loaded.items() if key.startswith('model_')]
    if model:
        lines += model_section(model)
    for key, value in loaded.items():
        if key.startswith('ctr_'):
            lines += ctr_section(value)
    for key, value in loaded.items():
        if key.startswith('eval_'):
            lines += eval_section(key, value)
        elif key.startswith('staleness_'):
            lines += staleness_section(key, value)
    node = [value for key, value in loaded.items() if key.startswith('node_')]
    if node:
        lines += node_section(node)
    (BENCHMARKS / 'README.md').write_text('\n'.join(lines) + '\n')
    print(f'wrote {BENCHMARKS / "README.md"}')


if __name__ == '__main__':
    main()
