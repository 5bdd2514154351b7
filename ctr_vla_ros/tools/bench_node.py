"""Node benchmark, with real processes: the policy node in its own process, cameras and robot state published by
this process at 30 Hz, once per execution mode (open_loop, the release's; overlap, for real arms), and with
--record once more per mode with the recorder (`ctr_vla_recorder`) writing everything to an MCAP file beside it.

Measures per mode:
- the command rate: EndEffectorDelta messages (MOTION, HOLD or STOP) per second while enabled, which must equal the
  control rate in both modes (a HOLD fills every tick with no action to execute);
- the tick jitter: |interval between consecutive commands - control period|, from the header stamps (taken in the
  tick callback) and from the arrival times here;
- the node overhead per chunk: camera stamp -> ActionChunk received, minus the time the frames waited for the
  executor to need a chunk (ActionChunk.observation_age, which also holds the camera transport), minus the node's
  predict time (ActionChunk.inference_latency), plus the camera transport (measured here on the same topics). That
  leaves transport in, conversion, pairing, the hand-off to the inference thread, publishing and transport out.

    python -m ctr_vla_ros.tools.bench_node --checkpoint checkpoints/tiny-demo --seconds 30 [--record]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.control.chunk_execution import EXECUTION_MODES
from ctr_vla_ros.tools.bench_ctr import load_sequence
from ctr_vla_ros.tools.benchmarking import machine_description, write_results
from ctr_vla_ros.tools.node_processes import REPO, NodeProcess, interrupt_on_sigterm, network_safe_environment

CAMERA_RATE = 30.0
CONTROL_PERIOD = 0.05  # s: the parameter file's control_rate, 20 Hz
WARM_UP = 3.0  # s: first queries, allocator growth


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {'median': float(np.median(array)), 'p90': float(np.percentile(array, 90)),
            'p99': float(np.percentile(array, 99)), 'max': float(array.max()), 'count': int(array.size)}


def stamp_seconds(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def measure(checkpoint: Path, sequence: dict[str, Any], mode: str, seconds: float,
            recording: Path | None = None) -> dict[str, Any]:
    """Run the policy node in one execution mode, feed it, and measure its commands and chunks; with `recording`
    (a directory), the recorder runs beside it throughout."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from ctr_vla_ros_msgs.msg import ActionChunk, EndEffectorDelta
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray, Header, String
    from std_srvs.srv import SetBool

    from ctr_vla_ros.nodes.image_conversion import rgb_to_image

    recorder = None
    if recording is not None:
        recorder = NodeProcess('ctr_vla_recorder', overrides={'output_directory': str(recording),
                                                              'recording_name': mode})
    policy = NodeProcess('ctr_vla_policy', overrides={'checkpoint': str(checkpoint), 'proprio_source': 'state',
                                                      'execution_mode': mode, 'requery_remaining': 4})
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C reaches `finally`
    node = rclpy.create_node('bench_node_driver', context=context)
    chunks: list[tuple[float, Any]] = []
    deltas: list[tuple[float, Any]] = []
    node.create_subscription(ActionChunk, '/ctr_vla_policy/action_chunk',
                             lambda message: chunks.append((time.time(), message)), 10)
    node.create_subscription(EndEffectorDelta, '/ctr_vla_policy/ee_delta',
                             lambda message: deltas.append((time.time(), message)), 100)
    transport: list[float] = []
    node.create_subscription(Image, '/camera/wrist/image_raw', lambda message: transport.append(
        time.time() - stamp_seconds(message.header)), qos_profile_sensor_data)
    cameras = [node.create_publisher(Image, topic, qos_profile_sensor_data)
               for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw')]
    state = node.create_publisher(Float64MultiArray, '/robot_state', qos_profile_sensor_data)
    instruction = node.create_publisher(String, '/instruction', 10)
    frame_index = [0]

    def publish_inputs() -> None:
        index = (frame_index[0] // int(CAMERA_RATE)) % len(sequence['agentview'])  # a new scene every second
        stamp = node.get_clock().now().to_msg()
        for publisher, key, frame in zip(cameras, ('agentview', 'wrist'), ('primary', 'wrist')):
            publisher.publish(rgb_to_image(sequence[key][index], Header(stamp=stamp, frame_id=frame)))
        state.publish(Float64MultiArray(data=[float(value) for value in sequence['proprio8'][index]]))
        instruction.publish(String(data=sequence['instruction']))
        frame_index[0] += 1

    node.create_timer(1.0 / CAMERA_RATE, publish_inputs)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        client = node.create_client(SetBool, '/ctr_vla_policy/enable')
        if not client.wait_for_service(timeout_sec=120):
            raise RuntimeError('the policy node did not come up')
        future = client.call_async(SetBool.Request(data=True))
        while not future.done():
            time.sleep(0.05)
        time.sleep(WARM_UP)
        chunks.clear()
        deltas.clear()
        transport.clear()
        time.sleep(seconds)
        measured_chunks, measured_deltas = list(chunks), list(deltas)
    finally:
        policy.interrupt()
        if recorder is not None:
            recorder.interrupt()
        executor.shutdown()
        rclpy.shutdown(context=context)

    camera_transport = float(np.median(transport))
    overhead = [received - stamp_seconds(message.header) - message.observation_age - message.inference_latency
                + camera_transport for received, message in measured_chunks]
    stamps = np.array([stamp_seconds(message.header) for _, message in measured_deltas])
    arrivals = np.array([received for received, _ in measured_deltas])
    names = {EndEffectorDelta.MOTION: 'motion', EndEffectorDelta.HOLD: 'hold', EndEffectorDelta.STOP: 'stop'}
    recorded_bytes = sum(path.stat().st_size for path in recording.glob('*.mcap')) if recording else None
    return {
        'execution_mode': mode, 'recorder': recording is not None, 'recorded_bytes': recorded_bytes,
        'chunks': len(measured_chunks), 'commands': len(measured_deltas),
        'command_kinds': dict(Counter(names[message.kind] for _, message in measured_deltas)),
        'command_rate_hz': (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        'inference_latency_s': percentiles([message.inference_latency for _, message in measured_chunks]),
        'observation_age_s': percentiles([message.observation_age for _, message in measured_chunks]),
        'camera_transport_s': percentiles(transport),
        'overhead_s': percentiles(overhead),
        'tick_jitter_stamp_s': percentiles(np.abs(np.diff(stamps) - CONTROL_PERIOD).tolist()),
        'tick_jitter_arrival_s': percentiles(np.abs(np.diff(arrivals) - CONTROL_PERIOD).tolist()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--sequence', type=Path, default=REPO / 'data' / 'libero' / 'libero_spatial_t0_i0.npz')
    parser.add_argument('--seconds', type=float, default=30.0, help='measured time per execution mode')
    parser.add_argument('--record', action='store_true', help='measure each mode again with the recorder running')
    args = parser.parse_args(argv)
    os.environ.update(network_safe_environment())
    interrupt_on_sigterm()

    sequence = load_sequence(args.sequence)
    results = {'checkpoint': args.checkpoint.name, 'machine': machine_description(), 'seconds': args.seconds,
               'camera_rate_hz': CAMERA_RATE, 'control_rate_hz': 1 / CONTROL_PERIOD,
               'modes': {}}
    with tempfile.TemporaryDirectory() as recordings:
        for mode in EXECUTION_MODES:
            results['modes'][mode] = measure(args.checkpoint, sequence, mode, args.seconds)
            if args.record:
                results['modes'][f'{mode} + recorder'] = measure(args.checkpoint, sequence, mode, args.seconds,
                                                                 Path(recordings) / mode)
    path = write_results(f'node_{args.checkpoint.name}', results)
    for mode, item in results['modes'].items():
        print(f'{mode}: {item["commands"]} commands ({item["command_kinds"]}) and {item["chunks"]} chunks in '
              f'{args.seconds:.0f} s: {item["command_rate_hz"]:.2f} Hz (control rate {1 / CONTROL_PERIOD:.0f} Hz)')
        print(f'  predict median {item["inference_latency_s"]["median"] * 1e3:.1f} ms; node overhead median '
              f'{item["overhead_s"]["median"] * 1e3:.2f} ms, p99 {item["overhead_s"]["p99"] * 1e3:.2f} ms')
        print(f'  tick jitter (stamps) median {item["tick_jitter_stamp_s"]["median"] * 1e3:.2f} ms, p99 '
              f'{item["tick_jitter_stamp_s"]["p99"] * 1e3:.2f} ms; arrivals p99 '
              f'{item["tick_jitter_arrival_s"]["p99"] * 1e3:.2f} ms')
    print(f'results: {path}')


if __name__ == '__main__':
    main()
