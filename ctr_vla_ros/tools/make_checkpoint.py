"""ctr-vla-make-checkpoint: write a random-weight OpenVLA-OFT checkpoint in the release's on-disk format
(deterministic from a seed; see ctr_vla_ros/model/random_checkpoint.py for the sizes).

    ctr-vla-make-checkpoint --size tiny --output checkpoints/tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctr_vla_ros.model.random_checkpoint import write_random_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=['tiny', 'bench'], default='tiny')
    parser.add_argument('--output', type=Path, required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--vision-depth', type=int, help='blocks per tower, the unused last one included '
                        '(default 3 tiny, 4 bench)')
    parser.add_argument('--llm-layers', type=int, help='LLM layers (default 3 tiny, 4 bench)')
    args = parser.parse_args(argv)
    architecture = write_random_checkpoint(args.output, args.size, args.seed, args.vision_depth, args.llm_layers)
    print(f'wrote a {args.size} random-weight checkpoint to {args.output} '
          f'({[tower.depth for tower in architecture.vision_towers]} vision blocks, '
          f'{architecture.llm.num_layers} LLM layers, hidden {architecture.llm.hidden_size})')


if __name__ == '__main__':
    main()
