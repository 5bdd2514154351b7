"""The common shell of the robot adapters: EndEffectorDelta in, a velocity command out at every delta, zero
velocity when commands stop arriving and when the node stops (the drivers' velocity controllers have no timeout).

Only a MOTION command moves the arm or the gripper. HOLD and STOP become zero velocity and never a gripper goal:
a stop must leave a held object held."""

from __future__ import annotations

import abc
import threading
import time

from ctr_vla_ros_msgs.msg import EndEffectorDelta
from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from ctr_vla_ros.adapters.mapping import GripperChangeFilter, VelocityLimits, adapter_command, quaternion_to_matrix
from ctr_vla_ros.nodes.parameters import ParameterSpec, declare

COMMON_PARAMETERS = [
    ParameterSpec('delta_topic', '/ctr_vla_policy/ee_delta', 'EndEffectorDelta commands from the policy node'),
    ParameterSpec('max_linear_speed', 0.1, 'linear speed limit (m/s)', minimum=0.0),
    ParameterSpec('max_angular_speed', 0.5, 'angular speed limit (rad/s)', minimum=0.0),
    ParameterSpec('command_timeout', 0.2, 'no delta for this long (s): send zero velocity', minimum=0.01),
    ParameterSpec('gripper_threshold', 0.2, 'send a new gripper goal when the command changes by more than this',
                  minimum=0.0),
]


class AdapterNode(Node, abc.ABC):
    """Subclasses set `command_frame` ('base' or 'tool'), declare COMMON_PARAMETERS plus their own, and implement
    `send_velocity` and `send_gripper`."""

    command_frame = 'base'

    def __init__(self, name: str, parameters: list[ParameterSpec]) -> None:
        super().__init__(name)
        self.settings = declare(self, parameters)
        self.limits = VelocityLimits(self.settings['max_linear_speed'], self.settings['max_angular_speed'])
        self.gripper_filter = GripperChangeFilter(self.settings['gripper_threshold'])
        self.lock = threading.Lock()
        self.last_command_time = 0.0
        self.sent_zero = True
        self.tool_rotation: np.ndarray | None = None
        if self.command_frame == 'tool':
            self.create_subscription(PoseStamped, self.settings['pose_topic'], self.on_pose, qos_profile_sensor_data)
        self.create_subscription(EndEffectorDelta, self.settings['delta_topic'], self.on_delta, 10)
        self.create_timer(self.settings['command_timeout'] / 2, self.on_watchdog)

    def on_pose(self, message: PoseStamped) -> None:
        orientation = message.pose.orientation
        with self.lock:
            self.tool_rotation = quaternion_to_matrix(
                np.array([orientation.x, orientation.y, orientation.z, orientation.w]))

    def on_delta(self, message: EndEffectorDelta) -> None:
        motion = message.kind == EndEffectorDelta.MOTION
        with self.lock:
            rotation = self.tool_rotation
        if motion and self.command_frame == 'tool' and rotation is None:
            self.get_logger().error('no end-effector pose yet: cannot express the command in the tool frame',
                                    throttle_duration_sec=1.0)
            self.stop()
            return
        try:
            command = adapter_command(motion, np.array(message.translation), np.array(message.rotation),
                                      message.gripper, message.control_period, self.limits, self.gripper_filter,
                                      rotation if self.command_frame == 'tool' else None)
        except ValueError as error:
            self.get_logger().error(f'delta refused, zero velocity: {error}', throttle_duration_sec=1.0)
            self.stop()
            return
        self.send_velocity(command.linear, command.angular)
        with self.lock:
            self.last_command_time = time.monotonic()
            self.sent_zero = not (np.any(command.linear) or np.any(command.angular))
        if command.gripper is not None:
            self.get_logger().info(f'gripper command {command.gripper:+.2f}')
            self.send_gripper(command.gripper)

    def on_watchdog(self) -> None:
        with self.lock:
            stale = time.monotonic() - self.last_command_time > self.settings['command_timeout']
            needs_zero = stale and not self.sent_zero
        if needs_zero:
            self.get_logger().warning('commands stopped arriving: zero velocity', throttle_duration_sec=5.0)
            self.stop()

    def stop(self) -> None:
        self.send_velocity(np.zeros(3), np.zeros(3))
        with self.lock:
            self.sent_zero = True

    def on_shutdown(self) -> None:
        self.stop()
        # Let the zero velocity reach the driver before the publisher (created by the subclass) is destroyed.
        self.velocity_publisher.wait_for_all_acked(Duration(seconds=1.0))

    @abc.abstractmethod
    def send_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        """Publish one velocity command to the driver."""

    @abc.abstractmethod
    def send_gripper(self, command: float) -> None:
        """Send a gripper goal for a command in [-1 open, +1 close]."""
