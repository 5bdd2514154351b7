"""Where reuse failures begin: for every episode that `off` solves and a configuration fails (same task, same
start), the first query where their actions differ by more than `--epsilon` (normalised units, any step of the
chunk), the first where their end effectors are more than `--separation` apart, what the arm was doing then (its
speed, the gripper, the distance to the object it must move), and how the failed episode ends.

    python -m ctr_vla_ros.evaluation.divergence benchmarks/results/eval_libero_goal_small.json --configs paper

Reads the runner's query log beside the results file; writes `divergence_<checkpoint>.json` beside it and a figure
(`docs/divergence_<checkpoint>.png`): per failing pair the end effector's height and its distance to the object
against the step, both episodes, the divergence marked; and how often each phase is where divergence starts.

Phases, from the query's observation (the object is the first of the task's goal objects, e.g. the bowl):
  reach   gripper open, object more than GRASP_DISTANCE away;
  grasp   gripper open or closing within GRASP_DISTANCE of the object;
  carry   gripper closed, object within HOLD_DISTANCE (it is held);
  empty   gripper closed, object farther than HOLD_DISTANCE (nothing held: missed or dropped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.benchmarks.measurement import DOCS_DIR
from ctr_vla_ros.evaluation.results import read_query_log
from ctr_vla_ros.sim.libero_env import CONTROL_PERIOD

OPEN_GRIPPER = 0.04  # m between the fingers: above, the gripper is open
CLOSED_GRIPPER = 0.012  # m: below, it is closed (on the bowl's rim the fingers nearly touch)
GRASP_DISTANCE = 0.08  # m, end effector to the object's origin
HOLD_DISTANCE = 0.09  # m
PHASES = ('reach', 'grasp', 'carry', 'empty')


def phase(query: dict[str, Any]) -> str:
    distance = next(iter(query['goal_distances'].values()), float('inf'))
    opening = query['gripper_opening']
    if opening > OPEN_GRIPPER:
        return 'reach' if distance > GRASP_DISTANCE else 'grasp'
    if opening > CLOSED_GRIPPER:
        return 'grasp'
    return 'carry' if distance <= HOLD_DISTANCE else 'empty'


def speeds(queries: list[dict[str, Any]]) -> list[float]:
    """End-effector speed (m/s) arriving at each query from the one before (0 at the first)."""
    result = [0.0]
    for before, after in zip(queries, queries[1:]):
        distance = np.linalg.norm(np.subtract(after['eef_position'], before['eef_position']))
        result.append(float(distance / ((after['step'] - before['step']) * CONTROL_PERIOD)))
    return result


def analyse_pair(off: dict[str, Any], failed: dict[str, Any], epsilon: float, separation: float) -> dict[str, Any]:
    ours, theirs = off['queries'], failed['queries']
    first_action = first_apart = None
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if first_action is None and np.abs(np.subtract(a['normalized_actions'], b['normalized_actions'])).max() \
                > epsilon:
            first_action = index
        if first_apart is None and np.linalg.norm(np.subtract(a['eef_position'], b['eef_position'])) > separation:
            first_apart = index
    failed_speeds = speeds(theirs)

    def moment(index: int | None) -> dict[str, Any] | None:
        if index is None:
            return None
        query = theirs[index]
        return {'query': index, 'step': query['step'], 'phase': phase(query), 'off_phase': phase(ours[index]),
                'eef_speed': failed_speeds[index], 'gripper_opening': query['gripper_opening'],
                'object_distance': next(iter(query['goal_distances'].values()), None),
                'keyframe': bool(query['keyframe_reason'])}

    phases = [phase(query) for query in theirs]
    ending = ('carried, not placed' if phases[-1] == 'carry' else 'dropped' if 'carry' in phases
              else 'missed' if 'empty' in phases else 'never grasped')
    return {'task_id': off['task_id'], 'start': off['start'], 'first_action_divergence': moment(first_action),
            'first_separation': moment(first_apart), 'ending': ending, 'phases': phases,
            'off_phases': [phase(query) for query in ours]}


def plot(pairs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]], config: str, path: Path,
         title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    shown = pairs[:6]
    figure, axes = plt.subplots(2, len(shown) + 1, figsize=(3.2 * (len(shown) + 1), 6), squeeze=False)
    for column, (off, failed, analysis) in enumerate(shown):
        for episode, style, label in ((off, '-', 'off (success)'), (failed, '--', f'{config} (failure)')):
            steps = [query['step'] for query in episode['queries']]
            axes[0][column].plot(steps, [query['eef_position'][2] for query in episode['queries']], style,
                                 label=label)
            axes[1][column].plot(steps, [next(iter(query['goal_distances'].values()))
                                         for query in episode['queries']], style, label=label)
        for key, color in (('first_action_divergence', 'tab:red'), ('first_separation', 'tab:purple')):
            if analysis[key] is not None:
                for row in axes:
                    row[column].axvline(analysis[key]['step'], color=color, alpha=0.6, linestyle=':')
        axes[0][column].set_title(f'task {off["task_id"]} {off["start"]}: {analysis["ending"]}', fontsize=9)
        axes[1][column].set_xlabel('step')
    axes[0][0].set_ylabel('end-effector height (m)')
    axes[1][0].set_ylabel('distance to the object (m)')
    axes[0][0].legend(fontsize=7)
    counts = {kind: [sum(1 for _, _, analysis in pairs if analysis[kind] is not None
                         and analysis[kind]['phase'] == name) for name in PHASES]
              for kind in ('first_action_divergence', 'first_separation')}
    positions = np.arange(len(PHASES))
    axes[0][-1].bar(positions - 0.2, counts['first_action_divergence'], 0.4, label='actions differ', color='tab:red')
    axes[0][-1].bar(positions + 0.2, counts['first_separation'], 0.4, label='arms apart', color='tab:purple')
    axes[0][-1].set_xticks(positions, PHASES)
    axes[0][-1].set_title(f'phase where it starts ({len(pairs)} pairs)', fontsize=9)
    axes[0][-1].legend(fontsize=7)
    endings = sorted({analysis['ending'] for _, _, analysis in pairs})
    axes[1][-1].bar(range(len(endings)), [sum(1 for _, _, analysis in pairs if analysis['ending'] == ending)
                                          for ending in endings], color='tab:gray')
    axes[1][-1].set_xticks(range(len(endings)), endings, rotation=20, fontsize=7)
    axes[1][-1].set_title('how the failed episode ends', fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('results', type=Path, help="the runner's results JSON (its query log beside it)")
    parser.add_argument('--configs', nargs='+', required=True)
    parser.add_argument('--epsilon', type=float, default=0.05, help='action divergence, normalised units')
    parser.add_argument('--separation', type=float, default=0.01, help='end-effector separation, m')
    parser.add_argument('--figure', type=Path, help='default: docs/divergence_<checkpoint>.png')
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    log = {(item['configuration'], item['task_id'], item['start']): item
           for item in read_query_log(args.results.with_name(args.results.stem + '_queries.jsonl.gz'))}
    output: dict[str, Any] = {'results': args.results.name, 'epsilon': args.epsilon, 'separation': args.separation,
                              'configurations': {}}
    all_pairs = []
    for config in args.configs:
        pairs = []
        for (name, task, start), off in log.items():
            failed = log.get((config, task, start))
            if name == 'off' and off['success'] and failed is not None and not failed['success']:
                pairs.append((off, failed, analyse_pair(off, failed, args.epsilon, args.separation)))
        output['configurations'][config] = [analysis for _, _, analysis in pairs]
        all_pairs += pairs
        for kind in ('first_action_divergence', 'first_separation'):
            found = [analysis[kind] for _, _, analysis in pairs if analysis[kind] is not None]
            histogram = {name: sum(1 for item in found if item['phase'] == name) for name in PHASES}
            print(f'{config}: {len(pairs)} pairs off solves and {config} fails; {kind.replace("_", " ")}: '
                  f'{histogram}, median query {np.median([item["query"] for item in found]) if found else "-"}')
        endings = [analysis['ending'] for _, _, analysis in pairs]
        print(f'  endings: {dict((ending, endings.count(ending)) for ending in sorted(set(endings)))}')
    path = args.results.with_name(f'divergence_{results["settings"]["checkpoint"]}.json')
    path.write_text(json.dumps(output, indent=1))
    figure = args.figure or DOCS_DIR / f'divergence_{results["settings"]["checkpoint"]}.png'
    if all_pairs:
        plot(all_pairs, ', '.join(args.configs), figure,
             f'{results["settings"]["checkpoint"]}: episodes off solves and {", ".join(args.configs)} fails')
    print(f'analysis: {path}; figure: {figure}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
