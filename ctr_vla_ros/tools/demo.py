"""`make demo`: the LIBERO simulation, the policy node with CTR on and the diagnostics node in closed loop, one
bounded episode, then what a user wants to see: an animated GIF, a contact sheet of both cameras with the reuse
overlays, and a summary.

Where `ros2 launch` exists this is `ros2 launch ctr_vla_ros bringup.launch.py robot:=sim rviz:=false`. Here (no ROS
distro) the same executables start with the same parameters: the package's parameter file plus the overrides the
launch file applies for robot:=sim (the checkpoint and use_sim_time). With no checkpoint given, a tiny RANDOM-WEIGHT
checkpoint is generated: the arm then moves meaninglessly, and the summary says so.

    python -m ctr_vla_ros.tools.demo [--checkpoint DIR] [--steps 120] [--output demo_output]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PilImage
import yaml

from ctr_vla_ros.model.random_checkpoint import demo_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'config' / 'ctr_vla.yaml'
# What bringup.launch.py starts for robot:=sim rviz:=false (a test keeps the two in step).
LAUNCHED_NODES = ('ctr_vla_libero_sim', 'ctr_vla_policy', 'ctr_vla_diagnostics')
TILE = 224


def network_safe_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    environment.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))
    environment.setdefault('MUJOCO_GL', 'osmesa')
    return environment


# A random policy leaves the trained state range within a few chunks and the policy node would (rightly) stop the
# arm there for good; the random-weight demo relaxes that check and slows the rotation so the episode stays
# watchable. A real checkpoint runs with the parameter file's values.
RANDOM_WEIGHT_OVERRIDES = {'proprio_range_margin': 100.0, 'max_rotation_step': [0.05, 0.05, 0.05]}


def start_nodes(checkpoint: Path, random_weights: bool, steps: int, logs: Path) -> dict[str, subprocess.Popen]:
    policy = {'checkpoint': str(checkpoint), 'use_sim_time': True}
    if random_weights:
        policy.update(RANDOM_WEIGHT_OVERRIDES)
    overrides = {
        'ctr_vla_policy': {'ros__parameters': policy},
        'ctr_vla_diagnostics': {'ros__parameters': {'use_sim_time': True, 'overlay_scale': 1}},
        'ctr_vla_libero_sim': {'ros__parameters': {'max_steps': steps}},
    }
    override_file = logs / 'demo_overrides.yaml'
    override_file.write_text(yaml.safe_dump(overrides))
    processes = {}
    for name in LAUNCHED_NODES:
        executable = Path(sys.executable).parent / name
        command = [str(executable), '--ros-args', '--params-file', str(CONFIG), '--params-file', str(override_file)]
        log = open(logs / f'{name}.log', 'w')
        processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    return processes


def stop_nodes(processes: dict[str, subprocess.Popen]) -> dict[str, int]:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
    return codes


class Recorder:
    """The demo's own ROS node: enables the policy and records everything worth showing."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, SimStatus
        from sensor_msgs.msg import Image

        from ctr_vla_ros.nodes.image_conversion import image_to_rgb

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('ctr_vla_demo', context=self.context)
        self.lock = threading.Lock()
        self.status = None
        self.images: dict[str, np.ndarray] = {}
        self.frames: list[dict[str, np.ndarray]] = []
        self.query_sheets: list[dict[str, np.ndarray]] = []
        self.stats: list[Any] = []
        self.chunks: list[Any] = []

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
        self.node.create_subscription(SimStatus, '/ctr_vla_libero_sim/status', self.on_status, 10)
        self.node.create_subscription(CtrStats, '/ctr_vla_policy/ctr_stats', self.stats.append, 10)
        self.node.create_subscription(ActionChunk, '/ctr_vla_policy/action_chunk', self.chunks.append, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def on_status(self, status: Any) -> None:
        with self.lock:
            self.status = status
            if {'primary', 'wrist'} <= set(self.images):
                self.frames.append(dict(self.images))

    def enable_policy(self, timeout: float) -> None:
        from std_srvs.srv import SetBool
        client = self.node.create_client(SetBool, '/ctr_vla_policy/enable')
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError('the policy node did not come up (see demo_output/logs/ctr_vla_policy.log)')
        future = client.call_async(SetBool.Request(data=True))
        deadline = time.monotonic() + 30
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not future.done() or not future.result().success:
            raise RuntimeError('enabling the policy failed')

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def tile(images: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    tiles = []
    for key in keys:
        image = images.get(key)
        if image is None:
            tiles.append(np.zeros((TILE, TILE, 3), np.uint8))
        else:
            tiles.append(np.asarray(PilImage.fromarray(image).resize((TILE, TILE), PilImage.Resampling.BILINEAR)))
    return np.concatenate(tiles, axis=1)


def write_outputs(recorder: Recorder, output: Path, random_weights: bool, codes: dict[str, int],
                  wall_time: float) -> dict[str, Any]:
    keys = ('primary', 'wrist', 'primary_overlay', 'wrist_overlay')
    frames = [PilImage.fromarray(tile(frame, keys)) for frame in recorder.frames]
    if frames:
        frames[0].save(output / 'demo.gif', save_all=True, append_images=frames[1:], duration=100, loop=0)
    sheets = recorder.query_sheets[:12]
    if sheets:
        rows = [tile(sheet, keys) for sheet in sheets]
        PilImage.fromarray(np.concatenate(rows, axis=0)).save(output / 'contact_sheet.png')

    stats, status = recorder.stats, recorder.status
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
        'exit_codes': codes, 'wall_time_s': wall_time,
    }
    (output / 'summary.json').write_text(json.dumps(summary, indent=2))
    lines = ['# ctr_vla_ros demo', '']
    if random_weights:
        lines += ['**Random weights.** No checkpoint was given, so the policy is a tiny OpenVLA-OFT with random '
                  'weights: the arm moves meaninglessly and the task cannot succeed. The pipeline, the CTR masks '
                  'and the costs are real; run `make demo CHECKPOINT=/path/to/openvla-7b-oft-finetuned-libero-spatial` '
                  'for a trained policy. To keep a random arm watchable, the demo slows its rotation and relaxes '
                  f'the trained-state-range check ({RANDOM_WEIGHT_OVERRIDES}).', '']
    lines += [f'- Task: "{summary["instruction"]}"',
              f'- Simulation steps: {summary["sim_steps"]} ({summary["commanded_steps"]} commanded, '
              f'{summary["hold_steps"]} holding still between chunks), success: {summary["success"]}',
              f'- Model queries: {summary["queries"]}, keyframes: {summary["keyframes"]}',
              f'- Mean reuse: vision encoder {summary["mean_vision_reuse"]:.1%}, LLM {summary["mean_llm_reuse"]:.1%}',
              f'- FLOPs saved by CTR over the episode: {summary["flops_saved"]:.1%}',
              '- Median per-stage latency (ms): ' + ', '.join(f'{stage} {value:.1f}' for stage, value in
                                                               summary['median_stage_ms'].items()),
              f'- Wall time: {wall_time:.0f} s; node exit codes: {codes}', '',
              'Files: `demo.gif` (primary, wrist, and their reuse overlays per simulation step), `contact_sheet.png` '
              '(one row per model query: blue = reused, orange = changed, green = task-relevant, yellow = over the '
              'reuse cap, red banner = keyframe), `summary.json`, `logs/`.']
    (output / 'summary.md').write_text('\n'.join(lines) + '\n')
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, help='OpenVLA-OFT checkpoint (default: tiny random weights)')
    parser.add_argument('--steps', type=int, default=120, help='simulation steps in the episode')
    parser.add_argument('--output', type=Path, default=REPO / 'demo_output')
    parser.add_argument('--timeout', type=float, default=540.0, help='wall-clock limit for the episode (s)')
    args = parser.parse_args(argv)

    from tqdm import tqdm

    os.environ.update(network_safe_environment())
    args.output.mkdir(parents=True, exist_ok=True)
    logs = args.output / 'logs'
    logs.mkdir(exist_ok=True)
    random_weights = args.checkpoint is None
    if random_weights:
        print('*** No checkpoint given: using a tiny checkpoint with RANDOM WEIGHTS. The arm will move '
              'meaninglessly; the pipeline, masks and costs are real. ***')
    checkpoint = args.checkpoint or demo_checkpoint()

    started = time.monotonic()
    processes = start_nodes(checkpoint, random_weights, args.steps, logs)
    recorder = Recorder()
    codes: dict[str, int] = {}
    try:
        recorder.enable_policy(timeout=120)
        with tqdm(total=args.steps, desc='episode', unit='step', mininterval=1.0) as progress:
            while time.monotonic() - started < args.timeout:
                failed = [name for name, process in processes.items() if process.poll() is not None]
                if failed:
                    raise RuntimeError(f'{failed} exited early (see {logs})')
                status = recorder.status
                if status is not None:
                    progress.update(status.step - progress.n)
                    progress.set_postfix(queries=len(recorder.stats), success=status.success)
                    if status.done:
                        break
                time.sleep(0.2)
    finally:
        codes = stop_nodes(processes)
        recorder.close()
    summary = write_outputs(recorder, args.output, random_weights, codes, time.monotonic() - started)
    print((args.output / 'summary.md').read_text())
    print(f'outputs in {args.output}')
    if any(codes.values()) or summary['queries'] == 0:
        print(f'demo failed: exit codes {codes}, {summary["queries"]} queries', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
