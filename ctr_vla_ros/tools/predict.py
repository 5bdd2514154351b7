"""Check a checkpoint without ROS: one action chunk from two images, a state and an instruction.

    ctr-vla-predict --checkpoint DIR --primary IMG --wrist IMG --state v1,...,v8 \
        --instruction "put the bowl on the plate" --unnorm-key libero_spatial_no_noops [--json OUT]

Images are PNG/JPEG or .npy (HxWx3 uint8 RGB). --arch names an architecture override file for checkpoints whose
towers or LLM are not the standard sizes (format: see ctr_vla_ros/model/config.py and the README).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import numpy as np
from PIL import Image
import torch

from ctr_vla_ros.model.checkpoint import CheckpointError, load_checkpoint
from ctr_vla_ros.model.config import ArchitectureError
from ctr_vla_ros.policy import InputError, VlaPolicy

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def read_image(path: Path) -> np.ndarray:
    if path.suffix == '.npy':
        return np.load(path)
    return np.asarray(Image.open(path).convert('RGB'))


def parse_state(text: str) -> np.ndarray:
    try:
        return np.array([float(value) for value in text.split(',')])
    except ValueError as error:
        raise InputError(f'--state must be comma-separated numbers: {error}') from error


def format_table(actions: np.ndarray) -> str:
    header = 'step ' + ''.join(f'{f"a{index}":>10}' for index in range(actions.shape[1]))
    rows = [f'{step:>4} ' + ''.join(f'{value:>10.4f}' for value in row) for step, row in enumerate(actions)]
    return '\n'.join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--primary', type=Path, required=True, help='third-person camera image')
    parser.add_argument('--wrist', type=Path, required=True, help='wrist camera image')
    parser.add_argument('--state', required=True, help='comma-separated proprio state (8 values for LIBERO)')
    parser.add_argument('--instruction', required=True)
    parser.add_argument('--unnorm-key', required=True, help='dataset statistics key, e.g. libero_spatial_no_noops')
    parser.add_argument('--arch', type=Path, help='architecture override file (YAML/JSON)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--rotate180', action='store_true', help='rotate images 180 degrees (LIBERO renders)')
    parser.add_argument('--no-center-crop', action='store_true', help='skip the 90%%-area centre crop')
    parser.add_argument('--json', type=Path, help='write actions, normalized_actions and unnorm_key here')
    args = parser.parse_args(argv)

    try:
        checkpoint = load_checkpoint(args.checkpoint, args.arch, DTYPES[args.dtype], args.device)
        policy = VlaPolicy(checkpoint, args.unnorm_key, args.rotate180, not args.no_center_crop)
        prediction = policy.predict([read_image(args.primary), read_image(args.wrist)], parse_state(args.state),
                                    args.instruction)
    except (CheckpointError, ArchitectureError, InputError, OSError) as error:
        print(f'ctr-vla-predict: {error}', file=sys.stderr)
        return 2

    print(f'{checkpoint.name} ({args.unnorm_key}, {args.dtype}, {args.device}): "{args.instruction}"')
    print(format_table(prediction.actions))
    if args.json:
        args.json.write_text(json.dumps({
            'actions': prediction.actions.tolist(), 'normalized_actions': prediction.normalized_actions.tolist(),
            'unnorm_key': args.unnorm_key, 'checkpoint': str(args.checkpoint)}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
