"""`make eval`: closed-loop task success of a checkpoint with CTR off and on, in-process (no ROS), paired.

Every configuration runs exactly the episodes `off` runs: each (task, start) pair once per configuration, with the
policy node's own execution rules (`rollout.py`). Worker processes (one torch thread each) share the episodes; each
episode is deterministic, so a result does not depend on which worker ran it or what it ran before. Starts are
LIBERO's fixed initial states (`--init-states FIRST LAST`) and fresh placements from each task's BDDL regions
(`--sampled-inits FIRST LAST`, by seed); fixed states 40-49 and seeds 0-9999 are reserved for evaluation.

    python -m ctr_vla_ros.evaluation.runner --checkpoint models/libero_goal_small --unnorm-key libero_goal_no_noops \\
        --suite libero_goal --tasks 1 8 --init-states 40 49 --sampled-inits 0 39 --configs off paper fast

Results (rewritten after every episode; a rerun with the same arguments continues where the last one stopped):
- `benchmarks/results/eval_<checkpoint>.json`: per configuration the success with its Wilson 95% CI, per task, the
  discordant pairs against `off` and McNemar's exact p-value, FLOPs saved, reuse per camera, median query time and
  the speed-up against `off` measured in the same run; and every episode;
- `benchmarks/results/eval_<checkpoint>_queries.jsonl.gz`: every query of every episode (its actions, reuse, FLOPs,
  time, where the arm was), for the analysis of where configurations diverge.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from ctr_vla_ros.evaluation.arguments import add_arguments, chosen_configurations, evaluation_settings
from ctr_vla_ros.evaluation.configurations import Configuration
from ctr_vla_ros.evaluation.results import Results, episode_record
from ctr_vla_ros.evaluation.starts import Start, starts
from ctr_vla_ros.evaluation.statistics import markdown_table
from ctr_vla_ros.benchmarks.measurement import RESULTS_DIR

_worker: dict[str, Any] = {}  # per worker process: the checkpoint, the node's rules, simulations and policies


def _start_worker(checkpoint: str, unnorm_key: str, suite: str, resolution: int) -> None:
    import torch

    from ctr_vla_ros.evaluation.rollout import NodeRules
    from ctr_vla_ros.model.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    _worker.update(checkpoint=load_checkpoint(checkpoint), unnorm_key=unnorm_key, suite=suite,
                   resolution=resolution, rules=NodeRules.from_parameter_files(), simulations={}, policies={})


def _run_job(job: tuple[str, dict[str, Any], int, str, int]) -> dict[str, Any]:
    from ctr_vla_ros.evaluation.rollout import run_episode
    from ctr_vla_ros.policy import VlaPolicy
    from ctr_vla_ros.sim.libero_env import LiberoSimulation

    name, settings, task_id, start_key, max_steps = job
    rules = _worker['rules']
    if task_id not in _worker['simulations']:
        _worker['simulations'][task_id] = LiberoSimulation(_worker['suite'], task_id,
                                                           resolution=_worker['resolution'])
    chosen = Configuration.from_json(settings)
    if name not in _worker['policies']:
        _worker['policies'][name] = VlaPolicy(_worker['checkpoint'], _worker['unnorm_key'], rules.rotate180,
                                              rules.center_crop, chosen.ctr)
    policy = _worker['policies'][name]
    if chosen.noise is not None:  # its own draws for each episode, whichever worker runs it
        policy.engine.visual_noise = dataclasses.replace(chosen.noise, seed=zlib.crc32(f'{task_id} {start_key}'
                                                                                       .encode()))
    started = time.perf_counter()
    result = run_episode(_worker['simulations'][task_id], policy, rules, task_id, Start.from_key(start_key),
                         max_steps)
    return episode_record(name, task_id, start_key, result.instruction, result.success, result.steps,
                          result.hold_steps, [query.to_json() for query in result.queries],
                          refusals=result.refusals, wall_s=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, over_ros=False)
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='worker processes')
    parser.add_argument('--output', type=Path, help='results JSON (default: benchmarks/results/eval_<name>.json)')
    args = parser.parse_args(argv)
    if args.init_states is None and args.sampled_inits is None:
        parser.error('give --init-states, --sampled-inits or both')
    configs = chosen_configurations(parser, args, over_ros=False)
    chosen = starts(args.init_states, args.sampled_inits)
    training = [start.key for start in chosen if not start.reserved_for_evaluation]
    if training:
        print(f'warning: {len(training)} starts are not reserved for evaluation (a policy may have been trained on '
              f'them): {", ".join(training[:5])}', file=sys.stderr)

    output = args.output or RESULTS_DIR / f'eval_{args.checkpoint.name}.json'
    results = Results(output, evaluation_settings(args, [start.key for start in chosen], configs))
    done = results.done
    jobs = [(name, config.to_json(), task, start.key, args.max_steps)
            for start in chosen for task in args.tasks for name, config in configs.items()
            if (name, task, start.key) not in done]

    from tqdm import tqdm

    def running_success() -> str:
        return ' '.join(f'{name} {summary["successes"]}/{summary["episodes"]}'
                        for name, summary in results.summaries().items())

    context = multiprocessing.get_context('spawn')  # workers must not inherit torch's or MuJoCo's threads
    started = time.monotonic()
    with tqdm(total=len(done) + len(jobs), initial=len(done), desc='episodes', unit='episode') as progress, \
            context.Pool(min(args.workers, max(len(jobs), 1)), _start_worker,
                         (str(args.checkpoint), args.unnorm_key, args.suite, args.resolution)) as pool:
        for episode in pool.imap_unordered(_run_job, jobs):
            results.add(episode)
            progress.update(1)
            progress.set_postfix_str(running_success())
    elapsed = time.monotonic() - started
    results.write()
    print('\n'.join(markdown_table(results.summaries())))
    if jobs:
        print(f'{len(jobs)} episodes in {elapsed:.0f} s with {args.workers} workers: '
              f'{len(jobs) / elapsed * 3600:.0f} episodes per hour')
    print(f'results: {output}; queries: {results.query_log}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
