"""Replay a recording through the CTR engine, offline, at full speed, no ROS processes.

    ctr-vla-replay ~/ctr_vla_recordings/ctr_vla_20261128_101500_*.mcap
    ctr-vla-replay run.mcap --preset fast            # other settings on the same inputs
    ctr-vla-replay run.mcap --ctr-params tuned.yaml  # e.g. what ctr-vla-sweep recommends

Every query runs twice, interleaved: with the CTR settings and with full recompute (CTR off), so both see the same
machine conditions. Per query and in total it prints FLOPs saved, engine time, reuse and the action deviation from
full recompute (normalised action units). For a recording of the policy node it also compares with the recorded
actions: with the recorded checkpoint and settings (the default) the replay reproduces them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.model.checkpoint import LoadedCheckpoint, load_checkpoint
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.recording.replay import (
    RecordedQuery,
    Recording,
    RecordingError,
    open_recording,
    recorded_queries,
    replay,
)

REPRODUCTION_TOLERANCE = 1e-5  # normalised units: the engine's own run-to-run spread on one machine is below this


def add_recording_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('recording', type=Path, nargs='+', help='the MCAP file(s) of one recording, in order')
    parser.add_argument('--checkpoint', type=Path, help="checkpoint directory (default: the recorded policy's)")
    parser.add_argument('--unnorm-key', help="dataset statistics key (default: the recorded policy's)")
    parser.add_argument('--limit', type=int, help='replay at most this many queries')
    parser.add_argument('--camera-topics', nargs='+', help='camera topics in model order (default: as recorded; '
                        'needed for a recording made with `ros2 bag record`)')


def load_policy_checkpoint(recording: Recording, args: argparse.Namespace) -> tuple[LoadedCheckpoint, str]:
    settings = recording.policy_settings
    checkpoint = args.checkpoint or settings.get('checkpoint')
    if not checkpoint:
        raise SystemExit('the recording does not name a checkpoint (recorded without the policy node, or with the '
                         'random-weight demo): give --checkpoint')
    unnorm_key = args.unnorm_key or settings.get('unnorm_key')
    if not unnorm_key:
        raise SystemExit('give --unnorm-key (the recording does not name one)')
    return load_checkpoint(Path(checkpoint).expanduser(), settings.get('arch_override') or None), unnorm_key


def make_policy(checkpoint: LoadedCheckpoint, unnorm_key: str, recording: Recording, ctr: CtrConfig) -> VlaPolicy:
    settings = recording.policy_settings
    return VlaPolicy(checkpoint, unnorm_key, settings.get('rotate180', False), settings.get('center_crop', True),
                     ctr)


def queries(recording: Recording, limit: int | None = None,
            camera_topics: list[str] | None = None) -> Iterator[RecordedQuery]:
    """The recording's queries (at most `limit`); a recording that cannot be replayed ends the program."""
    try:
        for count, query in enumerate(recorded_queries(recording, camera_topics)):
            if limit is not None and count >= limit:
                return
            yield query
    except RecordingError as error:
        raise SystemExit(f'cannot replay {recording.paths[0]}: {error}') from error


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    executed = sum(row['executed_flops'] for row in rows)
    full = sum(row['full_recompute_flops'] for row in rows)
    summary = {
        'queries': len(rows), 'flops_reduction': 1.0 - executed / full,
        'median_time_s': statistics.median(row['time_s'] for row in rows),
        'median_full_time_s': statistics.median(row['full_time_s'] for row in rows),
        'deviation_mean': float(np.mean([row['deviation_mean'] for row in rows])),
        'deviation_max': max(row['deviation_max'] for row in rows),
        'mean_vision_reuse': float(np.mean([row['vision_reuse'] for row in rows])),
        'mean_llm_reuse': float(np.mean([row['llm_reuse'] for row in rows])),
    }
    summary['speedup'] = summary['median_full_time_s'] / summary['median_time_s']
    recorded = [row['recorded_difference'] for row in rows if row['recorded_difference'] is not None]
    if recorded:
        summary['recorded_difference_max'] = max(recorded)
        summary['reproduced'] = summary['recorded_difference_max'] <= REPRODUCTION_TOLERANCE
    return summary


def run_replay(policy: VlaPolicy, baseline: VlaPolicy, recorded: Iterator[RecordedQuery],
               progress: Any = None) -> list[dict[str, Any]]:
    rows = []
    for query, (result, full) in replay([policy, baseline], recorded):
        deviation = np.abs(result.normalized_actions - full.normalized_actions)
        difference = None
        if query.recorded_normalized_actions is not None:
            difference = float(np.abs(result.normalized_actions - query.recorded_normalized_actions).max())
        rows.append({
            'index': query.index, 'keyframe': result.keyframe, 'vision_reuse': result.vision_reuse,
            'llm_reuse': result.llm_reuse, 'executed_flops': result.executed_flops,
            'full_recompute_flops': result.full_recompute_flops, 'time_s': result.time, 'full_time_s': full.time,
            'deviation_mean': float(deviation.mean()), 'deviation_max': float(deviation.max()),
            'recorded_difference': difference})
        if progress is not None:
            progress(rows[-1])
    if not rows:
        raise SystemExit('the recording has no query to replay')
    return rows


def print_row(row: dict[str, Any]) -> None:
    recorded = '' if row['recorded_difference'] is None else f'{row["recorded_difference"]:>11.2e}'
    print(f'{row["index"]:>6} {"K" if row["keyframe"] else " "} {row["vision_reuse"]:>6.2f} {row["llm_reuse"]:>6.2f}'
          f'{(1 - row["executed_flops"] / row["full_recompute_flops"]) * 100:>8.1f}%'
          f'{row["time_s"] * 1e3:>9.1f}{row["full_time_s"] * 1e3:>9.1f}'
          f'{row["deviation_mean"]:>9.4f}{row["deviation_max"]:>9.4f}{recorded}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recording_arguments(parser)
    settings = parser.add_mutually_exclusive_group()
    settings.add_argument('--preset', choices=sorted(PRESETS), help='CTR settings preset')
    settings.add_argument('--ctr-params', type=Path, help='CTR settings from a parameter file (the `ctr:` section)')
    parser.add_argument('--json', type=Path, help='write every query and the summary here')
    args = parser.parse_args(argv)

    recording = open_recording(args.recording)
    counts = ', '.join(f'{topic} {count}' for topic, count in sorted(recording.message_counts.items()))
    print(f'recording: {", ".join(str(path) for path in recording.paths)}\n  messages: {counts}')
    if args.preset:
        ctr, source = PRESETS[args.preset], f'preset {args.preset}'
    elif args.ctr_params:
        ctr, source = CtrConfig.from_yaml(args.ctr_params), str(args.ctr_params)
    elif (recorded := recording.ctr_config) is not None:
        ctr, source = recorded, 'as recorded'
    else:
        ctr, source = PRESETS['paper'], 'preset paper (the recording has no policy settings)'
    checkpoint, unnorm_key = load_policy_checkpoint(recording, args)
    print(f'checkpoint: {checkpoint.name} ({unnorm_key}); CTR settings: {source}')
    policy = make_policy(checkpoint, unnorm_key, recording, ctr)
    baseline = make_policy(checkpoint, unnorm_key, recording, PRESETS['off'])

    print(f'{"query":>6} K {"v-reuse":>6} {"l-reuse":>6} {"FLOPs-":>8} {"CTR ms":>8} {"full ms":>8} '
          f'{"dev mean":>8} {"dev max":>8} {"vs recorded":>11}')
    rows = run_replay(policy, baseline, queries(recording, args.limit, args.camera_topics), print_row)
    summary = summarize(rows)
    print(f'\n{summary["queries"]} queries: FLOPs {summary["flops_reduction"] * 100:.1f}% fewer, median engine time '
          f'{summary["median_time_s"] * 1e3:.1f} ms vs {summary["median_full_time_s"] * 1e3:.1f} ms full recompute '
          f'(x{summary["speedup"]:.2f}), reuse {summary["mean_vision_reuse"]:.2f} vision / '
          f'{summary["mean_llm_reuse"]:.2f} LLM, action deviation from full recompute mean '
          f'{summary["deviation_mean"]:.4f} max {summary["deviation_max"]:.4f}')
    if 'reproduced' in summary:
        verdict = 'reproduced' if summary['reproduced'] else 'NOT reproduced'
        print(f'recorded actions {verdict}: largest difference {summary["recorded_difference_max"]:.2e} '
              f'(tolerance {REPRODUCTION_TOLERANCE:.0e})')
    if args.json:
        args.json.write_text(json.dumps({'settings': vars(ctr), 'summary': summary, 'queries': rows}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
