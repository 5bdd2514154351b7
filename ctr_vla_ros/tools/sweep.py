"""Tune CTR for your robot offline: a grid of CTR settings replayed on one recording, FLOPs saved against action
deviation from full recompute, the Pareto front as a plot, and the recommended setting as a parameter file the
policy node loads unchanged.

    ctr-vla-sweep run.mcap --output sweep/ [--max-deviation 0.02]
    ros2 launch ctr_vla_ros bringup.launch.py ctr_params:=sweep/recommended_ctr.yaml

The recommendation is the setting that saves the most FLOPs with a mean action deviation (normalised units, over
all queries) within --max-deviation; by default, within the deviation of the `paper` preset (the paper's method) on
the same recording. FLOPs are counted, so they do not depend on the machine; deviation is what
each setting changes in the actions, not whether the task still succeeds. Where a simulation of the task exists,
`--closed-loop N` checks the N acceptable settings that save the most with the evaluation runner (paired with `off`
and `paper` on the same episodes), and the recommendation becomes the one that saves the most among those whose
success is indistinguishable from `off` (`evaluation.statistics.keeps_success`):

    ctr-vla-sweep run.mcap --output sweep/ --closed-loop 3 --eval-tasks 1 8 --eval-init-states 40 49
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.evaluation import runner
from ctr_vla_ros.evaluation.statistics import keeps_success
from ctr_vla_ros.recording.replay import open_recording, replay
from ctr_vla_ros.tools.replay import add_recording_arguments, load_policy_checkpoint, make_policy, queries


def grid(base: CtrConfig, args: argparse.Namespace) -> dict[str, CtrConfig]:
    thresholds = ([('gray_difference', value) for value in args.thresholds]
                  + [('rgb_cosine', value) for value in args.cosine_thresholds])
    settings = {}
    # Precise mode, the consistency guard and action reuse keep the recording's own settings unless the command line
    # sweeps them.
    precise = list(itertools.product(args.precise_speeds or [base.precise_speed],
                                     args.precise_gripper_changes or [base.precise_gripper_change]))
    guards = args.consistency_thresholds or [base.consistency_threshold]
    action_reuses = args.action_reuse_statics or [base.action_reuse_static]
    for (metric, threshold), top_k, cap, interval, prune, (speed, gripper), guard, action_reuse in itertools.product(
            thresholds, args.top_k, args.caps, args.keyframe_intervals, args.prune_layers, precise, guards,
            action_reuses):
        threshold_field = 'difference_threshold' if metric == 'gray_difference' else 'cosine_threshold'
        name = f"{'gray' if metric == 'gray_difference' else 'cos'}{threshold:g}_k{top_k}_cap{cap}_kf{interval}"
        name += f'_prune{prune}' if prune >= 0 else ''
        name += f'_precise{speed:g}g{gripper:g}' if speed > 0 or gripper > 0 else ''
        name += f'_guard{guard:g}' if guard > 0 else ''
        name += f'_actionreuse{action_reuse:g}' if action_reuse > 0 else ''
        # A pruned setting's task relevance is read at layer 0, which every token reaches.
        settings[name] = base.replace(
            enabled=True, static_metric=metric, top_k=top_k, max_reuse_per_image=cap, keyframe_interval=interval,
            llm_prune_layer=prune, attention_layer=0 if prune >= 0 else base.attention_layer, precise_speed=speed,
            precise_gripper_change=gripper, consistency_threshold=guard, action_reuse_static=action_reuse,
            **{threshold_field: threshold})
    return settings


def pareto_front(points: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the settings no other setting beats on both FLOPs saved and deviation, by deviation."""
    front = [name for name, point in points.items()
             if not any(other['flops_reduction'] >= point['flops_reduction']
                        and other['deviation_mean'] <= point['deviation_mean']
                        and (other['flops_reduction'], other['deviation_mean'])
                        != (point['flops_reduction'], point['deviation_mean'])
                        for other in points.values())]
    return sorted(front, key=lambda name: points[name]['deviation_mean'])


def plot(points: dict[str, dict[str, Any]], front: list[str], recommended: str | None, max_deviation: float,
         title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    grid_names = [name for name in points if name not in PRESETS]
    axes.scatter([points[name]['deviation_mean'] for name in grid_names],
                 [points[name]['flops_reduction'] * 100 for name in grid_names], s=18, color='0.6', label='grid')
    axes.plot([points[name]['deviation_mean'] for name in front],
              [points[name]['flops_reduction'] * 100 for name in front], '-o', color='tab:blue', markersize=4,
              label='Pareto front')
    for name in PRESETS:
        if name in points:
            axes.scatter(points[name]['deviation_mean'], points[name]['flops_reduction'] * 100, marker='s', s=40,
                         label=f'preset {name}')
    if recommended is not None:
        axes.scatter(points[recommended]['deviation_mean'], points[recommended]['flops_reduction'] * 100,
                     marker='*', s=250, color='tab:red', zorder=5, label=f'recommended: {recommended}')
    axes.axvline(max_deviation, color='tab:red', linestyle=':', label=f'max deviation {max_deviation:g}')
    axes.set_xlabel('mean action deviation from full recompute (normalised units)')
    axes.set_ylabel('FLOPs saved (%)')
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc='lower right')
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recording_arguments(parser)
    parser.add_argument('--output', type=Path, required=True, help='directory for sweep.json, sweep.png and '
                        'recommended_ctr.yaml')
    parser.add_argument('--max-deviation', type=float,
                        help="largest acceptable mean action deviation (normalised units; default: the paper "
                        "preset's on this recording)")
    parser.add_argument('--thresholds', type=float, nargs='*', default=[0.002, 0.004, 0.008, 0.016],
                        help='gray_difference thresholds')
    parser.add_argument('--cosine-thresholds', type=float, nargs='*', default=[0.996],
                        help='rgb_cosine thresholds')
    parser.add_argument('--top-k', type=int, nargs='+', default=[32, 160])
    parser.add_argument('--caps', type=int, nargs='+', default=[120, 0], help='max_reuse_per_image values')
    parser.add_argument('--keyframe-intervals', type=int, nargs='+', default=[5, 10])
    parser.add_argument('--prune-layers', type=int, nargs='+', default=[-1, 1],
                        help='llm_prune_layer values (-1: none; else 1 .. LLM layers - 1)')
    parser.add_argument('--precise-speeds', type=float, nargs='+',
                        help="precise_speed values (precise mode below this mean translation; 0: never; default: "
                        "the recording's)")
    parser.add_argument('--precise-gripper-changes', type=float, nargs='+',
                        help="precise_gripper_change values (precise mode when the gripper command moves more; "
                        "0: never; default: the recording's)")
    parser.add_argument('--consistency-thresholds', type=float, nargs='+',
                        help="consistency_threshold values (a reuse chunk that jumps further is recomputed; 0: never; "
                        "default: the recording's)")
    parser.add_argument('--action-reuse-statics', type=float, nargs='+',
                        help="action_reuse_static values (no model run while this share of tokens is static and the "
                        "chunks are steady; 0: never; default: the recording's)")
    closed_loop = parser.add_argument_group('closed loop', 'check the best settings in a LIBERO simulation')
    closed_loop.add_argument('--closed-loop', type=int, default=0, metavar='N',
                             help='evaluate the N acceptable settings that save the most FLOPs (0: none)')
    closed_loop.add_argument('--eval-suite', default='libero_goal')
    closed_loop.add_argument('--eval-tasks', type=int, nargs='+')
    closed_loop.add_argument('--eval-init-states', type=int, nargs=2, metavar=('FIRST', 'LAST'))
    closed_loop.add_argument('--eval-sampled-inits', type=int, nargs=2, metavar=('FIRST', 'LAST'))
    closed_loop.add_argument('--eval-max-steps', type=int, default=300)
    closed_loop.add_argument('--workers', type=int, default=2, help='evaluation worker processes')
    args = parser.parse_args(argv)
    if args.closed_loop and not (args.eval_tasks and (args.eval_init_states or args.eval_sampled_inits)):
        parser.error('--closed-loop needs --eval-tasks and --eval-init-states or --eval-sampled-inits')

    recording = open_recording(args.recording)
    checkpoint, unnorm_key = load_policy_checkpoint(recording, args)
    base = recording.ctr_config or PRESETS['paper']
    settings = {name: config for name, config in PRESETS.items() if name != 'off'} | grid(base, args)

    baseline = [result.normalized_actions for _, (result,) in
                replay([make_policy(checkpoint, unnorm_key, recording, PRESETS['off'])],
                       queries(recording, args.limit, args.camera_topics))]
    if not baseline:
        raise SystemExit('the recording has no query to replay')
    points: dict[str, dict[str, Any]] = {}
    for name, config in tqdm(settings.items(), desc='settings', unit='setting'):
        policy = make_policy(checkpoint, unnorm_key, recording, config)
        executed = full = 0.0
        deviations = []
        replayed = replay([policy], queries(recording, args.limit, args.camera_topics))
        for (_, (result,)), reference in zip(replayed, baseline):
            executed += result.executed_flops
            full += result.full_recompute_flops
            deviations.append(float(np.abs(result.normalized_actions - reference).mean()))
        points[name] = {'config': dataclasses.asdict(config), 'flops_reduction': 1.0 - executed / full,
                        'deviation_mean': float(np.mean(deviations)), 'deviation_max_query': max(deviations)}

    front = pareto_front(points)
    max_deviation = points['paper']['deviation_mean'] if args.max_deviation is None else args.max_deviation
    acceptable = [name for name in points if points[name]['deviation_mean'] <= max_deviation]
    recommended = max(acceptable, key=lambda name: points[name]['flops_reduction']) if acceptable else None
    args.output.mkdir(parents=True, exist_ok=True)
    title = (f'{", ".join(path.name for path in recording.paths)}: {len(baseline)} queries, {checkpoint.name}')
    plot(points, front, recommended, max_deviation, title, args.output / 'sweep.png')
    (args.output / 'sweep.json').write_text(json.dumps({
        'recording': [str(path) for path in recording.paths], 'checkpoint': checkpoint.name, 'queries': len(baseline),
        'max_deviation': max_deviation, 'recommended': recommended, 'pareto_front': front, 'settings': points},
        indent=1))

    print(f'{"setting":<40}{"FLOPs saved":>12}{"deviation":>11}')
    for name in front:
        print(f'{name:<40}{points[name]["flops_reduction"] * 100:>11.1f}%{points[name]["deviation_mean"]:>11.4f}')
    print(f'{len(points)} settings, {len(front)} on the Pareto front; plot: {args.output / "sweep.png"}')
    if recommended is None:
        print(f'no setting keeps the mean deviation within {max_deviation:g}: no recommendation written')
        return 1
    basis = f'{points[recommended]["flops_reduction"] * 100:.1f}% FLOPs saved, mean action deviation ' \
            f'{points[recommended]["deviation_mean"]:.4f} on {title}'
    if args.closed_loop:
        candidates = sorted(acceptable, key=lambda name: points[name]['flops_reduction'],
                            reverse=True)[:args.closed_loop]
        checkpoint_path = Path(args.checkpoint or recording.policy_settings['checkpoint']).expanduser()
        summaries = check_in_closed_loop(args, checkpoint_path, unnorm_key,
                                         {name: settings[name] for name in candidates})
        kept = [name for name in candidates if keeps_success(summaries[name])]
        for name in candidates:
            summary = summaries[name]
            print(f'closed loop {name}: {summary["successes"]}/{summary["episodes"]} (off '
                  f'{summaries["off"]["successes"]}/{summaries["off"]["episodes"]}), McNemar p '
                  f'{summary["mcnemar_p"]:.3g}{", success kept" if name in kept else ""}')
        if not kept:
            print('no checked setting keeps the success of full recompute: no recommendation written')
            return 1
        recommended = kept[0]
        summary = summaries[recommended]
        basis += (f'; closed loop {summary["successes"]}/{summary["episodes"]} against off '
                  f'{summaries["off"]["successes"]}/{summaries["off"]["episodes"]}, McNemar p '
                  f'{summary["mcnemar_p"]:.3g}')
        result = json.loads((args.output / 'sweep.json').read_text())
        result.update({'closed_loop': {name: summaries[name] for name in ['off', 'paper', *candidates]},
                       'recommended': recommended})
        (args.output / 'sweep.json').write_text(json.dumps(result, indent=1))
    point = points[recommended]
    yaml_path = args.output / 'recommended_ctr.yaml'
    yaml_path.write_text(settings[recommended].to_parameters_yaml(comment=(
        f'ctr-vla-sweep: {recommended}, {basis}.\nLoad it after the other parameter files: '
        f'--params-file {yaml_path.name}, or ros2 launch ctr_vla_ros bringup.launch.py ctr_params:=<this file>')))
    print(f'recommended: {recommended} ({point["flops_reduction"] * 100:.1f}% FLOPs saved, deviation '
          f'{point["deviation_mean"]:.4f}) -> {yaml_path}')
    return 0


def check_in_closed_loop(args: argparse.Namespace, checkpoint: Path, unnorm_key: str,
                         candidates: dict[str, CtrConfig]) -> dict[str, dict[str, Any]]:
    """The candidates in the evaluation runner, paired with `off` and `paper`: their summaries by name."""
    directory = args.output / 'closed_loop'
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, config in candidates.items():
        paths[name] = directory / f'{name}.yaml'
        paths[name].write_text(config.to_parameters_yaml())
    output = directory / 'eval.json'
    command = ['--checkpoint', str(checkpoint), '--unnorm-key', unnorm_key, '--suite', args.eval_suite,
               '--tasks', *map(str, args.eval_tasks), '--max-steps', str(args.eval_max_steps),
               '--workers', str(args.workers), '--output', str(output),
               '--configs', 'off', 'paper', *map(str, paths.values())]
    if args.eval_init_states:
        command += ['--init-states', *map(str, args.eval_init_states)]
    if args.eval_sampled_inits:
        command += ['--sampled-inits', *map(str, args.eval_sampled_inits)]
    runner.main(command)
    summaries = json.loads(output.read_text())['configurations']
    return {'off': summaries['off'], 'paper': summaries['paper'],
            **{name: summaries[str(path)] for name, path in paths.items()}}


if __name__ == '__main__':
    raise SystemExit(main())
