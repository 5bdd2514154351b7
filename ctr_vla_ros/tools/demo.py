"""`make demo`: the LIBERO simulation, the policy node with CTR on and the diagnostics node in closed loop, one
bounded episode recorded by the recorder node, then what a user wants to see: an animated GIF, a contact sheet of
both cameras with the reuse overlays, the predicted end-effector paths against the path taken, the recording and
its offline replay, and a summary.

Where `ros2 launch` exists this is `ros2 launch ctr_vla_ros bringup.launch.py robot:=sim rviz:=false`. Here (no ROS
distro) the same executables start with the same parameters: the package's parameter files and the overrides the
launch file applies for robot:=sim (config/robot_sim.yaml, the checkpoint and use_sim_time), and the recorder as
record:=true starts it.

By default the policy is the one trained by this package (models/libero_goal_small_llm4) on a LIBERO-Goal task it
solves, from an initial state it never saw in training. `--random-weights` runs a tiny RANDOM-WEIGHT checkpoint
instead: the arm then moves meaninglessly, and the summary says so.

    python -m ctr_vla_ros.tools.demo [--steps 300] [--output demo_output] [--task 1] [--init-state 40]
    python -m ctr_vla_ros.tools.demo --random-weights --steps 120
    python -m ctr_vla_ros.tools.demo --checkpoint DIR   # with the parameter files' suite, task and key
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PilImage

from ctr_vla_ros.ctr.config import PRESETS
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.random_checkpoint import demo_checkpoint
from ctr_vla_ros.recording.replay import open_recording
from ctr_vla_ros.tools.closed_loop import ClosedLoopClient, start_simulation_stack
from ctr_vla_ros.tools.node_processes import (
    CONFIG,
    REPO,
    NodeProcess,
    interrupt_all,
    interrupt_on_sigterm,
    network_safe_environment,
)
from ctr_vla_ros.tools.replay import make_policy, queries, run_replay, summarize

TILE = 224


# A random policy leaves the trained state range within a few chunks and the policy node would (rightly) stop the
# arm there for good; the random-weight demo relaxes that check and slows the rotation so the episode stays
# watchable. A real checkpoint runs with the parameter file's values.
RANDOM_WEIGHT_OVERRIDES = {'proprio_range_margin': 100.0, 'max_rotation_step': [0.05, 0.05, 0.05]}

# The shipped policy was trained on LIBERO-Goal at 128x128 from initial states 0-39 and sampled placements from seed
# 10000 (README, "A policy trained here"); task 1 is one it solves reliably (49/50 held-out starts with CTR off).
SHIPPED_CHECKPOINT = REPO / 'models' / 'libero_goal_small_llm4'
SHIPPED_CHECKPOINT_SETTINGS = {'unnorm_key': 'libero_goal_no_noops', 'suite': 'libero_goal', 'task': 1,
                               'init_state': 40, 'resolution': 128}


class DemoClient(ClosedLoopClient):
    """The demo's client node: also keeps both cameras and both overlays, one frame per simulation step and one
    contact-sheet row per query."""

    def __init__(self) -> None:
        super().__init__('ctr_vla_demo')
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path as PathMessage
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from ctr_vla_ros.control.camera_image import image_to_rgb

        self.images: dict[str, np.ndarray] = {}
        self.frames: list[dict[str, np.ndarray]] = []
        self.query_sheets: list[dict[str, np.ndarray]] = []
        self.positions: list[np.ndarray] = []  # the end effector's, one per pose message
        self.predicted_paths: list[np.ndarray] = []  # (horizon + 1, 3) per query

        def keep(key: str):
            def store(message: Image) -> None:
                with self.lock:
                    self.images[key] = image_to_rgb(message)
                    if key == 'wrist_overlay' and 'primary_overlay' in self.images:
                        self.query_sheets.append(dict(self.images))
            return store

        for key, topic in (('primary', '/camera/primary/image_raw'), ('wrist', '/camera/wrist/image_raw'),
                           ('primary_overlay', '/ctr_vla_diagnostics/overlay/primary'),
                           ('wrist_overlay', '/ctr_vla_diagnostics/overlay/wrist')):
            self.node.create_subscription(Image, topic, keep(key), qos_profile_sensor_data)
        self.node.create_subscription(PoseStamped, '/ee_pose', self.on_pose, qos_profile_sensor_data)
        self.node.create_subscription(PathMessage, '/ctr_vla_policy/predicted_path', self.on_path, 10)

    def on_pose(self, message: Any) -> None:
        position = message.pose.position
        with self.lock:
            self.positions.append(np.array([position.x, position.y, position.z]))

    def on_path(self, message: Any) -> None:
        points = [[pose.pose.position.x, pose.pose.position.y, pose.pose.position.z] for pose in message.poses]
        with self.lock:
            self.predicted_paths.append(np.array(points))

    def on_status(self, status: Any) -> None:
        super().on_status(status)
        with self.lock:
            if {'primary', 'wrist'} <= set(self.images):
                self.frames.append(dict(self.images))


def tile(images: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    tiles = []
    for key in keys:
        image = images.get(key)
        if image is None:
            tiles.append(np.zeros((TILE, TILE, 3), np.uint8))
        else:
            tiles.append(np.asarray(PilImage.fromarray(image).resize((TILE, TILE), PilImage.Resampling.BILINEAR)))
    return np.concatenate(tiles, axis=1)


def plot_trajectory(client: DemoClient, path: Path, title: str) -> None:
    """Top and side views: the path the end effector took, and each chunk's predicted path from where it started."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    taken = np.array(client.positions)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 1, max(len(client.predicted_paths), 1)))
    for axis, (first, second), label in ((axes[0], (0, 1), 'top view (x, y)'), (axes[1], (0, 2), 'side view (x, z)')):
        for predicted, color in zip(client.predicted_paths, colors):
            axis.plot(predicted[:, first], predicted[:, second], '-', color=color, linewidth=1.5, alpha=0.8)
            axis.plot(predicted[0, first], predicted[0, second], 'o', color=color, markersize=3)
        if len(taken):
            axis.plot(taken[:, first], taken[:, second], 'k--', linewidth=1, label='taken')
        axis.set_xlabel('xyz'[first] + ' (m)')
        axis.set_ylabel('xyz'[second] + ' (m)')
        axis.set_title(label, fontsize=10)
        axis.set_aspect('equal', adjustable='datalim')
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc='best')
    figure.suptitle(f'{title}\npredicted path of each chunk (colour: query order, dot: start) and the path taken',
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def replay_recording(recording_dir: Path, checkpoint: Path, unnorm_key: str | None) -> dict[str, Any]:
    """The demo's recording through the engine offline, with the recorded settings and with full recompute."""
    recording = open_recording(sorted(recording_dir.glob('*.mcap')))
    loaded = load_checkpoint(checkpoint)
    unnorm_key = unnorm_key or recording.policy_settings['unnorm_key']
    recorded = make_policy(loaded, unnorm_key, recording, recording.ctr_config)
    full = make_policy(loaded, unnorm_key, recording, PRESETS['off'])
    return {'message_counts': recording.message_counts,
            **summarize(run_replay(recorded, full, queries(recording)))}


def write_outputs(client: DemoClient, output: Path, random_weights: bool, codes: dict[str, int],
                  wall_time: float, replayed: dict[str, Any]) -> dict[str, Any]:
    keys = ('primary', 'wrist', 'primary_overlay', 'wrist_overlay')
    frames = [PilImage.fromarray(tile(frame, keys)) for frame in client.frames]
    if frames:
        frames[0].save(output / 'demo.gif', save_all=True, append_images=frames[1:], duration=100, loop=0)
    sheets = client.query_sheets[:12]
    if sheets:
        rows = [tile(sheet, keys) for sheet in sheets]
        PilImage.fromarray(np.concatenate(rows, axis=0)).save(output / 'contact_sheet.png')
    status = client.status
    plot_trajectory(client, output / 'trajectory.png', f'"{status.instruction}"' if status else '')

    stats, status = client.stats, client.status
    stages = ('preprocess_time', 'mask_time', 'vision_time', 'projector_time', 'llm_time', 'head_time',
              'total_time')
    summary = {
        'random_weights': random_weights,
        'sim_steps': status.step if status else 0, 'commanded_steps': status.commanded_steps if status else 0,
        'hold_steps': status.hold_steps if status else 0, 'success': bool(status.success) if status else False,
        'instruction': status.instruction if status else '', 'queries': len(stats),
        'keyframes': sum(1 for item in stats if item.keyframe),
        'mean_vision_reuse': float(np.mean([item.vision_reuse_ratio for item in stats])) if stats else 0.0,
        'mean_llm_reuse': float(np.mean([item.llm_reuse_ratio for item in stats])) if stats else 0.0,
        'median_stage_ms': {stage.removesuffix('_time'): 1e3 * statistics.median(getattr(item, stage)
                                                                                  for item in stats)
                            for stage in stages} if stats else {},
        'flops_saved': 1 - sum(item.executed_flops for item in stats) / sum(item.full_recompute_flops
                                                                           for item in stats) if stats else 0.0,
        'exit_codes': codes, 'wall_time_s': wall_time, 'replay': replayed,
    }
    (output / 'summary.json').write_text(json.dumps(summary, indent=2))
    lines = ['# ctr_vla_ros demo', '']
    if random_weights:
        lines += ['**Random weights** (`--random-weights`): the policy is a tiny OpenVLA-OFT with random '
                  'weights: the arm moves meaninglessly and the task cannot succeed. The pipeline, the CTR masks '
                  'and the costs are real; without `--random-weights` the demo runs the policy trained by this '
                  'package. To keep a random arm watchable, the demo slows its rotation and relaxes '
                  f'the trained-state-range check ({RANDOM_WEIGHT_OVERRIDES}).', '']
    lines += [f'- Task: "{summary["instruction"]}"',
              f'- Simulation steps: {summary["sim_steps"]} ({summary["commanded_steps"]} commanded, '
              f'{summary["hold_steps"]} holding still between chunks), success: {summary["success"]}',
              f'- Model queries: {summary["queries"]}, keyframes: {summary["keyframes"]}',
              f'- Mean reuse: vision encoder {summary["mean_vision_reuse"]:.1%}, LLM {summary["mean_llm_reuse"]:.1%}',
              f'- FLOPs saved by CTR over the episode: {summary["flops_saved"]:.1%}',
              '- Median per-stage latency (ms): ' + ', '.join(f'{stage} {value:.1f}' for stage, value in
                                                               summary['median_stage_ms'].items()),
              f'- Wall time: {wall_time:.0f} s; node exit codes: {codes}',
              f'- Recording (`recording/`, MCAP): {sum(replayed["message_counts"].values())} messages on '
              f'{len(replayed["message_counts"])} topics; replayed offline: {replayed["queries"]} queries, recorded '
              f'actions {"reproduced" if replayed.get("reproduced") else "NOT reproduced"} (largest difference '
              f'{replayed.get("recorded_difference_max", float("nan")):.1e}), FLOPs saved '
              f'{replayed["flops_reduction"]:.1%}', '',
              'Files: `demo.gif` (primary, wrist, and their reuse overlays per simulation step), `contact_sheet.png` '
              '(one row per model query: blue = reused, orange = changed, green = task-relevant, yellow = over the '
              'reuse cap, red banner = keyframe), `trajectory.png` (each chunk\'s predicted end-effector path and the '
              'path taken), `recording/` (replay it with `ctr-vla-replay recording/*.mcap`), `summary.json`, `logs/`.']
    (output / 'summary.md').write_text('\n'.join(lines) + '\n')
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--checkpoint', type=Path, help=f'OpenVLA-OFT checkpoint (default: {SHIPPED_CHECKPOINT.name}, '
                        'trained by this package, with its task and settings)')
    source.add_argument('--random-weights', action='store_true', help='a tiny checkpoint with random weights')
    parser.add_argument('--steps', type=int, default=300, help='simulation steps in the episode (at most)')
    parser.add_argument('--output', type=Path, default=REPO / 'demo_output')
    parser.add_argument('--timeout', type=float, default=540.0, help='wall-clock limit for the episode (s)')
    parser.add_argument('--unnorm-key', help="the checkpoint's dataset statistics key (default: the parameter file's)")
    parser.add_argument('--suite', help='LIBERO suite (default: the parameter file\'s)')
    parser.add_argument('--task', type=int, help='task in the suite (default: the parameter file\'s)')
    parser.add_argument('--init-state', type=int, help='initial state (default: the parameter file\'s)')
    parser.add_argument('--resolution', type=int, help='camera size; a trained checkpoint wants its training data\'s')
    args = parser.parse_args(argv)

    from tqdm import tqdm

    os.environ.update(network_safe_environment())  # for the demo's own ROS node
    interrupt_on_sigterm()
    args.output.mkdir(parents=True, exist_ok=True)
    logs = args.output / 'logs'
    logs.mkdir(exist_ok=True)
    random_weights = args.random_weights
    if random_weights:
        print('*** A tiny checkpoint with RANDOM WEIGHTS: the arm will move meaninglessly; the pipeline, masks and '
              'costs are real. ***')
        checkpoint = demo_checkpoint()
    elif args.checkpoint is None:
        checkpoint = SHIPPED_CHECKPOINT
        for name, value in SHIPPED_CHECKPOINT_SETTINGS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    else:
        checkpoint = args.checkpoint

    started = time.monotonic()
    policy = {'checkpoint': str(checkpoint), **(RANDOM_WEIGHT_OVERRIDES if random_weights else {})}
    if args.unnorm_key:
        policy['unnorm_key'] = args.unnorm_key
    simulation = {'max_steps': args.steps}
    for name, value in (('suite', args.suite), ('task_id', args.task), ('init_state', args.init_state),
                        ('resolution', args.resolution)):
        if value is not None:
            simulation[name] = value
    recording_dir = args.output / 'recording'
    for old in recording_dir.glob('*.mcap'):
        old.unlink()
    client = DemoClient()
    processes = []
    codes: dict[str, int] = {}
    try:
        processes = start_simulation_stack(logs, policy, simulation, diagnostics={'overlay_scale': 1})
        processes.append(NodeProcess('ctr_vla_recorder', [CONFIG], {
            'output_directory': str(recording_dir), 'recording_name': 'demo'},
            logs / 'ctr_vla_recorder.log'))
        processes[-1].wait_for_log('recorded the parameters of ctr_vla_policy', timeout=120)
        client.enable_policy(timeout=120)
        with tqdm(total=args.steps, desc='episode', unit='step', mininterval=1.0) as progress:
            def show(status: Any) -> None:
                failed = [node.executable for node in processes if node.process.poll() is not None]
                if failed:
                    raise RuntimeError(f'{failed} exited early (see {logs})')
                if status is not None:
                    progress.update(status.step - progress.n)
                    progress.set_postfix(queries=len(client.stats), success=status.success)

            client.wait_until(lambda status: status is not None and status.done, args.timeout, 'the episode',
                                show)
    finally:
        codes = interrupt_all(processes)
        client.close()
    replayed = replay_recording(recording_dir, checkpoint, args.unnorm_key)
    summary = write_outputs(client, args.output, random_weights, codes, time.monotonic() - started, replayed)
    print((args.output / 'summary.md').read_text())
    print(f'outputs in {args.output}')
    if any(codes.values()) or summary['queries'] == 0:
        print(f'demo failed: exit codes {codes}, {summary["queries"]} queries', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
