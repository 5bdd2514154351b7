"""One closed-loop episode in one process, as the ROS stack runs it (`bringup.launch.py robot:=sim`, lockstep
simulation time), without the topics in between.

The policy node's rules are the node's own code: its parameter files (config/ctr_vla.yaml, config/robot_sim.yaml)
give the settings, the `Supervisor` decides every command, `run_query` computes each chunk, `state_refusal` checks
the robot state; the simulation node's rule for a command is `command_action`. What the topics add over ROS is
timing, and in lockstep simulation time the timing is fixed:
- at each step the simulation publishes both cameras and the robot state stamped with the step's time, then the
  policy node's control tick runs;
- a query is requested at a tick and its chunk is ready by the next tick (the simulation renders for longer than
  the model computes), so the tick that asks for a chunk sends a HOLD and the chunk's first step follows;
- the harness enables the policy once the episode's first observation is out, so the first step is held.
Only the frames a query can use are rendered (`Supervisor.wants_frames`); a query that found an unrendered frame
would be a bug here and raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctr_vla_ros.control.chunk_execution import ActionConvention, DeltaLimits
from ctr_vla_ros.control.query_execution import run_query
from ctr_vla_ros.control.robot_state import libero_state, state_refusal
from ctr_vla_ros.control.supervisor import CommandKind, Supervisor, SupervisorSettings
from ctr_vla_ros.evaluation.starts import Start
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.sim.libero_env import CONTROL_PERIOD, LiberoSimulation, Observation, command_action
from ctr_vla_ros.tools.node_processes import CONFIG, parameter_file_values, robot_config


@dataclasses.dataclass(frozen=True)
class NodeRules:
    """The policy node's settings that decide what the arm does, as its parameter files give them."""

    convention: ActionConvention
    supervisor: SupervisorSettings
    range_margin: float  # proprio_range_margin
    rotate180: bool
    center_crop: bool

    @classmethod
    def from_parameter_files(cls, parameter_files: Sequence[Path] | None = None) -> NodeRules:
        values = parameter_file_values('ctr_vla_policy', parameter_files or (CONFIG, robot_config('sim')))
        if abs(1.0 / values['control_rate'] - CONTROL_PERIOD) > 1e-9:
            raise ValueError(f'the simulation steps at {1 / CONTROL_PERIOD:.0f} Hz, the parameter files set a '
                             f'control rate of {values["control_rate"]} Hz')
        limits = DeltaLimits(tuple(values['max_translation_step']) + tuple(values['max_rotation_step']) + (1.0,))
        return cls(
            convention=ActionConvention(values['translation_scale'], values['rotation_scale'],
                                        values['gripper_convention']),
            supervisor=SupervisorSettings(
                camera_names=tuple(values['camera_names']), camera_timeout=values['camera_timeout'],
                pair_tolerance=values['pair_tolerance'], state_timeout=values['proprio_timeout'],
                execution_mode=values['execution_mode'], requery_remaining=values['requery_remaining'],
                limits=limits),
            range_margin=values['proprio_range_margin'], rotate180=values['rotate180'],
            center_crop=values['center_crop'])


@dataclasses.dataclass
class QueryRecord:
    """One query of an episode: what the model did and where the arm was."""

    step: int
    keyframe_reason: str
    normalized_actions: np.ndarray  # (chunk, action_dim)
    vision_reuse: list[float]  # per camera
    llm_reuse: list[float]  # per camera
    executed_flops: float
    full_recompute_flops: float
    time: float  # s, the whole predict
    eef_position: np.ndarray  # (3,) m
    gripper_opening: float  # m, the two fingers apart
    goal_distances: dict[str, float]  # m, end effector to each object of the task's goal

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record['normalized_actions'] = np.round(self.normalized_actions, 5).tolist()
        record['eef_position'] = np.round(self.eef_position, 5).tolist()
        return record


@dataclasses.dataclass
class EpisodeResult:
    task_id: int
    start: Start
    instruction: str
    success: bool
    steps: int
    hold_steps: int
    queries: list[QueryRecord]
    refusals: list[str]  # states refused (the arm stopped), in order, one per run of refusals


def goal_objects(simulation: LiberoSimulation) -> list[str]:
    """The objects and fixtures named by the task's goal predicates (the bowl and the stove, a knob's stove)."""
    names = []
    for predicate in simulation.goal:
        names += [name for name in predicate[1:] if name in simulation.env.env.obj_body_id]
    return sorted(set(names))


def run_episode(simulation: LiberoSimulation, policy: VlaPolicy, rules: NodeRules, task_id: int, start: Start,
                max_steps: int) -> EpisodeResult:
    """One episode from `start`: until the task succeeds or `max_steps` simulation steps (holds included) pass."""
    observation = start.reset(simulation)
    objects = goal_objects(simulation)
    supervisor = Supervisor(rules.supervisor)
    supervisor.set_instruction(simulation.instruction)
    policy.engine.reset('episode_reset')
    statistics = policy.statistics['proprio']
    queries: list[QueryRecord] = []
    refusals: list[str] = []
    held_gripper = -1.0
    now = 0.0
    steps = hold_steps = 0
    while True:
        # The simulation publishes the observation of `now`; the policy node takes it in.
        for camera, image in enumerate((observation.primary, observation.wrist)):
            supervisor.add_frame(camera, now, (image, steps), now)
        state = libero_state(observation.eef_position, observation.eef_quaternion_xyzw,
                             observation.gripper_positions)
        refusal = state_refusal(state, policy.layout.proprio_dim, statistics, rules.range_margin)
        if refusal:
            if not refusals or refusals[-1] != refusal:
                refusals.append(refusal)
            supervisor.refuse_state(refusal)
        else:
            supervisor.set_state(state, now)
        # Its control tick, and the query the tick asked for (ready by the next tick).
        command = supervisor.tick(now).command
        if steps == 0:
            supervisor.set_enabled(True, now)  # the first observation went out while the policy was disabled
        query = supervisor.wait_for_query(timeout=0)
        if query is not None:
            unrendered = [camera for camera, (image, _) in enumerate(query.frames.frames) if image is None]
            if unrendered:
                raise RuntimeError(f'step {steps}: the query uses frames of cameras {unrendered} that were not '
                                   'rendered')
            outcome = run_query(policy, rules.convention, supervisor, query)
            if outcome.prediction is not None:
                report = outcome.prediction.report
                queries.append(QueryRecord(
                    step=steps, keyframe_reason=report.keyframe_reason,
                    normalized_actions=outcome.prediction.normalized_actions,
                    vision_reuse=[float(value) for value in report.vision_reuse],
                    llm_reuse=[float(value) for value in report.llm_reuse],
                    executed_flops=float(report.flops.total),
                    full_recompute_flops=float(report.full_recompute_flops.total),
                    time=outcome.latency, eef_position=observation.eef_position.copy(),
                    gripper_opening=float(observation.gripper_positions[0] - observation.gripper_positions[1]),
                    goal_distances={name: float(np.linalg.norm(simulation.object_position(name)
                                                               - observation.eef_position)) for name in objects}))
        # The simulation executes the step's command.
        motion = command is not None and command.kind is CommandKind.MOTION
        if motion:
            action, held_gripper = command_action(True, command.translation, command.rotation, command.gripper,
                                                  held_gripper)
        else:
            action, held_gripper = command_action(False, np.zeros(3), np.zeros(3), 0.0, held_gripper)
            hold_steps += 1
        observation = simulation.step(action, render=supervisor.wants_frames())
        steps += 1
        now += CONTROL_PERIOD
        if observation.success or steps >= max_steps:
            return EpisodeResult(task_id, start, simulation.instruction, observation.success, steps, hold_steps,
                                 queries, refusals)
