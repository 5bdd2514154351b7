"""`make eval`: closed-loop task success of a checkpoint with CTR off and on, over ROS, in the LIBERO simulation.

For each CTR configuration and each task, the simulation and policy nodes run as separate processes (as
`bringup.launch.py robot:=sim` starts them) and play one episode per initial state; the policy is reset and the
simulation moves to the next initial state between episodes. Per configuration it reports the success rate with a
95% confidence interval (Wilson), the median model step time and the speed-up against `off` measured in the same
run, the FLOPs saved and the reuse ratios. Use initial states the checkpoint was not trained on.

    python -m ctr_vla_ros.tools.evaluate --checkpoint models/libero_goal_small --unnorm-key libero_goal_no_noops \\
        --suite libero_goal --tasks 0 5 7 --init-states 40 49 --configs off paper patch_reference fast

A configuration is a preset name, an ablation (vision_only, llm_only) or a parameter file with a `ctr:` section,
e.g. the recommendation of ctr-vla-sweep (sweep/recommended_ctr.yaml; reported under the name given).

Results: benchmarks/results/eval_<checkpoint>.json, rewritten after every episode: a rerun with the same arguments
continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.tools.benchmarking import RESULTS_DIR, machine_description
from ctr_vla_ros.tools.closed_loop import ClosedLoopClient, start_simulation_stack
from ctr_vla_ros.tools.node_processes import interrupt_all, interrupt_on_sigterm, network_safe_environment

# The configurations an evaluation can compare: the presets, and the paper's switch ablation.
CONFIGS: dict[str, CtrConfig] = {
    **PRESETS,
    'vision_only': PRESETS['paper'].replace(llm_reuse=False),
    'llm_only': PRESETS['paper'].replace(vision_reuse=False),
}
SECONDS_PER_STEP_LIMIT = 10.0  # wall seconds per simulation step before an episode counts as stuck


def ctr_config(name: str) -> CtrConfig:
    """A configuration by name (CONFIGS) or from a parameter file's `ctr:` section (a path ending in .yaml)."""
    if name in CONFIGS:
        return CONFIGS[name]
    if not name.endswith(('.yaml', '.yml')):
        raise ValueError(f'not one of {sorted(CONFIGS)} and not a .yaml file')
    return CtrConfig.from_yaml(name)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a success rate (Wilson score interval: sound at 0% and 100% and for few trials)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    center = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half_width = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, center - half_width), min(1.0, center + half_width)


def summarize(episodes: list[dict[str, Any]], off_median_step: float | None) -> dict[str, Any]:
    queries = [query for episode in episodes for query in episode['queries']]
    successes = sum(episode['success'] for episode in episodes)
    low, high = wilson_interval(successes, len(episodes))
    median_step = statistics.median(query['total_time'] for query in queries) if queries else float('nan')
    executed = sum(query['executed_flops'] for query in queries)
    full = sum(query['full_recompute_flops'] for query in queries)
    tasks = sorted({episode['task_id'] for episode in episodes})
    return {
        'episodes': len(episodes), 'successes': successes,
        'success_rate': successes / len(episodes) if episodes else float('nan'), 'success_ci95': [low, high],
        'per_task': {str(task): [sum(episode['success'] for episode in episodes if episode['task_id'] == task),
                                 sum(1 for episode in episodes if episode['task_id'] == task)] for task in tasks},
        'queries': len(queries), 'median_step_s': median_step,
        'speedup_vs_off': off_median_step / median_step if off_median_step else None,
        'flops_reduction': 1 - executed / full if full else 0.0,
        'mean_vision_reuse': statistics.fmean(query['vision_reuse'] for query in queries) if queries else 0.0,
        'mean_llm_reuse': statistics.fmean(query['llm_reuse'] for query in queries) if queries else 0.0,
        'median_episode_steps': statistics.median(episode['steps'] for episode in episodes) if episodes else 0,
    }


def markdown_table(results: dict[str, Any]) -> list[str]:
    """The paper's main-table shape: per configuration, success and cost."""
    lines = ['| configuration | episodes | success | 95% CI | median step ms | speed-up vs off | FLOPs -% | '
             'reuse vision / LLM |', '|---|---|---|---|---|---|---|---|']
    for name, summary in results['configurations'].items():
        low, high = summary['success_ci95']
        speedup = f'{summary["speedup_vs_off"]:.2f}x' if summary['speedup_vs_off'] else '-'
        lines.append(f'| `{name}` | {summary["episodes"]} | {summary["success_rate"]:.0%} '
                     f'({summary["successes"]}/{summary["episodes"]}) | {low:.0%}-{high:.0%} | '
                     f'{summary["median_step_s"] * 1e3:.1f} | {speedup} | {summary["flops_reduction"] * 100:.1f} | '
                     f'{summary["mean_vision_reuse"]:.2f} / {summary["mean_llm_reuse"]:.2f} |')
    return lines


def query_record(stats: Any) -> dict[str, Any]:
    return {'total_time': stats.total_time, 'executed_flops': stats.executed_flops,
            'full_recompute_flops': stats.full_recompute_flops, 'vision_reuse': stats.vision_reuse_ratio,
            'llm_reuse': stats.llm_reuse_ratio, 'keyframe': stats.keyframe}


def run_task(args: argparse.Namespace, config_name: str, task_id: int, init_states: list[int], logs: Path,
             record: Any) -> None:
    """One simulation + policy stack for one configuration and task; `record(episode)` is called per episode."""
    config = dataclasses.asdict(ctr_config(config_name))
    policy = {'checkpoint': str(args.checkpoint), 'unnorm_key': args.unnorm_key, 'ctr': config}
    simulation = {'suite': args.suite, 'task_id': task_id, 'init_state': init_states[0],
                  'max_steps': args.max_steps, 'resolution': args.resolution}
    client = ClosedLoopClient('ctr_vla_evaluation')
    processes = []
    try:
        processes = start_simulation_stack(logs, policy, simulation)
        first = client.wait_until(lambda status: status is not None, 300.0, 'the simulation to start')
        client.enable_policy()
        for index, init_state in enumerate(init_states):
            if index:
                client.next_episode(init_state)
            with client.lock:
                client.stats.clear()
            status = client.wait_until(lambda status: status is not None and status.done,
                                       SECONDS_PER_STEP_LIMIT * args.max_steps, f'episode {init_state} to end')
            if status.init_state != init_state:
                raise RuntimeError(f'the simulation ran initial state {status.init_state}, not {init_state}')
            with client.lock:
                queries = [query_record(stats) for stats in client.stats]
            record({'configuration': config_name, 'task_id': task_id, 'init_state': init_state,
                    'instruction': status.instruction or first.instruction, 'success': bool(status.success),
                    'steps': status.step, 'hold_steps': status.hold_steps, 'queries': queries})
    finally:
        client.close()
        codes = interrupt_all(processes)
        if any(codes.values()):
            print(f'warning: node exit codes {codes} (logs in {logs})', file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--unnorm-key', required=True)
    parser.add_argument('--suite', default='libero_goal')
    parser.add_argument('--tasks', type=int, nargs='+', required=True)
    parser.add_argument('--init-states', type=int, nargs=2, metavar=('FIRST', 'LAST'), required=True,
                        help='initial states FIRST..LAST (inclusive) of every task')
    parser.add_argument('--configs', nargs='+', default=['off', 'paper', 'patch_reference', 'fast'],
                        help=f'{", ".join(sorted(CONFIGS))}, or parameter files with a ctr: section')
    parser.add_argument('--max-steps', type=int, default=300, help='episode step budget')
    parser.add_argument('--resolution', type=int, default=128, help='camera image size of the simulation')
    parser.add_argument('--output', type=Path, help='results JSON (default: benchmarks/results/eval_<name>.json)')
    parser.add_argument('--logs', type=Path, help='node logs (default: a temporary directory)')
    args = parser.parse_args(argv)
    for name in args.configs:
        try:
            ctr_config(name)
        except (OSError, ValueError) as error:
            parser.error(f'configuration {name}: {error}')
    if 'off' not in args.configs:
        args.configs.insert(0, 'off')  # the speed-up is measured against it, in the same run
    os.environ.update(network_safe_environment())
    interrupt_on_sigterm()
    output = args.output or RESULTS_DIR / f'eval_{args.checkpoint.name}.json'
    logs = args.logs or Path(tempfile.mkdtemp(prefix='ctr_vla_eval_'))
    logs.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    settings = {'checkpoint': args.checkpoint.name, 'unnorm_key': args.unnorm_key, 'suite': args.suite,
                'tasks': args.tasks, 'init_states': args.init_states, 'max_steps': args.max_steps,
                'resolution': args.resolution}
    previous = json.loads(output.read_text()) if output.is_file() else {}
    episodes = previous.get('episodes', []) if previous.get('settings') == settings else []
    done = {(episode['configuration'], episode['task_id'], episode['init_state']) for episode in episodes}
    init_states = list(range(args.init_states[0], args.init_states[1] + 1))
    total = len(args.configs) * len(args.tasks) * len(init_states)

    def write() -> dict[str, Any]:
        by_config = {name: [episode for episode in episodes if episode['configuration'] == name]
                     for name in args.configs}
        off = summarize(by_config['off'], None) if by_config['off'] else None
        results = {'settings': settings, 'machine': machine_description(),
                   'configurations': {name: summarize(items, off['median_step_s'] if off else None)
                                      for name, items in by_config.items() if items},
                   'episodes': episodes}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1))
        return results

    with tqdm(total=total, initial=len(done), desc='episodes', unit='episode') as progress:
        def record(episode: dict[str, Any]) -> None:
            episodes.append(episode)
            write()
            progress.update(1)
            progress.set_postfix(config=episode['configuration'], task=episode['task_id'],
                                 success=sum(item['success'] for item in episodes
                                             if item['configuration'] == episode['configuration']))

        for config_name in args.configs:
            for task_id in args.tasks:
                pending = [state for state in init_states if (config_name, task_id, state) not in done]
                if pending:
                    started = time.monotonic()
                    run_task(args, config_name, task_id, pending, logs / f'{Path(config_name).stem}_task{task_id}',
                             record)
                    progress.write(f'{config_name} task {task_id}: {len(pending)} episodes in '
                                   f'{time.monotonic() - started:.0f} s')
    results = write()
    print('\n'.join(markdown_table(results)))
    print(f'results: {output}; node logs: {logs}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
