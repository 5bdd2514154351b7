"""The rules that decide whether the arm moves, without ROS: the policy node hands every input to the supervisor
with the time it arrived, runs the queries it asks for, and publishes the command `tick` returns.

Modes:
  DISABLED  motion not enabled (~/enable): no command at all (dry run skips this mode: it runs without enabling);
  WAITING   enabled, but an input is missing, stale or refused: STOP every tick;
  RUNNING   every input valid: chunks are requested and executed, MOTION or HOLD every tick;
  FAULT     the model failed on valid inputs: STOP every tick until ~/enable or ~/reset.

Commands (one per control tick while enabled; none in dry run):
  MOTION  the next step of the current chunk, clamped;
  HOLD    running, but no step to execute this tick (the next chunk is being computed): zero motion;
  STOP    not running, or a reset / disable / shutdown: zero motion.
HOLD and STOP carry the last commanded gripper value, so a stop never opens or closes the gripper; before the first
MOTION that value is NaN: "leave the gripper as it is".

A chunk is only executed if nothing invalidated it while it was computed: a reset, an instruction change, a refused
robot state or leaving RUNNING drop the queued chunk and the one in flight.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
from typing import Any

import numpy as np

from ctr_vla_ros.control.chunk_execution import ChunkExecutor, DeltaLimits
from ctr_vla_ros.control.frame_pairing import FramePairer, FrameSet


class Mode(enum.Enum):
    DISABLED = 'disabled'
    WAITING = 'waiting for input'
    RUNNING = 'running'
    FAULT = 'fault'


class CommandKind(enum.IntEnum):
    """Same values as the EndEffectorDelta message's STOP / HOLD / MOTION constants."""

    STOP = 0
    HOLD = 1
    MOTION = 2


@dataclasses.dataclass(frozen=True)
class Command:
    kind: CommandKind
    translation: np.ndarray  # (3,) m, zero unless MOTION
    rotation: np.ndarray  # (3,) rad, axis-angle, zero unless MOTION
    gripper: float  # -1 open .. +1 close; NaN: no gripper command given yet
    chunk_id: int = 0  # 0 unless MOTION
    index_in_chunk: int = 0


@dataclasses.dataclass(frozen=True)
class Query:
    """What the inference thread computes a chunk from, snapshotted when the query was requested."""

    frames: FrameSet
    state: np.ndarray
    instruction: str
    generation: int  # the chunk is dropped if the supervisor's generation moved on meanwhile
    engine_reset: str | None = None  # reset the CTR engine with this keyframe reason before predicting


class InstructionUpdate(enum.Enum):
    REFUSED_EMPTY = 'refused: empty'
    FIRST = 'first'
    CHANGED = 'changed'
    UNCHANGED = 'unchanged'


@dataclasses.dataclass(frozen=True)
class Tick:
    command: Command | None  # what to publish on this control tick (None: nothing)
    mode: Mode
    problems: tuple[str, ...]
    previous_mode: Mode  # the mode at the previous tick

    @property
    def mode_changed(self) -> bool:
        return self.mode is not self.previous_mode


@dataclasses.dataclass(frozen=True)
class Status:
    """A snapshot for /diagnostics."""

    mode: Mode
    enabled: bool
    problems: tuple[str, ...]
    camera_ages: tuple[float, ...]  # s since each camera's newest accepted frame (inf: none yet)
    state_age: float  # s since the newest accepted robot state (inf: none)
    chunks: int
    clamped_dimensions: int
    last_error: str


@dataclasses.dataclass(frozen=True)
class SupervisorSettings:
    camera_names: tuple[str, ...]
    camera_timeout: float  # s: a camera silent for longer stops motion
    pair_tolerance: float  # s: largest stamp difference between the frames of one query
    state_timeout: float  # s: a robot state older than this stops motion
    execution_mode: str  # open_loop or overlap (see chunk_execution.py)
    requery_remaining: int
    limits: DeltaLimits
    dry_run: bool = False


class Supervisor:
    """Thread-safe: the node's executor thread feeds inputs and ticks; the inference thread waits for queries."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        cameras = len(settings.camera_names)
        self._lock = threading.Lock()
        self._query_ready = threading.Condition(self._lock)
        self._executor = ChunkExecutor(settings.limits, settings.execution_mode, settings.requery_remaining)
        self._pairer = FramePairer(cameras, settings.pair_tolerance, settings.camera_timeout)
        self._camera_times: list[float | None] = [None] * cameras  # arrival time of each camera's newest frame
        self._camera_refusals = [''] * cameras  # why the newest frames were refused ('' once a good one arrives)
        self._instruction: str | None = None
        self._instruction_refusal = ''
        self._state: np.ndarray | None = None
        self._state_time = -math.inf
        self._state_refusal = ''
        self._enabled = False
        self._fault = ''  # the model error; '' when none
        self._last_error = ''
        self._mode = Mode.DISABLED
        self._generation = 0
        self._pending: Query | None = None  # requested, not yet taken by the inference thread
        self._inference_busy = False  # a query is requested or being computed
        self._query_wanted = False  # the executor needs a chunk and waits for a camera set not used yet
        self._last_query_frames: tuple[Any, ...] | None = None
        self._engine_reset: str | None = None
        self._gripper = math.nan  # the last commanded gripper value
        self._chunks = 0
        self._clamped_dimensions = 0
        self._closed = False

    # ------------------------------------------------------------------------------------------ inputs
    def add_frame(self, camera: int, stamp: float, frame: Any, now: float) -> None:
        with self._lock:
            self._pairer.add(camera, stamp, frame)
            self._camera_times[camera] = now
            self._camera_refusals[camera] = ''
            if self._query_wanted and self._mode is Mode.RUNNING:
                self._request_query()  # the fresh camera set the executor was waiting for

    def refuse_frame(self, camera: int, reason: str) -> None:
        with self._lock:
            self._camera_refusals[camera] = reason

    def set_instruction(self, text: str) -> InstructionUpdate:
        instruction = text.strip()
        with self._lock:
            if not instruction:
                self._instruction = None
                self._instruction_refusal = 'the last instruction received was empty'
                self._drop_chunks()
                return InstructionUpdate.REFUSED_EMPTY
            self._instruction_refusal = ''
            if instruction == self._instruction:
                return InstructionUpdate.UNCHANGED
            first = self._instruction is None
            self._instruction = instruction
            if not first:
                self._drop_chunks()  # the engine keyframes by itself on the new prompt
            return InstructionUpdate.FIRST if first else InstructionUpdate.CHANGED

    def set_state(self, state: np.ndarray, now: float) -> None:
        with self._lock:
            self._state = np.array(state, dtype=np.float64)
            self._state_time = now
            self._state_refusal = ''

    def refuse_state(self, reason: str) -> None:
        """A refused state invalidates the held one at once: no chunk may start from a state older than it."""
        with self._lock:
            self._state = None
            self._state_refusal = reason
            self._drop_chunks()

    # ----------------------------------------------------------------------------------------- requests
    def set_enabled(self, enabled: bool, now: float) -> tuple[str, Command | None]:
        """The answer for the caller, and the STOP to publish when motion is disabled."""
        with self._lock:
            self._enabled = enabled
            self._fault = ''
            self._last_error = ''
            if not enabled:
                self._drop_chunks()
                return 'disabled', self._stop()
            problems = self._problems(now)
        if problems:
            return 'enabled; no motion until these are resolved: ' + '; '.join(problems), None
        return 'enabled', None

    def reset(self) -> Command | None:
        """Drop the queued and in-flight chunks, clear a fault, keyframe the CTR engine at the next query."""
        with self._lock:
            self._drop_chunks()
            self._engine_reset = 'episode_reset'
            self._fault = ''
            self._last_error = ''
            return self._stop()

    def shutdown(self) -> Command | None:
        """The last command before the node goes away; wakes and ends the inference thread."""
        with self._lock:
            self._closed = True
            self._drop_chunks()
            self._query_ready.notify_all()
            return self._stop()

    # ----------------------------------------------------------------------------------- control tick
    def tick(self, now: float) -> Tick:
        with self._lock:
            problems = tuple(self._problems(now))
            if not self._enabled and not self.settings.dry_run:
                mode = Mode.DISABLED
            elif self._fault:
                mode = Mode.FAULT
            elif problems:
                mode = Mode.WAITING
            else:
                mode = Mode.RUNNING
            previous, self._mode = self._mode, mode

            if mode is not Mode.RUNNING:
                if self._executor.remaining or self._inference_busy:
                    self._drop_chunks()
                command = None if mode is Mode.DISABLED else self._stop()
                return Tick(command, mode, problems, previous)

            if self._executor.needs_query() and not self._inference_busy:
                self._query_wanted = True
                self._request_query()
            planned = self._executor.next_delta()
            if self.settings.dry_run:
                command = None
            elif planned is None:
                command = self._still(CommandKind.HOLD)
            else:
                self._gripper = float(planned.delta[6])
                self._clamped_dimensions += planned.clamped_dimensions
                command = Command(CommandKind.MOTION, planned.delta[0:3].copy(), planned.delta[3:6].copy(),
                                  self._gripper, planned.chunk_id, planned.index_in_chunk)
            return Tick(command, mode, problems, previous)

    def wants_frames(self) -> bool:
        """Whether the next tick may start a query: the executor needs a chunk and none is being computed, so camera
        frames that arrive before that tick may be used. (A simulation that renders on demand asks this.)"""
        with self._lock:
            return self._executor.needs_query() and not self._inference_busy

    # ---------------------------------------------------------------------------------- inference side
    def wait_for_query(self, timeout: float | None = None) -> Query | None:
        """Blocks until a query is requested; None once the supervisor shuts down (or after `timeout` seconds)."""
        with self._lock:
            self._query_ready.wait_for(lambda: self._pending is not None or self._closed, timeout)
            if self._closed or self._pending is None:
                return None
            query = dataclasses.replace(self._pending, engine_reset=self._engine_reset)
            self._pending = None
            self._engine_reset = None
            return query

    def finish_query(self, query: Query, deltas: np.ndarray) -> int | None:
        """Queue a computed chunk ((chunk, 7) deltas: m, rad, gripper command). Returns its chunk id, or None if the
        chunk was invalidated while it was computed (it is dropped)."""
        with self._lock:
            self._inference_busy = False
            if query.generation != self._generation:
                return None
            self._chunks += 1
            self._executor.load(deltas, self._chunks)
            return self._chunks

    def fail_query(self, error: str, model_fault: bool) -> None:
        """A query that produced no chunk: a refused input (motion waits for the next query) or a model fault
        (motion stops until ~/enable or ~/reset)."""
        with self._lock:
            self._inference_busy = False
            self._last_error = error
            if model_fault:
                self._fault = error

    # ------------------------------------------------------------------------------------------ status
    def status(self, now: float) -> Status:
        with self._lock:
            return Status(
                mode=self._mode, enabled=self._enabled, problems=tuple(self._problems(now)),
                camera_ages=tuple(math.inf if received is None else now - received
                                  for received in self._camera_times),
                state_age=now - self._state_time if self._state is not None else math.inf,
                chunks=self._chunks, clamped_dimensions=self._clamped_dimensions, last_error=self._last_error)

    # -------------------------------------------------------------------- internals (caller holds the lock)
    def _problems(self, now: float) -> list[str]:
        settings, problems = self.settings, []
        for camera, name in enumerate(settings.camera_names):
            received, refusal = self._camera_times[camera], self._camera_refusals[camera]
            if received is not None and now - received <= settings.camera_timeout:
                continue
            if refusal:
                problems.append(f'camera {name}: frames refused: {refusal}')
            elif received is None:
                problems.append(f'camera {name}: no frame yet')
            else:
                problems.append(f'camera {name}: stale, silent for {now - received:.2f} s')
        if not problems and self._pairer.latest() is None:
            problems.append(f'cameras out of sync: no frames within {settings.pair_tolerance} s of each other')
        if self._instruction is None:
            problems.append(f'instruction: {self._instruction_refusal or "none yet"}')
        if self._state is None:
            problems.append(f'robot state: {"refused: " + self._state_refusal if self._state_refusal else "none yet"}')
        elif now - self._state_time > settings.state_timeout:
            problems.append(f'robot state: stale, {now - self._state_time:.2f} s old')
        if self._fault:
            problems.append(f'model fault: {self._fault}')
        return problems

    def _request_query(self) -> None:
        """Snapshot the inputs for the inference thread, unless the newest camera set was already used by a query:
        then the next set to arrive triggers it (a chunk is never computed twice from the same frames)."""
        frames = self._pairer.latest()
        if frames is None or self._state is None or self._instruction is None or self._already_used(frames):
            return
        self._pending = Query(frames, self._state.copy(), self._instruction, self._generation)
        self._last_query_frames = frames.frames
        self._query_wanted = False
        self._inference_busy = True
        self._query_ready.notify()

    def _already_used(self, frames: FrameSet) -> bool:
        """Identity, not stamps: stamps may go backwards (a replayed bag, a simulation reset)."""
        last = self._last_query_frames
        return last is not None and all(new is old for new, old in zip(frames.frames, last))

    def _drop_chunks(self) -> None:
        self._executor.clear()
        self._generation += 1
        if self._pending is not None:  # requested but not started: nothing will come back for it
            self._pending = None
            self._inference_busy = False
        self._query_wanted = False

    def _still(self, kind: CommandKind) -> Command:
        return Command(kind, np.zeros(3), np.zeros(3), self._gripper)

    def _stop(self) -> Command | None:
        return None if self.settings.dry_run else self._still(CommandKind.STOP)
