"""Train the package's own OpenVLA-OFT on LIBERO HDF5 demonstrations (OpenVLA-OFT's recipe, see
ctr_vla_ros/training/trainer.py), from random weights or from an official-format checkpoint.

    ctr-vla-train demos/*.hdf5 --output runs/goal3 --arch small --epochs 4 --batch-size 8
    ctr-vla-train --resume --output runs/goal3        # continue a killed run exactly where it was saved
    ctr-vla-train demos/*.hdf5 --output /tmp/profile --arch small --threads 2 --profile 20   # time a step

The output directory receives `checkpoint/` (the latest export, loadable by ctr-vla-predict and the policy node with
`--unnorm-key libero_goal_no_noops`), `checkpoint-best/`, `loss_curve.png`, `history.json` and `training_state.pt`.
`--dtype bf16` (autocast) is checked on the CPU; it pays only where the CPU computes in bf16 (AVX512-BF16 or AMX):
elsewhere it is emulated and several times slower than fp32 (README), and the tool says so. `--device cuda` is written
but untested (no GPU on the project's machines).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
import sys

import torch

from ctr_vla_ros.training.architectures import PRESETS
from ctr_vla_ros.training.trainer import STATE_FILE, STEP_PHASES, Trainer, TrainingConfig


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    defaults = argparse.Namespace(**{field.name: field.default for field in dataclasses.fields(TrainingConfig)})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every setting defaults to None here: the defaults live in TrainingConfig, and a resumed run must be able to
    # tell a setting that was given from one that was not.
    parser.add_argument('data_files', nargs='*', help='LIBERO HDF5 files (official layout)')
    parser.add_argument('--output', type=Path, required=True, help='run directory')
    parser.add_argument('--resume', action='store_true', help=f'continue from OUTPUT/{STATE_FILE}')
    parser.add_argument('--arch', dest='architecture',
                        help=f'preset ({", ".join(PRESETS)}; default small) or architecture override file (YAML); '
                             'with --init-checkpoint: override file for loading it')
    parser.add_argument('--init-checkpoint', help='official-format checkpoint to fine-tune instead of random weights')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--steps', type=int, help='total optimizer steps')
    length.add_argument('--epochs', type=float, help='total passes over the training samples')
    parser.add_argument('--batch-size', type=int, help=f'default {defaults.batch_size}')
    parser.add_argument('--lr', dest='learning_rate', type=float, help=f'peak learning rate, default '
                                                                       f'{defaults.learning_rate}')
    parser.add_argument('--weight-decay', type=float, help=f'AdamW, default {defaults.weight_decay}')
    parser.add_argument('--warmup-fraction', type=float, help=f'default {defaults.warmup_fraction}')
    parser.add_argument('--ema-decay', type=float,
                        help=f'decay of the weights\' moving average that validation and exports use (0: the last '
                             f'weights), default {defaults.ema_decay}')
    parser.add_argument('--validation-fraction', type=float,
                        help=f'demonstrations held out per instruction, default {defaults.validation_fraction}')
    parser.add_argument('--validation-interval', type=int,
                        help=f'steps between validation + export, default {defaults.validation_interval}')
    parser.add_argument('--validation-samples', type=int, help=f'default {defaults.validation_samples}')
    parser.add_argument('--checkpoint-interval', type=int,
                        help=f'steps between training-state saves, default {defaults.checkpoint_interval}')
    parser.add_argument('--seed', type=int, help=f'default {defaults.seed}')
    parser.add_argument('--unnorm-key', help=f'statistics key of the export, default {defaults.unnorm_key}')
    parser.add_argument('--device', help='cpu (default) or cuda (untested)')
    parser.add_argument('--dtype', choices=('fp32', 'bf16'), help='fp32 (default) or bf16 autocast')
    parser.add_argument('--ctr-aware', metavar='CONFIGURATION',
                        help='CTR-aware fine-tuning for this CTR configuration (a preset, an evaluation configuration '
                             'such as paper_pruned, or a parameter file)')
    parser.add_argument('--ctr-aware-share', type=float,
                        help=f'share of samples trained with reuse, default {defaults.ctr_aware_share}')
    parser.add_argument('--ctr-aware-queries-back', type=int,
                        help=f'the cached frame lies up to this many chunks back, default '
                             f'{defaults.ctr_aware_queries_back}')
    parser.add_argument('--publish', metavar='DIRECTORY',
                        help='every new best export also goes here (e.g. models/NAME), its loss history to '
                             'benchmarks/results/train_NAME.json and its curve to docs/loss_curve_NAME.png')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--profile', type=int, metavar='STEPS',
                        help='instead of training: time STEPS steps per phase (the output directory is scratch)')
    arguments = parser.parse_args(argv)
    if arguments.init_checkpoint and arguments.architecture in PRESETS:
        parser.error(f'--arch {arguments.architecture} with --init-checkpoint: the checkpoint brings its own '
                     'architecture (--arch then takes only an override file for loading it)')
    return arguments


def config_from_arguments(arguments: argparse.Namespace) -> TrainingConfig:
    """The run's settings: defaults + the given ones; for --resume, the saved ones + the given ones (the trainer
    refuses any that differ from the saved run)."""
    given = {field.name: getattr(arguments, field.name) for field in dataclasses.fields(TrainingConfig)
             if getattr(arguments, field.name, None) not in (None, [])}
    if 'data_files' in given:
        given['data_files'] = tuple(str(path) for path in given['data_files'])
    if not arguments.resume:
        if 'data_files' not in given:
            raise ValueError('no data files given')
        return TrainingConfig(**given)
    saved = torch.load(arguments.output / STATE_FILE, map_location='cpu', weights_only=True)['config']
    return TrainingConfig(**{**saved, **given})


def cpu_computes_bf16(cpuinfo: Path = Path('/proc/cpuinfo')) -> bool | None:
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16); None where its flags cannot be read."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith('flags')).split()
    except (OSError, StopIteration):
        return None
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    try:
        config = config_from_arguments(arguments)
        trainer = Trainer(config, arguments.output, resume=arguments.resume)
    except (ValueError, OSError) as error:  # CheckpointError and ArchitectureError are ValueErrors
        print(f'ctr-vla-train: {error}', file=sys.stderr)
        return 2
    if config.dtype == 'bf16' and config.device == 'cpu' and cpu_computes_bf16() is False:
        print('ctr-vla-train: warning: this CPU has no bf16 arithmetic (neither AVX512-BF16 nor AMX): bf16 autocast '
              'is emulated here and several times slower than --dtype fp32', file=sys.stderr)
    print(f'{len(trainer.training_samples)} training samples ({trainer.steps_per_epoch} batches per epoch), '
          f'{len(trainer.validation_samples) if trainer.validation_samples else 0} validation samples; '
          f'{sum(parameter.numel() for parameter in trainer.model.parameters()) / 1e6:.2f} M parameters; '
          f'step {trainer.step} of {trainer.total_steps}')
    if arguments.profile:
        timing = trainer.profile(arguments.profile)
        phases = ', '.join(f'{phase} {timing[phase] * 1000:.0f} ms' for phase in STEP_PHASES)
        print(f'{timing["step"] * 1000:.0f} ms per step of {config.batch_size} ({phases}): '
              f'{timing["samples_per_second"]:.1f} samples/s')
        return 0
    trainer.run()
    print(f'exported {arguments.output / "checkpoint"} (unnorm key {config.unnorm_key}); '
          f'loss curve {arguments.output / "loss_curve.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
