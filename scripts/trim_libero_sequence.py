"""Keep the first N queries of a LIBERO query-cadence sequence (.npz, the format of ctr_vla_ros/tools/record_libero.py):
how the sequences in data/libero/ were cut from longer recordings to keep the repository small.

    python scripts/trim_libero_sequence.py SOURCE.npz data/libero/NAME.npz --queries 20
"""

import argparse
from pathlib import Path

import numpy as np

PER_QUERY = ('agentview', 'wrist', 'proprio8', 'query_steps', 'query_phase')
PER_STEP = ('actions', 'phases')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', type=Path)
    parser.add_argument('output', type=Path)
    parser.add_argument('--queries', type=int, default=20)
    args = parser.parse_args()
    with np.load(args.source, allow_pickle=False) as source:
        data = {key: source[key] for key in source.files}
    steps = int(data['query_steps'][args.queries]) if args.queries < len(data['query_steps']) else None
    for key in PER_QUERY:
        data[key] = data[key][:args.queries]
    for key in PER_STEP:
        data[key] = data[key][:steps]
    np.savez_compressed(args.output, **data)


if __name__ == '__main__':
    main()
