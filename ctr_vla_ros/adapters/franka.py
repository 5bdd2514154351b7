"""ctr_vla_franka_adapter: EndEffectorDelta -> Franka through MoveIt Servo.

Publishes geometry_msgs/TwistStamped on <twist_topic> (MoveIt Servo's delta twist command, base frame
<base_frame>), velocity = delta / control period within the limits; zero velocity when deltas stop and on shutdown.
The Franka Hand goes through franka_msgs' Grasp (close) and Move (open) actions; franka_msgs comes with the
franka_ros2 workspace (not from pip): without it the gripper is not commanded and the node says so.
"""

from __future__ import annotations

from geometry_msgs.msg import TwistStamped, Vector3
import numpy as np

from ctr_vla_ros.adapters.adapter_node import COMMON_PARAMETERS, AdapterNode
from ctr_vla_ros.adapters.mapping import franka_gripper_goal
from ctr_vla_ros.nodes.parameters import ParameterSpec
from ctr_vla_ros.nodes.runtime import run

PARAMETERS = COMMON_PARAMETERS + [
    ParameterSpec('twist_topic', '/servo_node/delta_twist_cmds', 'MoveIt Servo twist command topic'),
    ParameterSpec('base_frame', 'fr3_link0', 'frame of the twist commands (the robot base)'),
    ParameterSpec('grasp_action', '/franka_gripper/grasp', 'franka_msgs/action/Grasp'),
    ParameterSpec('move_action', '/franka_gripper/move', 'franka_msgs/action/Move'),
    ParameterSpec('grasp_force', 20.0, 'grasp force (N)', minimum=0.0),
    ParameterSpec('gripper_speed', 0.1, 'finger speed (m/s)', minimum=0.0),
]
# Accept any final width within this much of the commanded one (grasping an object of unknown size).
FRANKA_GRASP_TOLERANCE = 0.08


class FrankaAdapter(AdapterNode):
    command_frame = 'base'

    def __init__(self) -> None:
        super().__init__('ctr_vla_franka_adapter', PARAMETERS)
        self.velocity_publisher = self.create_publisher(TwistStamped, self.settings['twist_topic'], 10)
        self.grasp_client = self.move_client = None
        try:
            from franka_msgs.action import Grasp, Move
            from rclpy.action import ActionClient
            self.grasp_type, self.move_type = Grasp, Move
            self.grasp_client = ActionClient(self, Grasp, self.settings['grasp_action'])
            self.move_client = ActionClient(self, Move, self.settings['move_action'])
        except ImportError:
            self.get_logger().warning('franka_msgs is not installed: the gripper will not be commanded '
                                      '(build franka_ros2)')
        self.get_logger().info(f'twists on {self.settings["twist_topic"]} ({self.settings["base_frame"]})')

    def send_velocity(self, linear: np.ndarray, angular: np.ndarray) -> None:
        message = TwistStamped()
        message.header.stamp = self.get_clock().now().to_msg()
        message.header.frame_id = self.settings['base_frame']
        message.twist.linear = Vector3(x=float(linear[0]), y=float(linear[1]), z=float(linear[2]))
        message.twist.angular = Vector3(x=float(angular[0]), y=float(angular[1]), z=float(angular[2]))
        self.velocity_publisher.publish(message)

    def send_gripper(self, command: float) -> None:
        if self.grasp_client is None:
            return
        target = franka_gripper_goal(command)
        if target.grasp:
            goal = self.grasp_type.Goal(width=target.width, speed=self.settings['gripper_speed'],
                                        force=self.settings['grasp_force'])
            goal.epsilon.inner = goal.epsilon.outer = FRANKA_GRASP_TOLERANCE
            self.grasp_client.send_goal_async(goal)
        else:
            self.move_client.send_goal_async(self.move_type.Goal(width=target.width,
                                                                 speed=self.settings['gripper_speed']))


def main(args: list[str] | None = None) -> None:
    run(FrankaAdapter, args)


if __name__ == '__main__':
    main()
