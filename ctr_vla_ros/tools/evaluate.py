"""`make eval-ros`: closed-loop task success over ROS, the simulation and the policy node as separate processes.

The same episodes as the in-process runner (`ctr_vla_ros/evaluation/runner.py`, `make eval`), played the way
`bringup.launch.py robot:=sim` runs them: for each CTR configuration and task, the simulation and policy nodes run
as their own processes and play one episode per initial state; the policy is disabled and reset and the simulation
moves to the next initial state between episodes. It is several times slower than the runner (every frame is
rendered and sent over topics) and exists to show that the runner's numbers are the node's (a test compares their
actions) and to evaluate over ROS when that is the point. Results are in the runner's format and go through the same
paired statistics.

    python -m ctr_vla_ros.tools.evaluate --checkpoint models/libero_goal_small --unnorm-key libero_goal_no_noops \\
        --suite libero_goal --tasks 1 8 --init-states 40 44 --configs off paper fast

A configuration is a preset name, an ablation (vision_only, llm_only) or a parameter file with a `ctr:` section,
e.g. the recommendation of ctr-vla-sweep (sweep/recommended_ctr.yaml; reported under the name given).

Results: benchmarks/results/eval_ros_<checkpoint>.json, rewritten after every episode: a rerun with the same
arguments continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.evaluation.arguments import add_arguments, chosen_configurations, evaluation_settings
from ctr_vla_ros.evaluation.configurations import Configuration
from ctr_vla_ros.evaluation.results import Results, episode_record
from ctr_vla_ros.evaluation.statistics import markdown_table
from ctr_vla_ros.sim.libero_env import CONTROL_PERIOD
from ctr_vla_ros.benchmarks.measurement import RESULTS_DIR
from ctr_vla_ros.tools.closed_loop import ClosedLoopClient, start_simulation_stack
from ctr_vla_ros.tools.node_processes import interrupt_all, interrupt_on_sigterm, network_safe_environment

SECONDS_PER_STEP_LIMIT = 10.0  # wall seconds per simulation step before an episode counts as stuck


def stamp_seconds(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def episode_from_messages(config_name: str, task_id: int, init_state: int, status: Any, stats: list[Any],
                          chunks: list[Any], masks: dict[str, list[Any]]) -> dict[str, Any]:
    """One episode in the runner's format from what the nodes published: each CtrStats with the chunk and the
    reuse masks of the same query."""
    first_stamp = stamp_seconds(status.header) - status.step * CONTROL_PERIOD  # one period per step, holds too
    chunk_of = {chunk.chunk_id: chunk for chunk in chunks}
    mask_of = [{mask.query_index: mask for mask in camera} for camera in masks.values()]
    queries = []
    for item in stats:
        chunk = chunk_of[item.query_index]
        queries.append({
            'step': round((stamp_seconds(chunk.header) - first_stamp) / CONTROL_PERIOD),
            'keyframe_reason': item.keyframe_reason,
            'normalized_actions': np.reshape(chunk.normalized_actions, (chunk.horizon, chunk.action_dim)).tolist(),
            'time': item.total_time, 'executed_flops': item.executed_flops,
            'full_recompute_flops': item.full_recompute_flops,
            'vision_reuse': [float(camera[item.query_index].vision_reuse_ratio) for camera in mask_of],
            'llm_reuse': [float(camera[item.query_index].llm_reuse_ratio) for camera in mask_of],
        })
    return episode_record(config_name, task_id, f'fixed-{init_state}', status.instruction, bool(status.success),
                          status.step, status.hold_steps, queries)


def run_task(args: argparse.Namespace, config_name: str, configuration: Configuration, task_id: int,
             init_states: list[int], logs: Path, record: Any) -> None:
    """One simulation + policy stack for one configuration and task; `record(episode)` is called per episode."""
    policy = {'checkpoint': str(args.checkpoint), 'unnorm_key': args.unnorm_key,
              'ctr': dataclasses.asdict(configuration.ctr)}
    simulation = {'suite': args.suite, 'task_id': task_id, 'init_state': init_states[0],
                  'max_steps': args.max_steps, 'resolution': args.resolution, 'command_wait': args.command_wait}
    client = ClosedLoopClient('ctr_vla_evaluation')
    processes = []
    try:
        processes = start_simulation_stack(logs, policy, simulation)
        client.wait_until(lambda status: status is not None, 300.0, 'the simulation to start')
        client.enable_policy()
        for index, init_state in enumerate(init_states):
            if index:
                client.next_episode(init_state)
            client.clear_outputs()
            status = client.wait_until(lambda status: status is not None and status.done,
                                       SECONDS_PER_STEP_LIMIT * args.max_steps, f'episode {init_state} to end')
            if status.init_state != init_state:
                raise RuntimeError(f'the simulation ran initial state {status.init_state}, not {init_state}')
            with client.lock:
                record(episode_from_messages(config_name, task_id, init_state, status, list(client.stats),
                                      list(client.chunks), {name: list(masks) for name, masks in client.masks.items()}))
    finally:
        client.close()
        codes = interrupt_all(processes)
        if any(codes.values()):
            print(f'warning: node exit codes {codes} (logs in {logs})', file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, over_ros=True)
    parser.add_argument('--command-wait', type=float, default=1.0,
                        help="the simulation's command_wait: an episode's first step waits this long for the policy, "
                             'which is enabled after the first observation is out')
    parser.add_argument('--output', type=Path, help='results JSON (default: benchmarks/results/eval_ros_<name>.json)')
    parser.add_argument('--logs', type=Path, help='node logs (default: a temporary directory)')
    args = parser.parse_args(argv)
    configs = chosen_configurations(parser, args, over_ros=True)
    os.environ.update(network_safe_environment())
    interrupt_on_sigterm()
    output = args.output or RESULTS_DIR / f'eval_ros_{args.checkpoint.name}.json'
    logs = args.logs or Path(tempfile.mkdtemp(prefix='ctr_vla_eval_'))
    logs.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    init_states = list(range(args.init_states[0], args.init_states[1] + 1))
    results = Results(output, evaluation_settings(args, [f'fixed-{state}' for state in init_states], configs,
                                                  harness='ros'))
    done = results.done
    started = time.monotonic()
    ran = 0
    with tqdm(total=len(configs) * len(args.tasks) * len(init_states), initial=len(done), desc='episodes',
              unit='episode') as progress:
        def record(episode: dict[str, Any]) -> None:
            nonlocal ran
            results.add(episode)
            ran += 1
            progress.update(1)
            progress.set_postfix_str(' '.join(f'{name} {summary["successes"]}/{summary["episodes"]}'
                                              for name, summary in results.summaries().items()))

        for config_name, configuration in configs.items():
            for task_id in args.tasks:
                pending = [state for state in init_states if (config_name, task_id, f'fixed-{state}') not in done]
                if pending:
                    run_task(args, config_name, configuration, task_id, pending,
                             logs / f'{Path(config_name).stem}_task{task_id}', record)
    elapsed = time.monotonic() - started
    results.write()
    print('\n'.join(markdown_table(results.summaries())))
    if ran:
        print(f'{ran} episodes in {elapsed:.0f} s: {ran / elapsed * 3600:.0f} episodes per hour')
    print(f'results: {output}; queries: {results.query_log}; node logs: {logs}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
