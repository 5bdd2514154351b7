"""Record LIBERO query-cadence sequences for the benchmarks, in the format of data/libero/*.npz.

A scripted pick-and-place controller (phase-based proportional control of the end effector: above the target
object, down, grasp, up, above the goal object, down, release, up; it starts over when a cycle ends) moves the arm
for the whole episode, so the frames show realistic motion; task success is incidental. One observation is saved
every `query_every` control steps (OpenVLA-OFT's LIBERO cadence: 8).

    python -m ctr_vla_ros.tools.record_libero --suite libero_goal --task 5 --init-state 2 \
        --output recorded/goal_t5_i2.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctr_vla_ros.control.robot_state import libero_state
from ctr_vla_ros.sim.libero_env import CONTROL_PERIOD, TRANSLATION_PER_UNIT, LiberoSimulation, Observation

PHASES = ('above_target', 'down_to_target', 'grasp', 'lift', 'above_goal', 'down_to_goal', 'release', 'retreat')
HOVER_HEIGHT = 0.12  # m above an object
GRASP_HEIGHT = 0.01  # m above the object's origin
POSITION_GAIN = 1.5  # action units per (5 cm of error)
REACHED = 0.015  # m: a phase's target counts as reached
GRIPPER_STEPS = 12  # control steps to close or open the gripper


class PickAndPlaceScript:
    """Phase-based proportional control towards points above / at the target and goal objects."""

    def __init__(self, target: str, goal: str) -> None:
        self.target, self.goal = target, goal
        self.phase = 0
        self.phase_steps = 0

    def action(self, observation: Observation) -> np.ndarray:
        phase = PHASES[self.phase]
        objects = observation.object_positions
        offsets = {'above_target': (self.target, HOVER_HEIGHT), 'down_to_target': (self.target, GRASP_HEIGHT),
                   'lift': (self.target, HOVER_HEIGHT), 'above_goal': (self.goal, HOVER_HEIGHT),
                   'down_to_goal': (self.goal, HOVER_HEIGHT / 2), 'retreat': (self.goal, HOVER_HEIGHT)}
        gripper = 1.0 if phase in ('grasp', 'lift', 'above_goal', 'down_to_goal') else -1.0
        self.phase_steps += 1
        if phase in ('grasp', 'release'):
            translation = np.zeros(3)
            done = self.phase_steps >= GRIPPER_STEPS
        else:
            name, height = offsets[phase]
            anchor = observation.eef_position if phase == 'lift' else objects[name]
            point = np.array([anchor[0], anchor[1], objects[name][2] + height])
            error = point - observation.eef_position
            translation = np.clip(POSITION_GAIN * error / TRANSLATION_PER_UNIT, -1.0, 1.0)
            done = np.linalg.norm(error) < REACHED or self.phase_steps > 60  # give up on a phase after 3 s
        if done:
            self.phase = (self.phase + 1) % len(PHASES)
            self.phase_steps = 0
        return np.concatenate([translation, np.zeros(3), [gripper]])


def record(suite: str, task_id: int, init_state: int, steps: int, query_every: int, resolution: int,
           settle_steps: int, target: str | None, goal: str | None) -> dict[str, np.ndarray]:
    simulation = LiberoSimulation(suite, task_id, init_state, resolution, settle_steps)
    try:
        observation = simulation.reset(init_state)
        names = sorted(observation.object_positions)
        script = PickAndPlaceScript(target or names[0], goal or names[-1])
        agentview, wrist, proprio, actions, query_steps, query_phase = [], [], [], [], [], []
        for step in tqdm(range(steps), desc=f'{suite} task {task_id}', unit='step'):
            if step % query_every == 0:
                agentview.append(observation.primary)
                wrist.append(observation.wrist)
                proprio.append(libero_state(observation.eef_position, observation.eef_quaternion_xyzw,
                                            observation.gripper_positions))
                query_steps.append(step)
                query_phase.append(PHASES[script.phase])
            action = script.action(observation)
            actions.append(action)
            observation = simulation.step(action)
        return {
            'agentview': np.stack(agentview), 'wrist': np.stack(wrist),
            'proprio8': np.stack(proprio).astype(np.float32),
            'actions': np.stack(actions).astype(np.float32), 'query_steps': np.array(query_steps, dtype=np.int32),
            'instruction': np.array(simulation.instruction), 'suite': np.array(suite), 'task_id': np.array(task_id),
            'init_state': np.array(init_state), 'render_res': np.array(resolution),
            'control_freq': np.array(round(1 / CONTROL_PERIOD)), 'query_every': np.array(query_every),
            'settle_steps': np.array(settle_steps), 'query_phase': np.array(query_phase),
            'phases': np.array(PHASES), 'target_object': np.array(script.target), 'goal': np.array(script.goal),
            'success': np.array(observation.success), 'script': np.array('ctr_vla_ros pick-and-place v1'),
        }
    finally:
        simulation.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default='libero_spatial')
    parser.add_argument('--task', type=int, default=0)
    parser.add_argument('--init-state', type=int, default=0)
    parser.add_argument('--steps', type=int, default=320, help='control steps (40 queries at 8 steps per query)')
    parser.add_argument('--query-every', type=int, default=8)
    parser.add_argument('--resolution', type=int, default=256)
    parser.add_argument('--settle-steps', type=int, default=10)
    parser.add_argument('--target', help='object to pick (default: the first object of the scene)')
    parser.add_argument('--goal', help='object to place on (default: the last object of the scene)')
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args(argv)
    data = record(args.suite, args.task, args.init_state, args.steps, args.query_every, args.resolution,
                  args.settle_steps, args.target, args.goal)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **data)
    print(f'{args.output}: {len(data["query_steps"])} queries of "{data["instruction"]}" '
          f'(target {data["target_object"]}, goal {data["goal"]}, success {bool(data["success"])})')


if __name__ == '__main__':
    main()
