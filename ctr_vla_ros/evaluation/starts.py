"""Where an episode starts: one of LIBERO's fixed initial states of the task, or a fresh placement drawn from the
task's BDDL placement regions with a seed. Ranges are reserved so that no policy is evaluated on starts it was
trained on."""

from __future__ import annotations

import dataclasses

from ctr_vla_ros.sim.libero_env import LiberoSimulation, Observation

# Reserved: evaluation only / training only (README, "Starts"). LIBERO ships 50 fixed initial states per task.
EVALUATION_FIXED = range(40, 50)
TRAINING_FIXED = range(0, 40)
EVALUATION_SEEDS = range(0, 10_000)
FIRST_TRAINING_SEED = 10_000

KINDS = ('fixed', 'sampled')


@dataclasses.dataclass(frozen=True, order=True)
class Start:
    kind: str  # 'fixed': LIBERO's initial state `index`; 'sampled': a placement drawn with seed `index`
    index: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f'a start is one of {KINDS}, got {self.kind!r}')
        if self.index < 0:
            raise ValueError(f'a start index is >= 0, got {self.index}')

    @property
    def key(self) -> str:
        return f'{self.kind}-{self.index}'

    @classmethod
    def from_key(cls, key: str) -> Start:
        kind, index = key.rsplit('-', 1)
        return cls(kind, int(index))

    @property
    def reserved_for_evaluation(self) -> bool:
        return self.index in (EVALUATION_FIXED if self.kind == 'fixed' else EVALUATION_SEEDS)

    def reset(self, simulation: LiberoSimulation) -> Observation:
        """The episode's first observation (objects settled). A fixed state seeds the fixtures with its index, as the
        simulation node and the demonstration recorder do, so an episode depends on its start alone."""
        if self.kind == 'fixed':
            return simulation.reset(self.index, seed=self.index)
        return simulation.reset_sampled(self.index)


def starts(fixed: tuple[int, int] | None, sampled: tuple[int, int] | None) -> list[Start]:
    """Fixed initial states FIRST..LAST and sampled placements with seeds FIRST..LAST (both inclusive)."""
    chosen = []
    if fixed is not None:
        chosen += [Start('fixed', index) for index in range(fixed[0], fixed[1] + 1)]
    if sampled is not None:
        chosen += [Start('sampled', index) for index in range(sampled[0], sampled[1] + 1)]
    return chosen


def check_training_starts(chosen: list[Start]) -> None:
    """Refuse starts reserved for evaluation (for demonstrations and training data)."""
    reserved = [start.key for start in chosen if start.reserved_for_evaluation]
    if reserved:
        raise ValueError(f'reserved for evaluation, never for training: {", ".join(reserved[:5])}'
                         f'{" ..." if len(reserved) > 5 else ""} (training may use fixed states '
                         f'{TRAINING_FIXED.start}-{TRAINING_FIXED.stop - 1} and seeds from {FIRST_TRAINING_SEED})')
