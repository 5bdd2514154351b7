"""The command line both evaluation harnesses share (the in-process runner and the ROS harness): what to evaluate,
on which episodes, and the configurations to compare, always with `off` among them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ctr_vla_ros.evaluation.configurations import CONFIGS, FRAGILITY, Configuration, configuration
from ctr_vla_ros.model.checkpoint import checkpoint_digest


def add_arguments(parser: argparse.ArgumentParser, over_ros: bool) -> None:
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--unnorm-key', required=True)
    parser.add_argument('--suite', default='libero_goal')
    parser.add_argument('--tasks', type=int, nargs='+', required=True)
    parser.add_argument('--init-states', type=int, nargs=2, metavar=('FIRST', 'LAST'), required=over_ros,
                        help="LIBERO's fixed initial states FIRST..LAST (inclusive) of every task")
    if not over_ros:  # the simulation node starts from fixed states only
        parser.add_argument('--sampled-inits', type=int, nargs=2, metavar=('FIRST', 'LAST'),
                            help="placements drawn from each task's BDDL regions with seeds FIRST..LAST (inclusive)")
    fragility = '' if over_ros else f'{FRAGILITY} (the fragility control), '
    parser.add_argument('--configs', nargs='+', default=['off', 'paper', 'fast', 'prune_static'],
                        help=f'{", ".join(sorted(CONFIGS))}, {fragility}or parameter files with a ctr: section')
    parser.add_argument('--max-steps', type=int, default=300, help='episode step budget (holds included)')
    parser.add_argument('--resolution', type=int, default=128, help='camera image size of the simulation')


def chosen_configurations(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          over_ros: bool) -> dict[str, Configuration]:
    """The configurations by name, `off` first if it was not asked for: every comparison is paired with it."""
    chosen = {}
    for name in args.configs:
        if over_ros and name == FRAGILITY:
            parser.error(f'{FRAGILITY} runs in-process only (ctr_vla_ros.evaluation.runner)')
        try:
            chosen[name] = configuration(name, args.checkpoint.name)
        except (OSError, ValueError) as error:
            parser.error(f'configuration {name}: {error}')
    return chosen if 'off' in chosen else {'off': Configuration(CONFIGS['off']), **chosen}


def evaluation_settings(args: argparse.Namespace, starts: list[str], configs: dict[str, Configuration],
                        **harness: Any) -> dict[str, Any]:
    """What the results file records of an evaluation, and what two runs must share for the second to resume the
    first's episodes (see Results): the checkpoint by name and by content (a checkpoint retrained under the same
    name starts over instead of joining its predecessor's episodes), the episodes and the configurations."""
    return {'checkpoint': args.checkpoint.name, 'checkpoint_digest': checkpoint_digest(args.checkpoint),
            'unnorm_key': args.unnorm_key, 'suite': args.suite, 'tasks': args.tasks, 'starts': starts,
            'max_steps': args.max_steps, 'resolution': args.resolution, **harness,
            'configurations': {name: config.to_json() for name, config in configs.items()}}
