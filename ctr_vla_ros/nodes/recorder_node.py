"""ctr_vla_recorder: records the policy node's inputs and outputs to MCAP files (ROS 2 CDR: what rosbag2 writes).

Subscribes:  <camera_topics>, <instruction_topic>, <pose_topic>, <gripper_topic>, the policy node's outputs
             (/<policy_node>/ee_delta, action_chunk, ctr_stats, predicted_path, reuse_mask/<camera name>) and
             <extra_topics>: each topic as soon as a publisher appears, with the reliability and durability its
             publishers offer, as serialised bytes (nothing is deserialised).
Writes:      <output_directory>/<recording_name>_<index>.mcap, a new file at max_file_size_mb or
             max_file_duration, the oldest deleted beyond max_files; each file carries the policy node's parameters
             as metadata `ctr_vla_policy`, so `ctr-vla-replay` finds the checkpoint and the CTR settings.

Runs beside the policy in its own process: its work never delays the control tick's thread.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
from typing import Any

from rcl_interfaces.srv import GetParameters, ListParameters
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo

from ctr_vla_ros.nodes.parameters import CAMERA_TOPIC_PARAMETERS, ROBOT_TOPIC_PARAMETERS, ParameterSpec, declare
from ctr_vla_ros.nodes.runtime import run
from ctr_vla_ros.recording.mcap_writer import COMPRESSIONS, RecordingLimits, RecordingWriter
from ctr_vla_ros.recording.replay import POLICY_METADATA, RECORDING_METADATA

PARAMETERS = CAMERA_TOPIC_PARAMETERS + ROBOT_TOPIC_PARAMETERS + [
    ParameterSpec('output_directory', '~/ctr_vla_recordings', 'where the MCAP files go'),
    ParameterSpec('recording_name', '', 'file name prefix; empty: ctr_vla_<date>_<time>'),
    ParameterSpec('policy_node', 'ctr_vla_policy', 'the policy node whose outputs and parameters are recorded'),
    ParameterSpec('extra_topics', ['/robot_state', '/diagnostics'], 'recorded besides the policy inputs and outputs'),
    ParameterSpec('max_file_size_mb', 1024, 'start a new file at this size (MiB); 0: no limit', minimum=0),
    ParameterSpec('max_file_duration', 0.0, 'start a new file after this many seconds; 0: no limit', minimum=0.0),
    ParameterSpec('max_files', 0, 'keep at most this many files, deleting the oldest; 0: keep all', minimum=0),
    ParameterSpec('compression', 'zstd', 'MCAP chunk compression', choices=tuple(COMPRESSIONS)),
    ParameterSpec('discovery_period', 0.5, 'how often (s) the graph is checked for new publishers', minimum=0.05),
]
QUEUE_DEPTH = 100
POLICY_OUTPUTS = ('ee_delta', 'action_chunk', 'ctr_stats', 'predicted_path')


def message_class(type_name: str) -> Any:
    package, _, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__('ctr_vla_recorder')
        self.settings = settings = declare(self, PARAMETERS)
        policy = settings['policy_node'].strip('/')
        self.wanted = (list(settings['camera_topics'])
                       + [settings[name] for name in ('instruction_topic', 'pose_topic', 'gripper_topic')]
                       + [f'/{policy}/{output}' for output in POLICY_OUTPUTS]
                       + [f'/{policy}/reuse_mask/{camera}' for camera in settings['camera_names']]
                       + [topic for topic in settings['extra_topics'] if topic])
        name = settings['recording_name'] or datetime.datetime.now().strftime('ctr_vla_%Y%m%d_%H%M%S')
        self.writer = RecordingWriter(
            settings['output_directory'], name,
            RecordingLimits(max_bytes=settings['max_file_size_mb'] << 20,
                            max_duration=settings['max_file_duration'], max_files=settings['max_files']),
            settings['compression'])
        self.writer.set_metadata(RECORDING_METADATA, {
            'started': json.dumps(datetime.datetime.now().astimezone().isoformat()),
            'policy_node': json.dumps(policy), 'camera_topics': json.dumps(list(settings['camera_topics'])),
            'instruction_topic': json.dumps(settings['instruction_topic'])})
        self.failed = False
        self.list_client = self.create_client(ListParameters, f'/{policy}/list_parameters')
        self.get_client = self.create_client(GetParameters, f'/{policy}/get_parameters')
        self.parameters_pending = False
        self.create_timer(settings['discovery_period'], self.discover)
        self.get_logger().info(f'recording to {self.writer.directory / name}_<index>.mcap: {self.wanted}')

    def discover(self) -> None:
        """Subscribe to every wanted topic that has a publisher now; fetch the policy's parameters once."""
        types = dict(self.get_topic_names_and_types())
        for topic in list(self.wanted):
            if topic in self.writer.types or len(types.get(topic, [])) != 1:
                continue
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            type_name = types[topic][0]
            try:
                self.writer.add_topic(topic, type_name)
            except FileNotFoundError as error:
                self.get_logger().error(f'{topic} not recorded: {error}')
                self.wanted.remove(topic)
                continue
            profiles = [publisher.qos_profile for publisher in publishers]
            reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in profiles)
            latched = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
            qos = QoSProfile(depth=QUEUE_DEPTH,
                             reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            self.create_subscription(message_class(type_name), topic, functools.partial(self.on_message, topic),
                                     qos, raw=True)
            self.get_logger().info(f'recording {topic} ({type_name})')
        if POLICY_METADATA not in self.writer.metadata and not self.parameters_pending \
                and self.list_client.service_is_ready():
            self.parameters_pending = True
            self.list_client.call_async(ListParameters.Request()).add_done_callback(self.on_parameter_names)

    def on_parameter_names(self, future: Any) -> None:
        names = list(future.result().result.names)
        request = GetParameters.Request(names=names)
        self.get_client.call_async(request).add_done_callback(
            lambda done: self.on_parameter_values(names, done))

    def on_parameter_values(self, names: list[str], future: Any) -> None:
        values = [parameter_value_to_python(value) for value in future.result().values]
        values = [list(value) if not isinstance(value, (str, bool, int, float, type(None))) else value
                  for value in values]  # arrays arrive as array.array
        self.writer.set_metadata(POLICY_METADATA, {name: json.dumps(value) for name, value in zip(names, values)})
        self.get_logger().info(f'recorded the parameters of {self.settings["policy_node"]}')

    def on_message(self, topic: str, data: bytes, info: MessageInfo) -> None:
        if self.failed:
            return
        try:
            self.writer.write(topic, data, info['received_timestamp'], info['source_timestamp'])
        except OSError as error:
            self.failed = True
            self.get_logger().error(f'recording stopped: {error}')

    def on_shutdown(self) -> None:
        self.writer.close()
        counts = ', '.join(f'{topic} {count}' for topic, count in sorted(self.writer.message_counts.items()))
        self.get_logger().info(f'recorded {[str(path) for path in self.writer.files if path.exists()]}: {counts}')


def main(args: list[str] | None = None) -> None:
    run(RecorderNode, args)


if __name__ == '__main__':
    main()
