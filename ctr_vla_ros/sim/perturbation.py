"""Perturbed execution of the expert's actions, for demonstrations that teach recovery (DART, Laskey et al. 2017).

The expert's clean action is the label; the arm executes a perturbed one, so the recorded states wander off the
expert's path by the amount a learned policy's own errors would, and the labels say how the expert comes back.
Two kinds of perturbation, each drawn from the episode's own generator (an episode depends on its start alone):

- **Action noise**: Gaussian noise of standard deviation `action_noise` (action units) on every translation and
  rotation component, every step.
- **Segments**: now and then, for a few steps, something a policy gets wrong on a larger scale: a push of the end
  effector off the expert's path (a constant translation of `push_size` in a random direction, replacing the
  expert's translation) or a gripper command of the wrong sign (a late or early close or open; a bowl in the fingers
  may drop and the expert picks it up again). Never in the first `quiet_steps` of an episode.

The gripper (the last component, -1 open, +1 closed) gets no Gaussian noise: LIBERO's gripper command is binary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MOTION = slice(0, 6)  # translation and rotation components of a LIBERO action
TRANSLATION = slice(0, 3)
GRIPPER = 6


@dataclasses.dataclass(frozen=True)
class Perturbation:
    action_noise: float = 0.0  # standard deviation on each motion component, action units
    push_rate: float = 0.0  # probability per step that a push starts (outside a segment)
    push_steps: int = 6
    push_size: float = 0.5  # action units (about 0.65 cm per step: 4 cm over 6 steps)
    gripper_rate: float = 0.0  # probability per step that a wrong-sign gripper segment starts
    gripper_steps: int = 4
    quiet_steps: int = 5  # no segment starts before this step

    def __post_init__(self) -> None:
        if self.action_noise < 0 or self.push_size < 0:
            raise ValueError('action_noise and push_size are >= 0')
        if not (self.push_rate >= 0 and self.gripper_rate >= 0 and self.push_rate + self.gripper_rate <= 1):
            raise ValueError('push_rate and gripper_rate are probabilities with a sum of at most 1')
        if self.push_steps < 1 or self.gripper_steps < 1 or self.quiet_steps < 0:
            raise ValueError('push_steps and gripper_steps are >= 1, quiet_steps >= 0')

    @property
    def active(self) -> bool:
        return self.action_noise > 0 or self.push_rate > 0 or self.gripper_rate > 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PerturbedExecution:
    """The executed action for each clean action of one episode; `segment` names the running segment, if any, and
    `segment_started` says whether it started at the last step."""

    def __init__(self, perturbation: Perturbation, rng: np.random.Generator) -> None:
        self.perturbation = perturbation
        self.rng = rng
        self.step = 0
        self.segment: str | None = None
        self.segment_started = False
        self._segment_left = 0
        self._push = np.zeros(3)

    def executed(self, clean: np.ndarray) -> np.ndarray:
        p = self.perturbation
        action = np.array(clean, dtype=np.float64)
        if p.action_noise > 0:
            action[MOTION] += self.rng.normal(0.0, p.action_noise, 6)
        self.segment_started = False
        if self._segment_left == 0:
            self.segment = None
            if self.step >= p.quiet_steps:
                self._maybe_start_segment()
                self.segment_started = self.segment is not None
        if self._segment_left > 0:
            self._segment_left -= 1
            if self.segment == 'push':
                action[TRANSLATION] = self._push
            else:
                action[GRIPPER] = -clean[GRIPPER]
        self.step += 1
        action[MOTION] = np.clip(action[MOTION], -1.0, 1.0)
        return action

    def _maybe_start_segment(self) -> None:
        p = self.perturbation
        draw = self.rng.random()
        if draw < p.push_rate:
            direction = self.rng.normal(size=3)
            self._push = p.push_size * direction / np.linalg.norm(direction)
            self.segment, self._segment_left = 'push', p.push_steps
        elif draw < p.push_rate + p.gripper_rate:
            self.segment, self._segment_left = 'gripper', p.gripper_steps
