"""ctr_vla_policy: cameras + instruction + robot state in, end-effector deltas at the control rate out.

Subscribes:  <camera_topics> (sensor_msgs/Image, sensor-data QoS), <instruction_topic> (std_msgs/String, from a
             latched or a plain publisher), <pose_topic> + <gripper_topic> (PoseStamped + JointState) or
             <state_topic> (Float64MultiArray).
Publishes:   ~/ee_delta (EndEffectorDelta: MOTION, HOLD or STOP on every control tick while enabled),
             ~/action_chunk, ~/reuse_mask/<camera name> (ReuseMask), ~/ctr_stats (CtrStats), ~/predicted_path
             (nav_msgs/Path: where the chunk will take the end effector, in base_frame), /diagnostics.
Services:    ~/enable (std_srvs/SetBool), ~/reset (std_srvs/Trigger).

A thin shell: messages are converted and handed to the supervisor (control/supervisor.py), which decides whether
the arm moves; the inference thread runs the queries the supervisor asks for through the policy (policy.py); the
outgoing messages are built in nodes/messages.py.
"""

from __future__ import annotations

import sys
import threading

from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, EndEffectorDelta, ReuseMask
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
import numpy as np
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Header, String
from std_srvs.srv import SetBool, Trigger

from ctr_vla_ros.control.camera_image import ImageError, image_to_rgb
from ctr_vla_ros.control.chunk_execution import EXECUTION_MODES, ActionConvention, DeltaLimits
from ctr_vla_ros.control.query_execution import run_query
from ctr_vla_ros.control.robot_state import libero_state, state_refusal
from ctr_vla_ros.control.supervisor import (Command, InstructionUpdate, Mode, Query, Supervisor,
                                            SupervisorSettings)
from ctr_vla_ros.control.trajectory import predicted_path
from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.normalization import GRIPPER_CONVENTIONS
from ctr_vla_ros.model.random_checkpoint import demo_checkpoint
from ctr_vla_ros.nodes import messages
from ctr_vla_ros.nodes.parameters import SHARED_PARAMETERS, ParameterSpec, ctr_parameter_specs, declare
from ctr_vla_ros.nodes.runtime import run
from ctr_vla_ros.policy import Prediction, VlaPolicy

GIL_SWITCH_INTERVAL = 0.0005  # s
SHUTDOWN_ACK_TIMEOUT = 0.2  # s: for the final STOP to be acknowledged (often no ack comes before the next heartbeat)

PARAMETERS = [
    ParameterSpec('checkpoint', '', 'OpenVLA-OFT checkpoint directory; empty: a generated tiny RANDOM-WEIGHT '
                  'checkpoint in ~/.cache/ctr_vla_ros'),
    ParameterSpec('arch_override', '', 'architecture override file for non-standard checkpoints (empty: none)'),
    ParameterSpec('unnorm_key', 'libero_spatial_no_noops', 'dataset statistics key for (un)normalisation'),
    ParameterSpec('device', 'cpu', 'torch device: cpu, cuda, cuda:1, ...'),
    ParameterSpec('dtype', 'fp32', 'model dtype', choices=('fp32', 'bf16')),
    ParameterSpec('proprio_source', 'pose', 'pose: PoseStamped + gripper JointState; state: Float64MultiArray',
                  choices=('pose', 'state')),
    ParameterSpec('state_topic', '/robot_state', 'raw proprio state (std_msgs/Float64MultiArray)'),
    ParameterSpec('base_frame', 'base_link', 'frame of the published deltas'),
    ParameterSpec('control_rate', 20.0, 'control ticks per second (Hz)', minimum=1.0, maximum=1000.0),
    ParameterSpec('execution_mode', 'open_loop', 'open_loop: whole chunk then re-query; overlap: re-query early',
                  choices=EXECUTION_MODES),
    ParameterSpec('requery_remaining', 2, 'overlap mode: ask for the next chunk when this many actions remain',
                  minimum=0, maximum=1000),
    ParameterSpec('dry_run', False, 'publish chunks, masks and stats but never a motion command'),
    ParameterSpec('max_translation_step', [0.05, 0.05, 0.05], 'clamp per control step (m), x y z', minimum=0.0,
                  length=3),
    ParameterSpec('max_rotation_step', [0.5, 0.5, 0.5], 'clamp per control step (rad), axis-angle x y z',
                  minimum=0.0, length=3),
    ParameterSpec('translation_scale', 0.05, 'metres per dataset action unit (LIBERO: 0.05)', minimum=0.0),
    ParameterSpec('rotation_scale', 0.5, 'radians per dataset action unit (LIBERO: 0.5)', minimum=0.0),
    ParameterSpec('gripper_convention', 'open_is_one', "the dataset's gripper action",
                  choices=tuple(GRIPPER_CONVENTIONS)),
    ParameterSpec('camera_timeout', 0.5, 'a camera silent for longer (s) stops motion', minimum=0.0),
    ParameterSpec('pair_tolerance', 0.05, 'largest stamp difference (s) between paired camera frames',
                  minimum=0.0),
    ParameterSpec('proprio_timeout', 0.5, 'robot state older than this (s) stops motion', minimum=0.0),
    ParameterSpec('proprio_range_margin', 0.5, "refuse states beyond the dataset's q01..q99 widened by this "
                  'fraction of the span on each side', minimum=0.0),
    ParameterSpec('diagnostics_rate', 1.0, '/diagnostics publications per second (Hz)', minimum=0.1),
] + SHARED_PARAMETERS + ctr_parameter_specs()


def stamp_seconds(header: Header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__('ctr_vla_policy')
        self.settings = settings = declare(self, PARAMETERS)
        self.policy = self._load_policy()
        self.convention = ActionConvention(settings['translation_scale'], settings['rotation_scale'],
                                           settings['gripper_convention'])
        self.camera_names = settings['camera_names']
        self.control_period = 1.0 / settings['control_rate']
        self.limits = DeltaLimits(tuple(settings['max_translation_step']) + tuple(settings['max_rotation_step'])
                                  + (1.0,))
        self.supervisor = Supervisor(SupervisorSettings(
            camera_names=tuple(self.camera_names), camera_timeout=settings['camera_timeout'],
            pair_tolerance=settings['pair_tolerance'], state_timeout=settings['proprio_timeout'],
            execution_mode=settings['execution_mode'], requery_remaining=settings['requery_remaining'],
            limits=self.limits, dry_run=settings['dry_run']))
        self.pose: tuple[np.ndarray, np.ndarray] | None = None  # position (m), quaternion x y z w
        self.gripper_positions: np.ndarray | None = None
        # (prediction, latency) of the newest executed query, for /diagnostics; replaced whole, so no lock.
        self.last_prediction: tuple[Prediction, float] | None = None

        self.delta_publisher = self.create_publisher(EndEffectorDelta, '~/ee_delta', 10)
        self.chunk_publisher = self.create_publisher(ActionChunk, '~/action_chunk', 10)
        self.mask_publishers = [self.create_publisher(ReuseMask, f'~/reuse_mask/{name}', 10)
                                for name in self.camera_names]
        self.stats_publisher = self.create_publisher(CtrStats, '~/ctr_stats', 10)
        self.path_publisher = self.create_publisher(Path, '~/predicted_path', 10)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        for camera, topic in enumerate(settings['camera_topics']):
            self.create_subscription(Image, topic, lambda message, camera=camera: self.on_image(camera, message),
                                     qos_profile_sensor_data)
        # A transient-local subscription receives a latched publisher's last message but does not match a plain
        # (volatile) publisher at all; a volatile one matches both. Both, so every kind of publisher is heard (a
        # latched publisher then delivers twice, and an unchanged instruction changes nothing). That a plain
        # publisher does not match the latched subscription is expected: no warning for it.
        reliable = ReliabilityPolicy.RELIABLE
        self.create_subscription(String, settings['instruction_topic'], self.on_instruction,
                                 QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=reliable),
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None))
        self.create_subscription(String, settings['instruction_topic'], self.on_instruction,
                                 QoSProfile(depth=1, durability=DurabilityPolicy.VOLATILE, reliability=reliable))
        if settings['proprio_source'] == 'pose':
            self.create_subscription(PoseStamped, settings['pose_topic'], self.on_pose, qos_profile_sensor_data)
            self.create_subscription(JointState, settings['gripper_topic'], self.on_gripper,
                                     qos_profile_sensor_data)
        else:
            self.create_subscription(Float64MultiArray, settings['state_topic'], self.on_state,
                                     qos_profile_sensor_data)
        self.create_service(SetBool, '~/enable', self.on_enable)
        self.create_service(Trigger, '~/reset', self.on_reset)
        self.create_timer(self.control_period, self.on_tick)
        self.create_timer(1.0 / settings['diagnostics_rate'], self.publish_diagnostics)

        self.inference_thread = threading.Thread(target=self.inference_loop, name='inference', daemon=True)
        self.inference_thread.start()
        self.get_logger().info(
            f'ready: {self.policy.checkpoint.name} ({settings["dtype"]} on {settings["device"]}), CTR '
            f'{"on" if self.policy.engine.config.enabled else "off"}, {settings["execution_mode"]} at '
            f'{settings["control_rate"]:.0f} Hz{", DRY RUN" if settings["dry_run"] else ""}; '
            'motion is disabled until ~/enable')

    def _load_policy(self) -> VlaPolicy:
        settings = self.settings
        checkpoint_dir = settings['checkpoint'] or demo_checkpoint()
        import torch
        dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16}[settings['dtype']]
        checkpoint = load_checkpoint(checkpoint_dir, settings['arch_override'] or None, dtype, settings['device'])
        if not settings['checkpoint']:
            self.get_logger().warning(
                '*** NO CHECKPOINT CONFIGURED: using a tiny checkpoint with RANDOM WEIGHTS. Its actions are '
                'meaningless; set the `checkpoint` parameter to a real OpenVLA-OFT checkpoint. ***')
        return VlaPolicy(checkpoint, settings['unnorm_key'], settings['rotate180'], settings['center_crop'],
                         CtrConfig.from_parameters(settings))

    def now(self) -> float:
        """Seconds on the node's clock: wall time, or simulation time with use_sim_time (LIBERO)."""
        return self.get_clock().now().nanoseconds * 1e-9

    # ---------------------------------------------------------------------------------------- inputs
    def on_image(self, camera: int, message: Image) -> None:
        try:
            rgb = image_to_rgb(message)
        except ImageError as error:
            self.get_logger().error(f'camera {self.camera_names[camera]}: {error}; frame dropped',
                                    throttle_duration_sec=1.0)
            self.supervisor.refuse_frame(camera, str(error))
            return
        self.supervisor.add_frame(camera, stamp_seconds(message.header), (rgb, message.header), self.now())

    def on_instruction(self, message: String) -> None:
        update = self.supervisor.set_instruction(message.data)
        if update is InstructionUpdate.REFUSED_EMPTY:
            self.get_logger().error('empty instruction received: motion stops until a task is given')
        elif update is not InstructionUpdate.UNCHANGED:
            self.get_logger().info(f'instruction: "{message.data.strip()}"')

    def on_pose(self, message: PoseStamped) -> None:
        position, orientation = message.pose.position, message.pose.orientation
        self.pose = (np.array([position.x, position.y, position.z]),
                     np.array([orientation.x, orientation.y, orientation.z, orientation.w]))
        self.combine_pose_and_gripper()

    def on_gripper(self, message: JointState) -> None:
        names = self.settings['gripper_joint_names']
        try:
            self.gripper_positions = np.array([message.position[list(message.name).index(name)] for name in names])
        except (ValueError, IndexError):
            self.get_logger().error(f'gripper joint state lacks {names} (has {list(message.name)})',
                                    throttle_duration_sec=1.0)
            return
        self.combine_pose_and_gripper()

    def combine_pose_and_gripper(self) -> None:
        """The state from the newest pose and the newest gripper reading, whichever just arrived: a robot (or the
        simulation) publishes the two one after the other, and a query must not pair a pose with the gripper
        reading of the step before."""
        if self.pose is None or self.gripper_positions is None:
            return
        try:
            state = libero_state(*self.pose, self.gripper_positions)
        except ValueError as error:
            self.reject_state(str(error))
            return
        self.check_and_store_state(state)

    def on_state(self, message: Float64MultiArray) -> None:
        self.check_and_store_state(np.array(message.data, dtype=np.float64))

    def check_and_store_state(self, state: np.ndarray) -> None:
        refusal = state_refusal(state, self.policy.layout.proprio_dim, self.policy.statistics['proprio'],
                                self.settings['proprio_range_margin'])
        if refusal:
            self.reject_state(refusal)
        else:
            self.supervisor.set_state(state, self.now())

    def reject_state(self, reason: str) -> None:
        self.get_logger().error(f'robot state refused: {reason}', throttle_duration_sec=1.0)
        self.supervisor.refuse_state(reason)

    def on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        response.message, stop = self.supervisor.set_enabled(request.data, self.now())
        self.publish_command(stop)
        self.get_logger().info(f'motion {response.message}')
        response.success = True
        return response

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.publish_command(self.supervisor.reset())
        self.get_logger().info('reset: queued chunk dropped, CTR caches cleared')
        response.success = True
        response.message = 'reset'
        return response

    # ---------------------------------------------------------------------------------- control loop
    def on_tick(self) -> None:
        tick = self.supervisor.tick(self.now())
        if tick.mode_changed and tick.mode in (Mode.WAITING, Mode.FAULT):
            if tick.previous_mode is Mode.RUNNING:
                self.get_logger().warning(f'motion stopped: {"; ".join(tick.problems)}')
            else:
                self.get_logger().info(f'{tick.mode.value}: {"; ".join(tick.problems)}')
        self.publish_command(tick.command)

    def publish_command(self, command: Command | None) -> None:
        if command is not None:
            self.delta_publisher.publish(messages.end_effector_delta(
                command, self.get_clock().now().to_msg(), self.settings['base_frame'], self.control_period))

    def inference_loop(self) -> None:
        while (query := self.supervisor.wait_for_query()) is not None:
            self.run_query(query)

    def run_query(self, query: Query) -> None:
        observation_age = self.now() - query.frames.stamp
        outcome = run_query(self.policy, self.convention, self.supervisor, query)
        if outcome.refusal:
            self.get_logger().error(f'input refused, no chunk: {outcome.refusal}', throttle_duration_sec=1.0)
        elif outcome.model_error:
            self.get_logger().error(f'inference failed, motion stopped: {outcome.model_error}',
                                    throttle_duration_sec=1.0)
        elif outcome.chunk_id is not None:  # None: invalidated while it was computed, dropped unpublished
            self.last_prediction = (outcome.prediction, outcome.latency)
            self.publish_query_outputs(outcome.prediction, outcome.deltas, query, outcome.chunk_id, observation_age,
                                       outcome.latency)

    # ----------------------------------------------------------------------------------- publishing
    def publish_query_outputs(self, prediction: Prediction, deltas: np.ndarray, query: Query, chunk_id: int,
                              observation_age: float, latency: float) -> None:
        camera_headers = [header for _, header in query.frames.frames]
        header = Header(stamp=camera_headers[0].stamp, frame_id=self.settings['base_frame'])
        self.chunk_publisher.publish(messages.action_chunk(
            prediction, chunk_id, header, self.control_period, [camera.stamp for camera in camera_headers],
            query.state, query.instruction, self.policy.checkpoint.name, self.policy.unnorm_key, observation_age,
            latency))
        for publisher, mask in zip(self.mask_publishers, messages.reuse_masks(prediction.report, chunk_id,
                                                                              camera_headers, self.camera_names)):
            publisher.publish(mask)
        engine = self.policy.engine
        self.stats_publisher.publish(messages.ctr_stats(prediction.report, chunk_id, header, engine.keyframe_count,
                                                        engine.reset_count))
        positions, orientations = predicted_path(query.state, deltas, self.limits)
        self.path_publisher.publish(messages.predicted_path(positions, orientations, header, self.control_period))

    def publish_diagnostics(self) -> None:
        self.diagnostics_publisher.publish(messages.policy_diagnostics(
            self.get_name(), self.supervisor.status(self.now()), self.camera_names, self.settings['dry_run'],
            self.last_prediction, self.policy.engine.keyframe_count, self.get_clock().now().to_msg()))

    def on_shutdown(self) -> None:
        self.publish_command(self.supervisor.shutdown())
        # Give the final STOP time to reach the subscribers before the publisher is destroyed.
        self.delta_publisher.wait_for_all_acked(Duration(seconds=SHUTDOWN_ACK_TIMEOUT))


def main(args: list[str] | None = None) -> None:
    # The inference thread runs Python between torch kernels; a short GIL switch interval lets the control tick
    # in on time (the default 5 ms would show up as tick jitter).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    run(PolicyNode, args)


if __name__ == '__main__':
    main()
