"""From EndEffectorDelta to what robot drivers take: velocities, frames, limits, gripper commands (pure functions)."""

from __future__ import annotations

import dataclasses

import numpy as np


def quaternion_to_matrix(quaternion_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64) / np.linalg.norm(quaternion_xyzw)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def limit_norm(vector: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale the vector down to `max_norm` if longer (keeps the direction of motion)."""
    norm = float(np.linalg.norm(vector))
    return vector if norm <= max_norm else vector * (max_norm / norm)


@dataclasses.dataclass(frozen=True)
class VelocityLimits:
    max_linear: float  # m/s
    max_angular: float  # rad/s


def delta_to_twist(translation: np.ndarray, rotation: np.ndarray, control_period: float, limits: VelocityLimits,
                   base_to_frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear (m/s) and angular (rad/s) velocity that realise a base-frame delta over one control period, limited,
    and expressed in another frame if `base_to_frame` (rotation of that frame in the base frame) is given."""
    if control_period <= 0:
        raise ValueError(f'control period must be positive, got {control_period}')
    linear = limit_norm(np.asarray(translation, dtype=np.float64) / control_period, limits.max_linear)
    angular = limit_norm(np.asarray(rotation, dtype=np.float64) / control_period, limits.max_angular)
    if base_to_frame is not None:
        linear, angular = base_to_frame.T @ linear, base_to_frame.T @ angular
    return linear, angular


KINOVA_GRIPPER_CLOSED = 0.8  # Robotiq 2F-85 position in ros2_kortex: 0.0 open .. 0.8 closed


def kinova_gripper_position(command: float) -> float:
    """Gripper command (-1 open .. +1 close) -> Robotiq position for the GripperCommand action (0 .. 0.8)."""
    return KINOVA_GRIPPER_CLOSED * (float(np.clip(command, -1.0, 1.0)) + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class FrankaGripperGoal:
    grasp: bool  # True: franka_msgs Grasp action; False: Move action (open)
    width: float  # m


FRANKA_OPEN_WIDTH = 0.08  # m, the Franka Hand's full opening


def franka_gripper_goal(command: float) -> FrankaGripperGoal:
    """Gripper command (-1 open .. +1 close) -> a franka_gripper goal: close = grasp, open = move to full width."""
    if command > 0.0:
        return FrankaGripperGoal(grasp=True, width=0.0)
    return FrankaGripperGoal(grasp=False, width=FRANKA_OPEN_WIDTH)


@dataclasses.dataclass(frozen=True)
class AdapterCommand:
    linear: np.ndarray  # (3,) m/s
    angular: np.ndarray  # (3,) rad/s
    gripper: float | None  # a gripper command to send now (-1 open .. +1 close); None: leave the gripper alone


def adapter_command(motion: bool, translation: np.ndarray, rotation: np.ndarray, gripper: float,
                    control_period: float, limits: VelocityLimits, gripper_filter: GripperChangeFilter,
                    base_to_frame: np.ndarray | None = None) -> AdapterCommand:
    """What an adapter sends for one EndEffectorDelta. A HOLD or STOP (motion False) is zero velocity and never a
    gripper goal, whatever its gripper field holds. Raises ValueError for a MOTION with non-finite values."""
    if not motion:
        return AdapterCommand(np.zeros(3), np.zeros(3), None)
    values = np.array([*translation, *rotation, gripper], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f'non-finite motion command {values.tolist()}')
    linear, angular = delta_to_twist(values[0:3], values[3:6], control_period, limits, base_to_frame)
    return AdapterCommand(linear, angular, float(values[6]) if gripper_filter.changed(float(values[6])) else None)


class GripperChangeFilter:
    """Passes a gripper command on only when it differs enough from the last one sent (goals are not cheap)."""

    def __init__(self, threshold: float = 0.2) -> None:
        self.threshold = threshold
        self.last: float | None = None

    def changed(self, command: float) -> bool:
        if self.last is None or abs(command - self.last) > self.threshold:
            self.last = command
            return True
        return False
