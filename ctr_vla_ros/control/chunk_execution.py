"""Executing predicted action chunks one control tick at a time, with per-dimension clamps.

Modes:
  open_loop  execute the whole chunk, then query again (the release's evaluation; the arm pauses while the next
             chunk is computed);
  overlap    ask for the next chunk when `requery_remaining` actions are left, so a new chunk is usually ready when
             the current one ends; a chunk that arrives replaces what is left of the current one.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ctr_vla_ros.model.normalization import GRIPPER_CONVENTIONS

EXECUTION_MODES = ('open_loop', 'overlap')


@dataclasses.dataclass(frozen=True)
class ActionConvention:
    """How a dataset's actions map to end-effector deltas in metres / radians and a gripper command in [-1, 1]."""

    translation_scale: float  # metres per action unit (LIBERO: 0.05)
    rotation_scale: float  # radians per action unit (LIBERO: 0.5)
    gripper: str  # a key of GRIPPER_CONVENTIONS

    def to_deltas(self, actions: np.ndarray) -> np.ndarray:
        """(chunk, 7) un-normalised actions -> (chunk, 7): translation m, axis-angle rad, gripper command."""
        deltas = np.empty_like(actions, dtype=np.float64)
        deltas[:, 0:3] = actions[:, 0:3] * self.translation_scale
        deltas[:, 3:6] = actions[:, 3:6] * self.rotation_scale
        deltas[:, 6] = GRIPPER_CONVENTIONS[self.gripper](actions[:, 6])
        return deltas


@dataclasses.dataclass(frozen=True)
class DeltaLimits:
    """Largest magnitude per control step for each of the 7 delta dimensions (m, m, m, rad, rad, rad, gripper)."""

    max_abs: tuple[float, ...]

    def clamp(self, delta: np.ndarray) -> tuple[np.ndarray, int]:
        """The clamped delta and how many dimensions had to be clamped."""
        limits = np.asarray(self.max_abs)
        clamped = np.clip(delta, -limits, limits)
        return clamped, int(np.count_nonzero(clamped != delta))


@dataclasses.dataclass(frozen=True)
class PlannedDelta:
    delta: np.ndarray  # (7,) clamped
    chunk_id: int
    index_in_chunk: int
    clamped_dimensions: int


class ChunkExecutor:
    def __init__(self, limits: DeltaLimits, mode: str = 'open_loop', requery_remaining: int = 2) -> None:
        if mode not in EXECUTION_MODES:
            raise ValueError(f'execution mode must be one of {EXECUTION_MODES}, got {mode!r}')
        self.limits = limits
        self.mode = mode
        self.requery_remaining = requery_remaining
        self._queue: collections.deque[PlannedDelta] = collections.deque()

    def load(self, deltas: np.ndarray, chunk_id: int) -> None:
        """A new chunk replaces whatever is left of the current one."""
        self._queue.clear()
        for index, delta in enumerate(deltas):
            clamped, count = self.limits.clamp(delta)
            self._queue.append(PlannedDelta(clamped, chunk_id, index, count))

    def clear(self) -> None:
        self._queue.clear()

    @property
    def remaining(self) -> int:
        return len(self._queue)

    def needs_query(self) -> bool:
        if self.mode == 'open_loop':
            return not self._queue
        return len(self._queue) <= self.requery_remaining

    def next_delta(self) -> PlannedDelta | None:
        return self._queue.popleft() if self._queue else None
