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

And how fast a stop takes effect while inference runs (`--stop-calls N`, overlap mode with the next chunk asked for
after the first action, so a query is almost always in flight): N calls each of ~/reset and ~/enable(false), each
at a random moment of a chunk, from a kept client and from a new client per call (as `ros2 service call` makes):
the time from sending the request to the STOP (its stamp, the node's wall clock, and its arrival here), the service
answer's arrival, and how many MOTION commands the node stamped after the request was sent.

    python -m ctr_vla_ros.benchmarks.node --checkpoint checkpoints/tiny-demo --seconds 30 [--record] [--stop-calls 50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.control.chunk_execution import EXECUTION_MODES
from ctr_vla_ros.benchmarks.ctr import load_sequence
from ctr_vla_ros.benchmarks.measurement import machine_description, write_results
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


class InputFeed:
    """A client node in this process, spinning in the background, beside the policy node `policy`: publishes both cameras and the robot state at
    CAMERA_RATE (a new scene of the sequence every second) and the instruction, records the policy node's commands
    and chunks with their arrival times, and calls its services."""

    def __init__(self, sequence: dict[str, Any], policy: NodeProcess) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from ctr_vla_ros_msgs.msg import ActionChunk, EndEffectorDelta
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray, String

        from ctr_vla_ros.nodes.runtime import BackgroundNode

        self.sequence, self.policy = sequence, policy
        # Spinning from the start: what follows is created while it waits, which rclpy allows.
        self.background = BackgroundNode('bench_node_driver')
        self.node = node = self.background.node
        self.chunks: list[tuple[float, Any]] = []
        self.deltas: list[tuple[float, Any]] = []
        self.transport: list[float] = []
        node.create_subscription(ActionChunk, '/ctr_vla_policy/action_chunk',
                                 lambda message: self.chunks.append((time.time(), message)), 10)
        node.create_subscription(EndEffectorDelta, '/ctr_vla_policy/ee_delta',
                                 lambda message: self.deltas.append((time.time(), message)), 100)
        node.create_subscription(Image, '/camera/wrist/image_raw', lambda message: self.transport.append(
            time.time() - stamp_seconds(message.header)), qos_profile_sensor_data)
        self.cameras = [node.create_publisher(Image, topic, qos_profile_sensor_data)
                        for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw')]
        self.state = node.create_publisher(Float64MultiArray, '/robot_state', qos_profile_sensor_data)
        self.instruction = node.create_publisher(String, '/instruction', 10)
        self.frame_index = 0
        self.clients: dict[str, Any] = {}
        node.create_timer(1.0 / CAMERA_RATE, self.publish_inputs)

    def publish_inputs(self) -> None:
        from std_msgs.msg import Float64MultiArray, Header, String
        from ctr_vla_ros.nodes.image_conversion import rgb_to_image

        sequence = self.sequence
        index = (self.frame_index // int(CAMERA_RATE)) % len(sequence['agentview'])
        stamp = self.node.get_clock().now().to_msg()
        for publisher, key, frame in zip(self.cameras, ('agentview', 'wrist'), ('primary', 'wrist')):
            publisher.publish(rgb_to_image(sequence[key][index], Header(stamp=stamp, frame_id=frame)))
        self.state.publish(Float64MultiArray(data=[float(value) for value in sequence['proprio8'][index]]))
        self.instruction.publish(String(data=sequence['instruction']))
        self.frame_index += 1

    def call(self, service_type: type, name: str, request: Any, new_client: bool = False,
             timeout: float = 120.0) -> tuple[Any, float, float]:
        """The answer, the wall time the request was sent and the wall time the answer arrived. One client per
        service is kept; `new_client` makes a new one for this call, as `ros2 service call` does (its first request
        can wait for discovery to match it at the server)."""
        if new_client and name in self.clients:
            self.node.destroy_client(self.clients.pop(name))
        if name not in self.clients:
            self.clients[name] = self.node.create_client(service_type, name)
        client = self.clients[name]
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'{name} is not available; the policy node logged:\n{self.policy.log}')
        answered: list[float] = []
        sent = time.time()
        future = client.call_async(request)
        future.add_done_callback(lambda _: answered.append(time.time()))
        deadline = time.monotonic() + timeout
        while not answered:
            if time.monotonic() > deadline:
                raise RuntimeError(f'{name} did not answer')
            time.sleep(0.001)
        return future.result(), sent, answered[0]

    def enable(self, enabled: bool = True, new_client: bool = False) -> tuple[Any, float, float]:
        from std_srvs.srv import SetBool
        return self.call(SetBool, '/ctr_vla_policy/enable', SetBool.Request(data=enabled), new_client)

    def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}')
            time.sleep(0.002)

    def close(self) -> None:
        self.background.close()


def measure(checkpoint: Path, unnorm_key: str, sequence: dict[str, Any], mode: str, seconds: float,
            recording: Path | None = None) -> dict[str, Any]:
    """Run the policy node in one execution mode, feed it, and measure its commands and chunks; with `recording`
    (a directory), the recorder runs beside it throughout."""
    from ctr_vla_ros_msgs.msg import EndEffectorDelta

    recorder = None
    if recording is not None:
        recorder = NodeProcess('ctr_vla_recorder', overrides={'output_directory': str(recording),
                                                              'recording_name': mode})
    policy = NodeProcess('ctr_vla_policy', overrides={'checkpoint': str(checkpoint), 'unnorm_key': unnorm_key,
                                                      'proprio_source': 'state', 'execution_mode': mode,
                                                      'requery_remaining': 4})
    feed = InputFeed(sequence, policy)
    try:
        feed.enable()
        time.sleep(WARM_UP)
        feed.chunks.clear()
        feed.deltas.clear()
        feed.transport.clear()
        time.sleep(seconds)
        measured_chunks, measured_deltas, transport = list(feed.chunks), list(feed.deltas), list(feed.transport)
    finally:
        policy.interrupt()
        if recorder is not None:
            recorder.interrupt()
        feed.close()

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


def measure_stops(checkpoint: Path, unnorm_key: str, sequence: dict[str, Any], calls: int,
                  seed: int = 0) -> dict[str, Any]:
    """`calls` calls each of ~/reset and ~/enable(false) while the policy runs, each at a random moment of a chunk,
    from a kept client and from a new client per call; per call the time from sending the request to the STOP and
    to the answer, and the MOTION commands stamped after the request was sent (the node's stamps and this
    process's clock are the same wall clock)."""
    from ctr_vla_ros_msgs.msg import EndEffectorDelta
    from std_srvs.srv import Trigger

    random = np.random.default_rng(seed)
    policy = NodeProcess('ctr_vla_policy', overrides={'checkpoint': str(checkpoint), 'unnorm_key': unnorm_key,
                                                      'proprio_source': 'state', 'execution_mode': 'overlap',
                                                      'requery_remaining': 7})
    feed = InputFeed(sequence, policy)
    measured: dict[str, list[dict[str, float]]] = {}
    try:
        feed.enable()
        feed.wait_for(lambda: len(feed.chunks) >= 3, 120, 'the first chunks')
        for call in range(4 * calls):
            kind, client = ('reset', 'disable')[call % 2], ('kept client', 'new client')[call // 2 % 2]
            feed.enable()  # again after a disable; a no-op otherwise
            feed.wait_for(lambda: feed.deltas and feed.deltas[-1][1].kind == EndEffectorDelta.MOTION, 60, 'motion')
            time.sleep(random.uniform(0.0, 8 * CONTROL_PERIOD))  # anywhere in a chunk
            count = len(feed.deltas)
            if kind == 'reset':
                _, sent, answered = feed.call(Trigger, '/ctr_vla_policy/reset', Trigger.Request(),
                                              client == 'new client')
            else:
                _, sent, answered = feed.enable(False, client == 'new client')
            feed.wait_for(lambda: any(message.kind == EndEffectorDelta.STOP for _, message in feed.deltas[count:]),
                          10, f'the STOP of {kind}')
            after = feed.deltas[count:]
            arrived, stop = next(item for item in after if item[1].kind == EndEffectorDelta.STOP)
            measured.setdefault(f'{kind}, {client}', []).append({
                'to_stop_stamp_s': stamp_seconds(stop.header) - sent, 'to_stop_arrival_s': arrived - sent,
                'to_answer_s': answered - sent,
                'motions_after_request': sum(1 for _, message in after if message.kind == EndEffectorDelta.MOTION
                                             and stamp_seconds(message.header) > sent)})
        inference = [message.inference_latency for _, message in feed.chunks]
    finally:
        policy.interrupt()
        feed.close()
    summary: dict[str, Any] = {'calls': calls, 'control_period_s': CONTROL_PERIOD,
                               'inference_latency_s': percentiles(inference), 'calls_by_kind': {}}
    for kind, items in measured.items():
        summary['calls_by_kind'][kind] = {key: percentiles([item[key] for item in items]) for key in items[0]}
    return summary

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', type=Path, required=True)
    parser.add_argument('--unnorm-key', default='libero_spatial_no_noops', help="the checkpoint's statistics key")
    parser.add_argument('--sequence', type=Path, default=REPO / 'data' / 'libero' / 'libero_spatial_t0_i0.npz')
    parser.add_argument('--seconds', type=float, default=30.0, help='measured time per execution mode')
    parser.add_argument('--record', action='store_true', help='measure each mode again with the recorder running')
    parser.add_argument('--stop-calls', type=int, default=0, help='also measure N calls each of ~/reset and '
                        '~/enable(false) while inference runs (0: not measured)')
    args = parser.parse_args(argv)
    os.environ.update(network_safe_environment())
    interrupt_on_sigterm()

    sequence = load_sequence(args.sequence)
    results = {'checkpoint': args.checkpoint.name, 'machine': machine_description(), 'seconds': args.seconds,
               'camera_rate_hz': CAMERA_RATE, 'control_rate_hz': 1 / CONTROL_PERIOD,
               'modes': {}}
    with tempfile.TemporaryDirectory() as recordings:
        for mode in EXECUTION_MODES:
            results['modes'][mode] = measure(args.checkpoint, args.unnorm_key, sequence, mode, args.seconds)
            if args.record:
                results['modes'][f'{mode} + recorder'] = measure(args.checkpoint, args.unnorm_key, sequence, mode, args.seconds,
                                                                 Path(recordings) / mode)
    if args.stop_calls:
        results['stop_latency'] = measure_stops(args.checkpoint, args.unnorm_key, sequence, args.stop_calls)
    path = write_results(f'node_{args.checkpoint.name}', results)
    for mode, item in results['modes'].items():
        print(f'{mode}: {item["commands"]} commands ({item["command_kinds"]}) and {item["chunks"]} chunks in '
              f'{args.seconds:.0f} s: {item["command_rate_hz"]:.2f} Hz (control rate {1 / CONTROL_PERIOD:.0f} Hz)')
        print(f'  predict median {item["inference_latency_s"]["median"] * 1e3:.1f} ms; node overhead median '
              f'{item["overhead_s"]["median"] * 1e3:.2f} ms, p99 {item["overhead_s"]["p99"] * 1e3:.2f} ms')
        print(f'  tick jitter (stamps) median {item["tick_jitter_stamp_s"]["median"] * 1e3:.2f} ms, p99 '
              f'{item["tick_jitter_stamp_s"]["p99"] * 1e3:.2f} ms; arrivals p99 '
              f'{item["tick_jitter_arrival_s"]["p99"] * 1e3:.2f} ms')
    if args.stop_calls:
        stops = results['stop_latency']
        print(f'stops while inference runs (predict median {stops["inference_latency_s"]["median"] * 1e3:.0f} ms), '
              f'{args.stop_calls} calls each:')
        for kind, item in stops['calls_by_kind'].items():
            print(f'  {kind}: request -> STOP stamp median {item["to_stop_stamp_s"]["median"] * 1e3:.1f} ms, worst '
                  f'{item["to_stop_stamp_s"]["max"] * 1e3:.1f} ms; -> STOP here median '
                  f'{item["to_stop_arrival_s"]["median"] * 1e3:.1f} ms, worst '
                  f'{item["to_stop_arrival_s"]["max"] * 1e3:.1f} ms; MOTIONs after the request: worst '
                  f'{item["motions_after_request"]["max"]:.0f}')
    print(f'results: {path}')


if __name__ == '__main__':
    main()
