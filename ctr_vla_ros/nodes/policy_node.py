"""ctr_vla_policy: cameras + instruction + robot state in, end-effector deltas at the control rate out.

Subscribes:  <camera_topics> (sensor_msgs/Image, sensor-data QoS), <instruction_topic> (std_msgs/String,
             transient-local), <pose_topic> + <gripper_topic> (PoseStamped + JointState) or <state_topic>
             (Float64MultiArray).
Publishes:   ~/ee_delta (EndEffectorDelta, one per control tick while a chunk executes), ~/action_chunk,
             ~/reuse_mask/<camera name> (ReuseMask), ~/ctr_stats (CtrStats), /diagnostics.
Services:    ~/enable (std_srvs/SetBool), ~/reset (std_srvs/Trigger).

Inference runs on its own thread; the executor thread only converts messages and ticks the chunk out. Nothing moves
until ~/enable is called; with dry_run everything but motion is published. A stale camera, a missing instruction, a
bad state or an inference error stops motion with a zero command.
"""

from __future__ import annotations

import enum
import sys
import threading
import time

from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, EndEffectorDelta, ReuseMask
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Header, String
from std_srvs.srv import SetBool, Trigger

from ctr_vla_ros.control.chunk_execution import EXECUTION_MODES, ActionConvention, ChunkExecutor, DeltaLimits
from ctr_vla_ros.control.frame_pairing import FramePairer, FrameSet
from ctr_vla_ros.control.robot_state import check_state_range, libero_state
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.model.normalization import GRIPPER_CONVENTIONS
from ctr_vla_ros.nodes.image_conversion import ImageError, image_to_rgb
from ctr_vla_ros.nodes.parameters import (SHARED_PARAMETERS, ParameterSpec, ctr_config_from,
                                          ctr_parameter_specs, declare)
from ctr_vla_ros.nodes.runtime import run
from ctr_vla_ros.policy import InputError, Prediction, VlaPolicy
from ctr_vla_ros.model.random_checkpoint import demo_checkpoint

GIL_SWITCH_INTERVAL = 0.0005  # s

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


class State(enum.Enum):
    DISABLED = 'disabled'
    WAITING = 'waiting for input'
    RUNNING = 'running'
    FAULT = 'fault'


def stamp_seconds(header: Header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__('ctr_vla_policy')
        self.settings = settings = declare(self, PARAMETERS)
        self.policy = self._load_policy()
        self.convention = ActionConvention(settings['translation_scale'], settings['rotation_scale'],
                                           settings['gripper_convention'])
        self.executor_ = ChunkExecutor(
            DeltaLimits(tuple(settings['max_translation_step']) + tuple(settings['max_rotation_step']) + (1.0,)),
            settings['execution_mode'], settings['requery_remaining'])
        self.pairer = FramePairer(2, settings['pair_tolerance'], settings['camera_timeout'])
        self.camera_names = settings['camera_names']
        self.control_period = 1.0 / settings['control_rate']

        # Shared between the executor thread and the inference thread, guarded by `self.lock`.
        self.lock = threading.Lock()
        self.enabled = False
        self.instruction: str | None = None
        self.state: np.ndarray | None = None
        self.state_time: float | None = None
        self.camera_times: list[float | None] = [None, None]  # node-clock receipt time of the newest frames
        self.gripper_positions: np.ndarray | None = None
        self.generation = 0  # bumped by a reset or an instruction change: in-flight chunks are dropped
        self.chunk_count = 0
        self.inference_busy = False
        self.pending_query = None
        self.query_wanted = False  # the executor needs a chunk and waits for a camera pair not used yet
        self.last_query_frames: tuple | None = None  # the camera frames the latest query used
        self.last_error = ''
        self.fault = False
        self.moving = False
        self.clamp_count = 0
        self.last_prediction: Prediction | None = None
        self.last_latency = 0.0
        self.engine_reset_reason: str | None = None  # applied by the inference thread, which owns the engine
        self.status = State.DISABLED

        sensor_qos = qos_profile_sensor_data
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.delta_publisher = self.create_publisher(EndEffectorDelta, '~/ee_delta', 10)
        self.chunk_publisher = self.create_publisher(ActionChunk, '~/action_chunk', 10)
        self.mask_publishers = [self.create_publisher(ReuseMask, f'~/reuse_mask/{name}', 10)
                                for name in self.camera_names]
        self.stats_publisher = self.create_publisher(CtrStats, '~/ctr_stats', 10)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        for camera, topic in enumerate(settings['camera_topics']):
            self.create_subscription(Image, topic, lambda message, camera=camera: self.on_image(camera, message),
                                     sensor_qos)
        self.create_subscription(String, settings['instruction_topic'], self.on_instruction, latched)
        if settings['proprio_source'] == 'pose':
            self.create_subscription(PoseStamped, settings['pose_topic'], self.on_pose, sensor_qos)
            self.create_subscription(JointState, settings['gripper_topic'], self.on_gripper, sensor_qos)
        else:
            self.create_subscription(Float64MultiArray, settings['state_topic'], self.on_state, sensor_qos)
        self.create_service(SetBool, '~/enable', self.on_enable)
        self.create_service(Trigger, '~/reset', self.on_reset)
        self.create_timer(self.control_period, self.on_tick)
        self.create_timer(1.0 / settings['diagnostics_rate'], self.publish_diagnostics)

        self.inference_wakeup = threading.Condition(self.lock)
        self.stopping = False
        self.inference_thread = threading.Thread(target=self.inference_loop, name='inference', daemon=True)
        self.inference_thread.start()
        self.get_logger().info(
            f'ready: {self.policy.checkpoint.name} ({settings["dtype"]} on {settings["device"]}), CTR '
            f'{"on" if self.policy.engine.config.enabled else "off"}, {settings["execution_mode"]} at '
            f'{settings["control_rate"]:.0f} Hz{", DRY RUN" if settings["dry_run"] else ""}; '
            'motion is disabled until ~/enable')

    # ----------------------------------------------------------------------------------------- set-up
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
                         ctr_config_from(settings))

    def now(self) -> float:
        """Seconds on the node's clock: wall time, or simulation time with use_sim_time (LIBERO)."""
        return self.get_clock().now().nanoseconds * 1e-9

    # -------------------------------------------------------------------------------------- callbacks
    def on_image(self, camera: int, message: Image) -> None:
        try:
            rgb = image_to_rgb(message)
        except ImageError as error:
            self.get_logger().error(f'camera {self.camera_names[camera]}: {error}; frame dropped',
                                    throttle_duration_sec=1.0)
            return
        with self.lock:
            self.pairer.add(camera, stamp_seconds(message.header), (rgb, message.header))
            self.camera_times[camera] = self.now()
            if self.query_wanted and self.status == State.RUNNING:
                self._request_inference()  # the fresh pair the executor was waiting for

    def on_instruction(self, message: String) -> None:
        instruction = message.data.strip()
        with self.lock:
            if not instruction:
                self.get_logger().error('empty instruction received: motion stops until a task is given')
                self.instruction = None
                self._drop_chunks()
                return
            if instruction != self.instruction:
                self.get_logger().info(f'instruction: "{instruction}"')
                if self.instruction is not None:
                    self._drop_chunks()  # the engine keyframes by itself on the new prompt
                self.instruction = instruction

    def on_pose(self, message: PoseStamped) -> None:
        with self.lock:
            gripper = self.gripper_positions
        if gripper is None:
            return
        position, orientation = message.pose.position, message.pose.orientation
        try:
            state = libero_state(np.array([position.x, position.y, position.z]),
                                 np.array([orientation.x, orientation.y, orientation.z, orientation.w]), gripper)
        except ValueError as error:
            self._reject_state(str(error))
            return
        self._store_state(state)

    def on_gripper(self, message: JointState) -> None:
        names = self.settings['gripper_joint_names']
        try:
            positions = np.array([message.position[list(message.name).index(name)] for name in names])
        except (ValueError, IndexError):
            self.get_logger().error(f'gripper joint state lacks {names} (has {list(message.name)})',
                                    throttle_duration_sec=1.0)
            return
        with self.lock:
            self.gripper_positions = positions

    def on_state(self, message: Float64MultiArray) -> None:
        self._store_state(np.array(message.data, dtype=np.float64))

    def _store_state(self, state: np.ndarray) -> None:
        expected = self.policy.layout.proprio_dim
        if state.shape != (expected,):
            self._reject_state(f'expected a {expected}-D state, got {state.shape[0]} values')
        elif not np.all(np.isfinite(state)):
            self._reject_state(f'non-finite state {state.tolist()}')
        else:
            try:
                check_state_range(state, self.policy.statistics['proprio'], self.settings['proprio_range_margin'])
            except ValueError as error:
                self._reject_state(str(error))
                return
            with self.lock:
                self.state = state
                self.state_time = self.now()

    def _reject_state(self, reason: str) -> None:
        self.get_logger().error(f'robot state refused: {reason}', throttle_duration_sec=1.0)
        with self.lock:
            self.state = None

    def on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self.lock:
            self.enabled = request.data
            self.fault = False
            self.last_error = ''
            if not request.data:
                self._drop_chunks()
        self.get_logger().info('motion ENABLED' if request.data else 'motion disabled')
        if not request.data:
            self.stop_motion()
        response.success = True
        response.message = 'enabled' if request.data else 'disabled'
        return response

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            self._drop_chunks()
            self.engine_reset_reason = 'episode_reset'
            self.fault = False
            self.last_error = ''
        self.stop_motion()
        self.get_logger().info('reset: queued chunk dropped, CTR caches cleared')
        response.success = True
        response.message = 'reset'
        return response

    def _drop_chunks(self) -> None:
        """Caller holds the lock."""
        self.executor_.clear()
        self.generation += 1

    # ---------------------------------------------------------------------------------- control loop
    def input_problems(self, now: float) -> list[str]:
        """Caller holds the lock."""
        problems = []
        timeout = self.settings['camera_timeout']
        for camera, name in enumerate(self.camera_names):
            received = self.camera_times[camera]
            if received is None:
                problems.append(f'no frame from camera {name}')
            elif now - received > timeout:
                problems.append(f'camera {name} silent for {now - received:.2f} s')
        if not problems and self.pairer.latest() is None:
            problems.append(f'camera frames not within {self.settings["pair_tolerance"]} s of each other')
        if self.instruction is None:
            problems.append('no instruction')
        if self.state is None:
            problems.append('no valid robot state')
        elif now - self.state_time > self.settings['proprio_timeout']:  # set with the state
            problems.append(f'robot state {now - self.state_time:.2f} s old')
        return problems

    def on_tick(self) -> None:
        now = self.now()
        with self.lock:
            problems = self.input_problems(now)
            if not self.enabled and not self.settings['dry_run']:
                status = State.DISABLED
            elif self.fault:
                status = State.FAULT
            elif problems:
                status = State.WAITING
            else:
                status = State.RUNNING
            if status != State.RUNNING:
                if self.executor_.remaining or self.inference_busy:
                    self._drop_chunks()
                if status != self.status and problems and status == State.WAITING:
                    self.get_logger().warning(f'motion stopped: {"; ".join(problems)}')
                planned = None
            else:
                self.query_wanted = self.executor_.needs_query() and not self.inference_busy
                if self.query_wanted:
                    self._request_inference()
                planned = self.executor_.next_delta()
            self.status = status
        if planned is None:
            if self.moving:
                self.stop_motion()
            return
        if not self.enabled or self.settings['dry_run']:
            return
        self.clamp_count += planned.clamped_dimensions
        self.publish_delta(planned.delta, planned.chunk_id, planned.index_in_chunk)
        self.moving = True

    def publish_delta(self, delta: np.ndarray, chunk_id: int, index: int) -> None:
        message = EndEffectorDelta(chunk_id=chunk_id, index_in_chunk=index, control_period=self.control_period)
        message.header.stamp = self.get_clock().now().to_msg()
        message.header.frame_id = self.settings['base_frame']
        message.translation = [float(value) for value in delta[0:3]]
        message.rotation = [float(value) for value in delta[3:6]]
        message.gripper = float(delta[6])
        self.delta_publisher.publish(message)

    def stop_motion(self) -> None:
        """One zero command: adapters turn it into zero velocity."""
        if not self.settings['dry_run']:
            self.publish_delta(np.zeros(7), 0, 0)
        self.moving = False

    def _request_inference(self) -> None:
        """Caller holds the lock: snapshot the inputs and wake the inference thread, unless the newest camera pair
        was already used by a query; then the next pair to arrive triggers the query (a chunk is never computed
        twice from the same frames, and the observation is as fresh as the cameras allow)."""
        frames = self.pairer.latest()
        if frames is None or self.state is None or self.instruction is None or self._already_used(frames):
            return
        self.pending_query = (frames, self.state.copy(), self.instruction, self.generation)
        self.last_query_frames = frames.frames
        self.query_wanted = False
        self.inference_busy = True
        self.inference_wakeup.notify()

    def _already_used(self, frames: FrameSet) -> bool:
        """Caller holds the lock. Identity, not stamps: stamps may go backwards (a replayed bag, a sim reset)."""
        last = self.last_query_frames
        return last is not None and all(new is old for new, old in zip(frames.frames, last))

    def inference_loop(self) -> None:
        while True:
            with self.lock:
                while self.pending_query is None and not self.stopping:
                    self.inference_wakeup.wait()
                if self.stopping:
                    return
                frames, state, instruction, generation = self.pending_query
                self.pending_query = None
                reset_reason, self.engine_reset_reason = self.engine_reset_reason, None
            if reset_reason:
                self.policy.engine.reset(reset_reason)
            started = time.perf_counter()
            observation_age = self.now() - frames.stamp
            try:
                prediction = self.policy.predict([rgb for rgb, _ in frames.frames], state, instruction,
                                                 timestamp=frames.stamp)
            except (InputError, FloatingPointError, RuntimeError, ValueError) as error:
                self.get_logger().error(f'inference failed, motion stopped: {error}', throttle_duration_sec=1.0)
                with self.lock:
                    self.fault = not isinstance(error, InputError)
                    self.last_error = str(error)
                    self.inference_busy = False
                continue
            latency = time.perf_counter() - started
            with self.lock:
                current = generation == self.generation
                self.chunk_count += 1
                chunk_id = self.chunk_count
                if current:
                    self.executor_.load(self.convention.to_deltas(prediction.actions), chunk_id)
                self.inference_busy = False
                self.last_prediction = prediction
                self.last_latency = latency
            if current:
                self.publish_query_outputs(prediction, frames, chunk_id, observation_age, latency)

    # ----------------------------------------------------------------------------------- publishing
    def publish_query_outputs(self, prediction: Prediction, frames: FrameSet, chunk_id: int, observation_age: float,
                              latency: float) -> None:
        report = prediction.report
        primary_header = frames.frames[0][1]
        horizon, action_dim = prediction.actions.shape
        chunk = ActionChunk(chunk_id=chunk_id, horizon=horizon, action_dim=action_dim,
                            control_period=self.control_period, model_name='openvla-oft',
                            checkpoint=self.policy.checkpoint.name, unnorm_key=self.policy.unnorm_key,
                            observation_age=observation_age, inference_latency=latency)
        chunk.header.stamp = primary_header.stamp
        chunk.header.frame_id = self.settings['base_frame']
        chunk.actions = prediction.actions.ravel().tolist()
        chunk.normalized_actions = prediction.normalized_actions.ravel().tolist()
        self.chunk_publisher.publish(chunk)

        grid = int(report.patch_states.shape[1] ** 0.5)
        for camera, (publisher, (_, header)) in enumerate(zip(self.mask_publishers, frames.frames)):
            mask = ReuseMask(header=header, camera_name=self.camera_names[camera], grid_rows=grid, grid_cols=grid,
                             query_index=chunk_id, keyframe=report.keyframe,
                             vision_reuse_ratio=float(report.vision_reuse[camera]),
                             llm_reuse_ratio=float(report.llm_reuse[camera]))
            mask.patch_state = report.patch_states[camera].tobytes()
            if report.attention_scores is not None:
                mask.attention_score = report.attention_scores[camera].astype(np.float32).tolist()
            publisher.publish(mask)

        times, flops = report.times, report.flops
        engine = self.policy.engine
        stats = CtrStats(
            query_index=chunk_id, preprocess_time=times.preprocess, mask_time=times.mask, vision_time=times.vision,
            projector_time=times.projector, llm_time=times.llm, head_time=times.head, total_time=times.total,
            vision_flops=float(flops.vision_total), projector_flops=float(flops.projector),
            llm_flops=float(flops.llm), head_flops=float(flops.head), executed_flops=float(flops.total),
            full_recompute_flops=float(report.full_recompute_flops.total),
            vision_reuse_ratio=float(report.vision_reuse.mean()), llm_reuse_ratio=float(report.llm_reuse.mean()),
            keyframe=report.keyframe, keyframe_reason=report.keyframe_reason,
            keyframe_count=engine.keyframe_count, reset_count=engine.reset_count)
        stats.header = chunk.header
        self.stats_publisher.publish(stats)

    def publish_diagnostics(self) -> None:
        now = self.now()
        with self.lock:
            problems = self.input_problems(now)
            status, prediction = self.status, self.last_prediction
            values = {
                'state': status.value, 'enabled': str(self.enabled), 'dry_run': str(self.settings['dry_run']),
                'queries': str(self.chunk_count), 'clamped_dimensions': str(self.clamp_count),
                'problems': '; '.join(problems), 'last_error': self.last_error,
            }
            for camera, name in enumerate(self.camera_names):
                received = self.camera_times[camera]
                age = now - received if received is not None else float('inf')
                values[f'camera_{name}_age_s'] = f'{age:.3f}'
            values['state_age_s'] = f'{now - self.state_time:.3f}' if self.state_time is not None else 'inf'
        if prediction is not None:
            report = prediction.report
            values['inference_latency_s'] = f'{self.last_latency:.4f}'
            values['vision_reuse_ratio'] = f'{report.vision_reuse.mean():.3f}'
            values['llm_reuse_ratio'] = f'{report.llm_reuse.mean():.3f}'
            values['keyframes'] = str(self.policy.engine.keyframe_count)
        level = {State.RUNNING: DiagnosticStatus.OK, State.DISABLED: DiagnosticStatus.OK,
                 State.WAITING: DiagnosticStatus.WARN, State.FAULT: DiagnosticStatus.ERROR}[status]
        message = status.value if not problems or status == State.DISABLED else f'{status.value}: {problems[0]}'
        array = DiagnosticArray(status=[DiagnosticStatus(
            level=level, name=f'{self.get_name()}: policy', message=message, hardware_id='ctr_vla',
            values=[KeyValue(key=key, value=value) for key, value in values.items()])])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def on_shutdown(self) -> None:
        with self.lock:
            self.stopping = True
            self._drop_chunks()
            self.inference_wakeup.notify()
        self.stop_motion()
        # Give the zero command time to reach the subscribers before the publisher is destroyed.
        self.delta_publisher.wait_for_all_acked(Duration(seconds=1.0))


def main(args: list[str] | None = None) -> int:
    # The inference thread runs Python between torch kernels; a short GIL switch interval lets the control tick
    # in on time (the default 5 ms would show up as tick jitter).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    return run(PolicyNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
