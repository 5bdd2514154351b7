"""The end-effector path an action chunk will follow, for the preview in RViz: the current pose, then the pose after
each control step. Deltas are clamped as the executor clamps them; translations add up in the base frame and each
rotation delta (axis-angle in the base frame, as LIBERO's and robosuite's OSC controller apply it) turns the
orientation from the left. A preview, not a forward model: a real arm lags and stops at contacts."""

from __future__ import annotations

import numpy as np

from ctr_vla_ros.control.chunk_execution import DeltaLimits
from ctr_vla_ros.control.robot_state import axis_angle_to_quaternion, quaternion_multiply


def predicted_path(state: np.ndarray, deltas: np.ndarray, limits: DeltaLimits) -> tuple[np.ndarray, np.ndarray]:
    """Positions (H+1, 3) and quaternions x, y, z, w (H+1, 4) from a LIBERO-layout state (position, axis-angle, ...)
    and (H, 7) deltas (translation m, axis-angle rad, gripper)."""
    position = np.asarray(state[0:3], dtype=np.float64)
    orientation = axis_angle_to_quaternion(state[3:6])
    positions, orientations = [position], [orientation]
    for delta in deltas:
        clamped, _ = limits.clamp(np.asarray(delta, dtype=np.float64))
        position = position + clamped[0:3]
        orientation = quaternion_multiply(axis_angle_to_quaternion(clamped[3:6]), orientation)
        orientation /= np.linalg.norm(orientation)
        positions.append(position)
        orientations.append(orientation)
    return np.array(positions), np.array(orientations)
