"""The policy node's outgoing messages, built from the core's results (no publishing here)."""

from __future__ import annotations

import math

from builtin_interfaces.msg import Time
from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, EndEffectorDelta, ReuseMask
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import Path
import numpy as np
from std_msgs.msg import Header

from ctr_vla_ros.control.supervisor import Command, Mode, Status
from ctr_vla_ros.ctr.engine import StepReport
from ctr_vla_ros.policy import Prediction

DIAGNOSTIC_LEVELS = {Mode.RUNNING: DiagnosticStatus.OK, Mode.DISABLED: DiagnosticStatus.OK,
                     Mode.WAITING: DiagnosticStatus.WARN, Mode.FAULT: DiagnosticStatus.ERROR}


def end_effector_delta(command: Command, stamp: Time, frame_id: str, control_period: float) -> EndEffectorDelta:
    return EndEffectorDelta(
        kind=int(command.kind), header=Header(stamp=stamp, frame_id=frame_id),
        translation=[float(value) for value in command.translation],
        rotation=[float(value) for value in command.rotation], gripper=float(command.gripper),
        chunk_id=command.chunk_id, index_in_chunk=command.index_in_chunk, control_period=control_period)


def action_chunk(prediction: Prediction, chunk_id: int, header: Header, control_period: float,
                 camera_stamps: list[Time], proprio: np.ndarray, instruction: str, checkpoint: str, unnorm_key: str,
                 observation_age: float, inference_latency: float) -> ActionChunk:
    horizon, action_dim = prediction.actions.shape
    return ActionChunk(
        header=header, chunk_id=chunk_id, horizon=horizon, action_dim=action_dim, control_period=control_period,
        actions=prediction.actions.ravel().tolist(), normalized_actions=prediction.normalized_actions.ravel().tolist(),
        camera_stamps=camera_stamps, proprio=np.asarray(proprio, dtype=np.float64).tolist(), instruction=instruction,
        model_name='openvla-oft', checkpoint=checkpoint, unnorm_key=unnorm_key, observation_age=observation_age,
        inference_latency=inference_latency)


def predicted_path(positions: np.ndarray, orientations: np.ndarray, header: Header, control_period: float) -> Path:
    """The chunk's end-effector path: pose i is stamped i control periods after the camera frame of the query."""
    start = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    poses = []
    for step, (position, orientation) in enumerate(zip(positions, orientations)):
        stamp = start + round(step * control_period * 1e9)
        poses.append(PoseStamped(
            header=Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                          frame_id=header.frame_id),
            pose=Pose(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
                      orientation=Quaternion(x=float(orientation[0]), y=float(orientation[1]),
                                             z=float(orientation[2]), w=float(orientation[3])))))
    return Path(header=header, poses=poses)


def reuse_masks(report: StepReport, chunk_id: int, camera_headers: list[Header],
                camera_names: list[str]) -> list[ReuseMask]:
    """One ReuseMask per camera, stamped like the frame it was computed for."""
    grid = math.isqrt(report.patch_states.shape[1])
    masks = []
    for camera, (header, name) in enumerate(zip(camera_headers, camera_names)):
        mask = ReuseMask(header=header, camera_name=name, grid_rows=grid, grid_cols=grid, query_index=chunk_id,
                         keyframe=report.keyframe, vision_reuse_ratio=float(report.vision_reuse[camera]),
                         llm_reuse_ratio=float(report.llm_reuse[camera]))
        mask.patch_state = report.patch_states[camera].tobytes()
        if report.attention_scores is not None:
            mask.attention_score = report.attention_scores[camera].astype(np.float32).tolist()
        masks.append(mask)
    return masks


def ctr_stats(report: StepReport, chunk_id: int, header: Header, keyframe_count: int, reset_count: int) -> CtrStats:
    times, flops = report.times, report.flops
    return CtrStats(
        header=header, query_index=chunk_id, preprocess_time=times.preprocess, mask_time=times.mask,
        vision_time=times.vision, projector_time=times.projector, llm_time=times.llm, head_time=times.head,
        total_time=times.total, vision_flops=float(flops.vision_total), projector_flops=float(flops.projector),
        llm_flops=float(flops.llm), head_flops=float(flops.head), executed_flops=float(flops.total),
        full_recompute_flops=float(report.full_recompute_flops.total),
        vision_reuse_ratio=float(report.vision_reuse.mean()), llm_reuse_ratio=float(report.llm_reuse.mean()),
        keyframe=report.keyframe, keyframe_reason=report.keyframe_reason, keyframe_count=keyframe_count,
        reset_count=reset_count)


def policy_diagnostics(name: str, status: Status, camera_names: list[str], dry_run: bool,
                       last_prediction: tuple[Prediction, float] | None, keyframe_count: int,
                       stamp: Time) -> DiagnosticArray:
    """The policy's health: the mode, every problem with its reason (missing, stale, refused and why, out of sync),
    input ages, the latest query's latency and reuse."""
    values = {
        'state': status.mode.value, 'enabled': str(status.enabled), 'dry_run': str(dry_run),
        'queries': str(status.chunks), 'clamped_dimensions': str(status.clamped_dimensions),
        'problems': '; '.join(status.problems), 'last_error': status.last_error,
    }
    for camera, age in zip(camera_names, status.camera_ages):
        values[f'camera_{camera}_age_s'] = f'{age:.3f}'
    values['state_age_s'] = f'{status.state_age:.3f}'
    if last_prediction is not None:
        prediction, latency = last_prediction
        values['inference_latency_s'] = f'{latency:.4f}'
        values['vision_reuse_ratio'] = f'{prediction.report.vision_reuse.mean():.3f}'
        values['llm_reuse_ratio'] = f'{prediction.report.llm_reuse.mean():.3f}'
        values['keyframes'] = str(keyframe_count)
    show_problem = status.problems and status.mode is not Mode.DISABLED
    message = f'{status.mode.value}: {status.problems[0]}' if show_problem else status.mode.value
    array = DiagnosticArray(status=[DiagnosticStatus(
        level=DIAGNOSTIC_LEVELS[status.mode], name=f'{name}: policy', message=message, hardware_id='ctr_vla',
        values=[KeyValue(key=key, value=value) for key, value in values.items()])])
    array.header.stamp = stamp
    return array
