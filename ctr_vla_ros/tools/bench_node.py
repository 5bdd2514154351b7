"""Node-overhead benchmark, with real processes: the policy node in its own process, cameras and robot state
published by this process at 30 Hz, in overlap mode so deltas keep ticking while the next chunk is computed.

Measures, per chunk, what the node adds around the model: camera stamp -> ActionChunk received, minus the time the
frames waited for the executor to need a chunk (ActionChunk.observation_age, which also holds the camera transport),
minus the node's predict time (preprocessing and model, ActionChunk.inference_latency), plus the camera transport
(measured here on the same topics). That leaves transport in, conversion, pairing, the hand-off to the inference
thread, publishing and transport out. And per EndEffectorDelta while inference runs: the deviation of the tick
interval from the control period (header stamps, taken in the tick callback; and arrival times here).

    python -m ctr_vla_ros.tools.bench_node --checkpoint checkpoints/tiny-demo --seconds 30
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from ctr_vla_ros.tools.bench_ctr import load_sequence
from ctr_vla_ros.tools.benchmarking import machine_description, write_results

REPO = Path(__file__).resolve().parents[2]
CAMERA_RATE = 30.0


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {'median': float(np.median(array)), 'p90': float(np.percentile(array, 90)),
            'p99': float(np.percentile(array, 99)), 'max': float(array.max()), 'count': int(array.size)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--sequence', type=Path, default=REPO.parent / 'shared' / 'data' / 'libero' /
                        'libero_spatial_t0_i0.npz')
    parser.add_argument('--seconds', type=float, default=30.0)
    args = parser.parse_args(argv)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 100)))

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from ctr_vla_ros_msgs.msg import ActionChunk, EndEffectorDelta
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray, Header, String
    from std_srvs.srv import SetBool

    from ctr_vla_ros.nodes.image_conversion import rgb_to_image

    overrides = tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False)
    yaml.safe_dump({'ctr_vla_policy': {'ros__parameters': {
        'checkpoint': str(args.checkpoint), 'proprio_source': 'state', 'execution_mode': 'overlap',
        'requery_remaining': 4}}}, overrides)
    overrides.close()
    node_process = subprocess.Popen(
        [str(Path(sys.executable).parent / 'ctr_vla_policy'), '--ros-args', '--params-file',
         str(REPO / 'config' / 'ctr_vla.yaml'), '--params-file', overrides.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    sequence = load_sequence(args.sequence)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('bench_node_driver', context=context)
    chunks: list[tuple[float, ActionChunk]] = []
    deltas: list[tuple[float, EndEffectorDelta]] = []
    node.create_subscription(ActionChunk, '/ctr_vla_policy/action_chunk',
                             lambda message: chunks.append((time.time(), message)), 10)
    node.create_subscription(EndEffectorDelta, '/ctr_vla_policy/ee_delta',
                             lambda message: deltas.append((time.time(), message)), 100)
    transport: list[float] = []
    node.create_subscription(Image, '/camera/wrist/image_raw', lambda message: transport.append(
        time.time() - message.header.stamp.sec - message.header.stamp.nanosec * 1e-9), qos_profile_sensor_data)
    cameras = [node.create_publisher(Image, topic, qos_profile_sensor_data)
               for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw')]
    state = node.create_publisher(Float64MultiArray, '/robot_state', qos_profile_sensor_data)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    node.create_publisher(String, '/instruction', latched).publish(String(data=sequence['instruction']))
    frame_index = [0]

    def publish_inputs() -> None:
        index = (frame_index[0] // int(CAMERA_RATE)) % len(sequence['agentview'])  # a new scene every second
        stamp = node.get_clock().now().to_msg()
        for publisher, key, frame in zip(cameras, ('agentview', 'wrist'), ('primary', 'wrist')):
            publisher.publish(rgb_to_image(sequence[key][index], Header(stamp=stamp, frame_id=frame)))
        state.publish(Float64MultiArray(data=[float(value) for value in sequence['proprio8'][index]]))
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
        time.sleep(3.0)  # warm-up: first queries, allocator growth
        chunks.clear()
        deltas.clear()
        transport.clear()
        time.sleep(args.seconds)
    finally:
        node_process.send_signal(signal.SIGINT)
        node_process.wait(timeout=60)
        executor.shutdown()
        rclpy.shutdown(context=context)

    camera_transport = float(np.median(transport))
    overhead = [received - (message.header.stamp.sec + message.header.stamp.nanosec * 1e-9)
                - message.observation_age - message.inference_latency + camera_transport
                for received, message in chunks]
    moving = [(received, message) for received, message in deltas if message.chunk_id]
    stamps = np.array([message.header.stamp.sec + message.header.stamp.nanosec * 1e-9 for _, message in moving])
    arrivals = np.array([received for received, _ in moving])
    period = 0.05
    stamp_jitter = np.abs(np.diff(stamps) - period)
    arrival_jitter = np.abs(np.diff(arrivals) - period)
    results = {
        'checkpoint': args.checkpoint.name, 'machine': machine_description(), 'seconds': args.seconds,
        'camera_rate_hz': CAMERA_RATE, 'control_rate_hz': 1 / period,
        'chunks': len(chunks), 'deltas': len(moving),
        'inference_latency_s': percentiles([message.inference_latency for _, message in chunks]),
        'observation_age_s': percentiles([message.observation_age for _, message in chunks]),
        'camera_transport_s': percentiles(transport),
        'overhead_s': percentiles(overhead),
        'tick_jitter_stamp_s': percentiles(stamp_jitter.tolist()),
        'tick_jitter_arrival_s': percentiles(arrival_jitter.tolist()),
    }
    path = write_results(f'node_{args.checkpoint.name}', results)
    print(f'{len(chunks)} chunks, {len(moving)} deltas in {args.seconds:.0f} s ({args.checkpoint.name})')
    print(f'inference (predict) median {results["inference_latency_s"]["median"] * 1e3:.1f} ms')
    print(f'observation age at inference start: median {results["observation_age_s"]["median"] * 1e3:.1f} ms; '
          f'camera transport median {camera_transport * 1e3:.2f} ms')
    print(f'node overhead: median {results["overhead_s"]["median"] * 1e3:.2f} ms, '
          f'p99 {results["overhead_s"]["p99"] * 1e3:.2f} ms')
    print(f'tick jitter (stamps): median {results["tick_jitter_stamp_s"]["median"] * 1e3:.2f} ms, '
          f'p99 {results["tick_jitter_stamp_s"]["p99"] * 1e3:.2f} ms; arrivals p99 '
          f'{results["tick_jitter_arrival_s"]["p99"] * 1e3:.2f} ms')
    print(f'results: {path}')


if __name__ == '__main__':
    main()
