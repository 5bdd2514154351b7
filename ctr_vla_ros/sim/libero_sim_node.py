"""ctr_vla_libero_sim: a LIBERO task standing in for the robot, in lockstep simulation time.

Publishes:  /clock (the simulation time: run the other nodes with use_sim_time), <camera_topics> (upright rgb8
            images), <pose_topic> (PoseStamped, world frame), <gripper_topic> (JointState of the two fingers),
            <instruction_topic> (String, transient-local), ~/status (SimStatus).
Subscribes: <delta_topic> (EndEffectorDelta).
Services:   ~/reset (std_srvs/Trigger): a new episode from the next initial state.

Each environment step executes one EndEffectorDelta in LIBERO's action convention (20 Hz of simulation time). After
publishing an observation the simulation waits up to `command_wait` wall seconds for the command of that step; a
MOTION moves the arm, a HOLD or STOP (the policy computes its next chunk, or is stopped) or no command at all (the
policy is disabled or gone) holds it still for one step with the gripper as it was. Simulation time therefore
advances only as fast as the policy and the renderer allow, and a slow CPU slows the world instead of the robot.
"""

from __future__ import annotations

import threading
import time

from ctr_vla_ros_msgs.msg import EndEffectorDelta, SimStatus
from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from ctr_vla_ros.nodes.image_conversion import rgb_to_image
from ctr_vla_ros.nodes.parameters import CAMERA_TOPIC_PARAMETERS, ROBOT_TOPIC_PARAMETERS, ParameterSpec, declare
from ctr_vla_ros.nodes.runtime import run
from ctr_vla_ros.sim.libero_env import CONTROL_PERIOD, LiberoSimulation, Observation, command_action

PARAMETERS = CAMERA_TOPIC_PARAMETERS + ROBOT_TOPIC_PARAMETERS + [
    ParameterSpec('suite', 'libero_spatial', 'LIBERO suite: libero_spatial, libero_object, libero_goal, libero_10'),
    ParameterSpec('task_id', 0, 'task index in the suite', minimum=0),
    ParameterSpec('init_state', 0, 'initial-state index of the first episode', minimum=0),
    ParameterSpec('resolution', 256, 'camera image size (pixels, square)', minimum=64, maximum=1024),
    ParameterSpec('max_steps', 220, "episode step budget (LIBERO-spatial's evaluation budget)", minimum=1),
    ParameterSpec('settle_steps', 10, 'steps with a still arm after a reset, for objects to settle', minimum=0),
    ParameterSpec('delta_topic', '/ctr_vla_policy/ee_delta', 'EndEffectorDelta commands'),
    ParameterSpec('command_wait', 1.0, 'wall seconds to wait for the command of a step before holding still',
                  minimum=0.0),
    ParameterSpec('world_frame', 'world', 'frame of the published pose'),
    ParameterSpec('camera_frames', ['agentview_camera', 'wrist_camera'], 'frame ids of the two cameras', length=2),
    ParameterSpec('seed', 0, 'episodes are seeded with seed + initial state (fixture positions depend on it alone)',
                  minimum=0),
]
START_TIME = 1.0  # s: simulation time of the first observation (0 would read as "no time yet")


class LiberoSimNode(Node):
    def __init__(self) -> None:
        super().__init__('ctr_vla_libero_sim')
        self.settings = settings = declare(self, PARAMETERS)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.clock_publisher = self.create_publisher(Clock, '/clock', 10)
        self.camera_publishers = [self.create_publisher(Image, topic, 10) for topic in settings['camera_topics']]
        self.pose_publisher = self.create_publisher(PoseStamped, settings['pose_topic'], 10)
        self.gripper_publisher = self.create_publisher(JointState, settings['gripper_topic'], 10)
        self.instruction_publisher = self.create_publisher(String, settings['instruction_topic'], latched)
        self.status_publisher = self.create_publisher(SimStatus, '~/status', 10)
        self.create_subscription(EndEffectorDelta, settings['delta_topic'], self.on_delta, 10)
        self.create_service(Trigger, '~/reset', self.on_reset)

        self.lock = threading.Condition()
        self.command: EndEffectorDelta | None = None
        self.reset_requested = False
        self.stopping = False
        self.time = START_TIME
        self.thread = threading.Thread(target=self.loop, name='simulation', daemon=True)
        self.thread.start()

    def on_delta(self, message: EndEffectorDelta) -> None:
        with self.lock:
            self.command = message
            self.lock.notify()

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            self.reset_requested = True
            self.lock.notify()
        response.success = True
        response.message = 'a new episode starts at the next step'
        return response

    def loop(self) -> None:
        """The simulation thread: it creates, steps and closes the environment (MuJoCo's renderer must stay in
        one thread)."""
        settings = self.settings
        self.get_logger().info(f'creating LIBERO {settings["suite"]} task {settings["task_id"]} '
                               '(renders offscreen; this takes a while)')
        try:
            self.sim = LiberoSimulation(settings['suite'], settings['task_id'], settings['init_state'],
                                        settings['resolution'], settings['settle_steps'], settings['seed'])
        except (ValueError, ImportError, RuntimeError) as error:
            self.get_logger().fatal(f'cannot create the simulation: {error}')
            return
        try:
            self.run_episodes()
        finally:
            self.sim.close()

    def run_episodes(self) -> None:
        observation = self.start_episode(self.settings['init_state'])
        while True:
            self.publish(observation)
            deadline = time.monotonic() + self.settings['command_wait']
            with self.lock:
                while not self.stopping and not self.reset_requested and not self._command_for_now() \
                        and time.monotonic() < deadline:
                    self.lock.wait(timeout=max(0.0, deadline - time.monotonic()))
                if self.stopping:
                    return
                command = self.command if self._command_for_now() else None
                reset, self.reset_requested = self.reset_requested, False
            if reset:
                # The new episode's first observation gets a time of its own: no command stamped for the last
                # episode can count as the command for the new one.
                self.time += CONTROL_PERIOD
                observation = self.start_episode(self.sim.init_state + 1)
                continue
            if self.done:
                continue  # the episode is over: keep publishing the final observation until a reset
            if command is None or command.kind != EndEffectorDelta.MOTION:
                action, self.gripper = command_action(False, np.zeros(3), np.zeros(3), 0.0, self.gripper)
                self.hold_steps += 1
            else:
                action, self.gripper = command_action(True, np.array(command.translation), np.array(command.rotation),
                                                      command.gripper, self.gripper)
                self.commanded_steps += 1
            observation = self.sim.step(action)
            self.step += 1
            self.time += CONTROL_PERIOD
            self.done = observation.success or self.step >= self.settings['max_steps']

    def _command_for_now(self) -> bool:
        """Caller holds the lock: a command stamped at or after the current simulation time has arrived."""
        if self.command is None:
            return False
        stamp = Time.from_msg(self.command.header.stamp).nanoseconds * 1e-9
        return stamp >= self.time - 1e-6

    def start_episode(self, init_state: int) -> Observation:
        # LIBERO places the fixtures from numpy's global generator at every reset: seeding each episode makes it
        # depend on its initial state alone, not on the episodes before it (the expert's demonstrations are seeded
        # the same way).
        observation = self.sim.reset(init_state, seed=self.settings['seed'] + init_state)
        self.step = self.commanded_steps = self.hold_steps = 0
        self.gripper = -1.0
        self.done = False
        self.instruction_publisher.publish(String(data=self.sim.instruction))
        self.get_logger().info(f'episode: {self.sim.suite_name} task {self.sim.task_id} init state '
                               f'{self.sim.init_state}: "{self.sim.instruction}"')
        return observation

    def publish(self, observation: Observation) -> None:
        stamp = Time(nanoseconds=int(round(self.time * 1e9))).to_msg()
        for publisher, image, frame in zip(self.camera_publishers, (observation.primary, observation.wrist),
                                           self.settings['camera_frames']):
            publisher.publish(rgb_to_image(image, Header(stamp=stamp, frame_id=frame)))
        pose = PoseStamped(header=Header(stamp=stamp, frame_id=self.settings['world_frame']))
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = observation.eef_position.tolist()
        orientation = pose.pose.orientation
        orientation.x, orientation.y, orientation.z, orientation.w = observation.eef_quaternion_xyzw.tolist()
        self.pose_publisher.publish(pose)
        self.gripper_publisher.publish(JointState(header=Header(stamp=stamp),
                                                  name=list(self.settings['gripper_joint_names']),
                                                  position=observation.gripper_positions.tolist()))
        self.status_publisher.publish(SimStatus(
            header=Header(stamp=stamp), suite=self.sim.suite_name, task_id=self.sim.task_id,
            init_state=self.sim.init_state, instruction=self.sim.instruction, step=self.step,
            max_steps=self.settings['max_steps'], commanded_steps=self.commanded_steps,
            hold_steps=self.hold_steps, success=observation.success, done=self.done))
        # The clock last: when the other nodes see this time, its observation is already out.
        self.clock_publisher.publish(Clock(clock=stamp))

    def on_shutdown(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=30)
        self.status_publisher.wait_for_all_acked(Duration(seconds=1.0))


def main(args: list[str] | None = None) -> None:
    run(LiberoSimNode, args)


if __name__ == '__main__':
    main()
