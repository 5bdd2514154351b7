"""ctr_vla_kinova_adapter: EndEffectorDelta -> Kinova ros2_kortex.

Publishes geometry_msgs/Twist on <twist_topic> (the twist controller, tool frame: the base-frame delta is rotated
by the current end-effector orientation from <pose_topic>), velocity = delta / control period within the limits;
zero velocity when deltas stop and on shutdown (the controller has no timeout). The Robotiq gripper goes through the
control_msgs/GripperCommand action <gripper_action> (0.0 open .. 0.8 closed); control_msgs comes with a ROS distro
(not from pip): without it the gripper is not commanded and the node says so.
"""

from __future__ import annotations

from geometry_msgs.msg import Twist, Vector3
import numpy as np

from ctr_vla_ros.adapters.adapter_node import COMMON_PARAMETERS, AdapterNode
from ctr_vla_ros.adapters.mapping import kinova_gripper_position
from ctr_vla_ros.nodes.parameters import POSE_TOPIC_PARAMETER, ParameterSpec
from ctr_vla_ros.nodes.runtime import run

PARAMETERS = COMMON_PARAMETERS + [POSE_TOPIC_PARAMETER] + [
    ParameterSpec('twist_topic', '/twist_controller/commands', 'ros2_kortex twist controller command topic'),
    ParameterSpec('gripper_action', '/robotiq_gripper_controller/gripper_cmd', 'GripperCommand action'),
    ParameterSpec('gripper_max_effort', 100.0, 'GripperCommand max_effort', minimum=0.0),
]


class KinovaAdapter(AdapterNode):
    command_frame = 'tool'

    def __init__(self) -> None:
        super().__init__('ctr_vla_kinova_adapter', PARAMETERS)
        self.velocity_publisher = self.create_publisher(Twist, self.settings['twist_topic'], 10)
        self.gripper_client = None
        try:
            from control_msgs.action import GripperCommand
            from rclpy.action import ActionClient
            self.gripper_goal_type = GripperCommand.Goal
            self.gripper_client = ActionClient(self, GripperCommand, self.settings['gripper_action'])
        except ImportError:
            self.get_logger().warning('control_msgs is not installed: the gripper will not be commanded '
                                      '(install ros-<distro>-control-msgs)')
        self.get_logger().info(f'twists on {self.settings["twist_topic"]} (tool frame)')

    def send_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        self.velocity_publisher.publish(Twist(linear=Vector3(x=float(linear[0]), y=float(linear[1]),
                                                             z=float(linear[2])),
                                              angular=Vector3(x=float(angular[0]), y=float(angular[1]),
                                                              z=float(angular[2]))))

    def send_gripper(self, command: float) -> None:
        if self.gripper_client is None:
            return
        goal = self.gripper_goal_type()
        goal.command.position = kinova_gripper_position(command)
        goal.command.max_effort = self.settings['gripper_max_effort']
        self.gripper_client.send_goal_async(goal)


def main(args: list[str] | None = None) -> None:
    run(KinovaAdapter, args)


if __name__ == '__main__':
    main()
