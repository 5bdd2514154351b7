"""Robot state for the policy: LIBERO's 8-D proprio from an end-effector pose and gripper joint positions."""

from __future__ import annotations

from typing import Any

import numpy as np


def quaternion_to_axis_angle(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (axis * angle, radians) of a unit quaternion in x, y, z, w order, angle in [0, 2pi) as robosuite
    computes it for LIBERO's proprio."""
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64)
    w = np.clip(w, -1.0, 1.0)
    sine = np.sqrt(1.0 - w * w)
    if np.isclose(sine, 0.0):
        return np.zeros(3)
    return np.array([x, y, z]) * 2.0 * np.arccos(w) / sine


def libero_state(position: np.ndarray, quaternion_xyzw: np.ndarray, gripper_positions: np.ndarray) -> np.ndarray:
    """eef position (3) | axis-angle of the eef orientation (3) | gripper finger positions (2)."""
    quaternion = np.asarray(quaternion_xyzw, dtype=np.float64)
    norm = np.linalg.norm(quaternion)
    if not np.isfinite(norm) or abs(norm - 1.0) > 1e-3:
        raise ValueError(f'end-effector orientation is not a unit quaternion (norm {norm:.4f})')
    gripper = np.asarray(gripper_positions, dtype=np.float64)
    if gripper.shape != (2,):
        raise ValueError(f'expected 2 gripper finger positions, got {gripper.shape[0] if gripper.ndim else 0}')
    return np.concatenate([np.asarray(position, dtype=np.float64), quaternion_to_axis_angle(quaternion), gripper])


def state_refusal(state: np.ndarray, proprio_dim: int, statistics: dict[str, Any], margin: float) -> str:
    """Why the policy refuses this robot state ('' if it accepts it): its size, non-finite values, or a value far
    outside the trained range (`check_state_range`)."""
    if state.shape != (proprio_dim,):
        return f'expected a {proprio_dim}-D state, got {state.shape[0] if state.ndim else 0} values'
    if not np.all(np.isfinite(state)):
        return f'non-finite state {state.tolist()}'
    try:
        check_state_range(state, statistics, margin)
    except ValueError as error:
        return str(error)
    return ''


def check_state_range(state: np.ndarray, statistics: dict[str, Any], margin: float) -> None:
    """Refuse a state far outside what the model was trained on: beyond [q01, q99] widened by `margin` times the
    q01..q99 span on each side. Raises ValueError naming the dimensions."""
    q01, q99 = np.asarray(statistics['q01']), np.asarray(statistics['q99'])
    span = q99 - q01
    low, high = q01 - margin * span, q99 + margin * span
    outside = np.flatnonzero((state < low) | (state > high))
    if outside.size:
        details = ', '.join(f'[{index}]={state[index]:.4f} not in [{low[index]:.4f}, {high[index]:.4f}]'
                            for index in outside)
        raise ValueError(f'state out of the trained range: {details}')


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation vector (axis * angle, radians)."""
    vector = np.asarray(axis_angle, dtype=np.float64)
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    return np.concatenate([vector / angle * np.sin(angle / 2.0), [np.cos(angle / 2.0)]])


def quaternion_multiply(left_xyzw: np.ndarray, right_xyzw: np.ndarray) -> np.ndarray:
    """The Hamilton product left * right (apply `right`, then `left`), x, y, z, w order."""
    x1, y1, z1, w1 = left_xyzw
    x2, y2, z2, w2 = right_xyzw
    return np.array([w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
                     w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2])
