"""Pairs camera frames by header stamp (message_filters' ApproximateTime, reduced to what the policy needs)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class FrameSet:
    stamp: float  # seconds: the first camera's stamp (the model's primary view)
    frames: tuple[Any, ...]  # one per camera, in model order


class FramePairer:
    """Keeps the last few frames of each camera; `latest()` is the newest set whose stamps all lie within
    `tolerance` seconds of the first camera's frame, and whose first frame is at most `max_lag` seconds older than
    that camera's newest frame (an old matching set is no substitute for current frames that do not match)."""

    def __init__(self, num_cameras: int, tolerance: float, max_lag: float, history: int = 8) -> None:
        self.tolerance = tolerance
        self.max_lag = max_lag
        self._frames = [collections.deque(maxlen=history) for _ in range(num_cameras)]

    def add(self, camera: int, stamp: float, frame: Any) -> None:
        self._frames[camera].append((stamp, frame))

    def latest(self) -> FrameSet | None:
        if not self._frames[0]:
            return None
        newest = self._frames[0][-1][0]
        for stamp, first in reversed(self._frames[0]):
            if newest - stamp > self.max_lag:
                return None
            matched = [first]
            for frames in self._frames[1:]:
                candidates = [(abs(other_stamp - stamp), frame) for other_stamp, frame in frames]
                best = min(candidates, key=lambda candidate: candidate[0], default=None)
                if best is None or best[0] > self.tolerance:
                    break
                matched.append(best[1])
            else:
                return FrameSet(stamp, tuple(matched))
        return None
