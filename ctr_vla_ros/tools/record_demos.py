"""Record LIBERO-Goal demonstrations with the scripted expert, in LIBERO's HDF5 layout, or measure its success.

    python -m ctr_vla_ros.tools.record_demos --tasks 1 4 7 8 --output demos/
    python -m ctr_vla_ros.tools.record_demos --tasks 1 4 7 8 --init-states 0-49 --measure

One episode per (task, initial state); only successful episodes are written, each as soon as it ends, one file per
task named like the official ones (`put_the_bowl_on_the_plate_demo.hdf5`). A run is deterministic and resumable:
demos already in a file are skipped, so a killed run continues where it stopped (a failed initial state is tried
again: it fails again, deterministically). Initial states 40-49 of every task are held out for the closed-loop
evaluation of a learned policy and are never recorded; `--measure` runs them without writing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctr_vla_ros.control.robot_state import quaternion_to_axis_angle
from ctr_vla_ros.data.libero_hdf5 import DemoFileWriter, Demonstration, demo_file_name
from ctr_vla_ros.evaluation.starts import EVALUATION_FIXED, TRAINING_FIXED
from ctr_vla_ros.sim.expert import LiberoGoalExpert
from ctr_vla_ros.sim.libero_env import LiberoSimulation, Observation

SUITE = 'libero_goal'
MAX_STEPS = 300  # OpenVLA-OFT's episode limit for LIBERO-Goal


@dataclasses.dataclass
class Episode:
    task_id: int
    init_state: int
    success: bool
    steps: int
    demonstration: Demonstration | None  # only for a successful episode whose frames were kept


class _Frames:
    """Per-step columns of a demonstration, taken before each action as LIBERO's datasets do."""

    def __init__(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {field.name: [] for field in dataclasses.fields(Demonstration)
                                                     if field.name not in ('model_file', 'init_state_index')}

    def add(self, observation: Observation, state: np.ndarray, action: np.ndarray) -> None:
        quaternion = observation.eef_quaternion_xyzw
        columns = self.columns
        columns['actions'].append(action)
        # LiberoSimulation turns LIBERO's images upright; the datasets keep them as rendered, upside down.
        columns['agentview_rgb'].append(observation.primary[::-1, ::-1])
        columns['eye_in_hand_rgb'].append(observation.wrist[::-1, ::-1])
        columns['ee_states'].append(np.concatenate([observation.eef_position, quaternion_to_axis_angle(quaternion)]))
        columns['gripper_states'].append(observation.gripper_positions)
        columns['joint_states'].append(observation.joint_positions)
        columns['robot_states'].append(np.concatenate([observation.gripper_positions, observation.eef_position,
                                                       quaternion]))
        columns['states'].append(state)

    def demonstration(self, model_file: str, init_state: int) -> Demonstration:
        return Demonstration(**{name: np.stack(values) for name, values in self.columns.items()},
                             model_file=model_file, init_state_index=init_state)


def run_episode(simulation: LiberoSimulation, init_state: int, max_steps: int, keep_frames: bool) -> Episode:
    """The expert from one initial state until the task succeeds or `max_steps` pass. Seeded with the initial state's
    index, so the episode is the same whatever ran before it."""
    observation = simulation.reset(init_state, seed=init_state)
    expert = LiberoGoalExpert(simulation)
    frames = _Frames() if keep_frames else None
    for step in range(max_steps):
        action = expert.act(observation)
        if frames is not None:
            frames.add(observation, simulation.sim_state(), action)
        observation = simulation.step(action)
        if observation.success:
            demonstration = frames.demonstration(simulation.model_xml(), init_state) if frames is not None else None
            return Episode(simulation.task_id, init_state, True, step + 1, demonstration)
    return Episode(simulation.task_id, init_state, False, max_steps, None)


def record(task_ids: list[int], init_states: list[int], output: Path, resolution: int, max_steps: int) -> list[Episode]:
    """Record every (task, initial state) not in the output files yet; returns the episodes run."""
    held_out = sorted(set(init_states) & set(EVALUATION_FIXED))
    if held_out:
        raise ValueError(f'initial states {held_out} are held out for evaluation and are never recorded')
    episodes = []
    progress = tqdm(total=len(task_ids) * len(init_states), unit='demo')
    for task_id in task_ids:
        simulation = LiberoSimulation(SUITE, task_id, init_states[0], resolution)
        try:
            with open(simulation.bddl_file) as bddl:
                writer = DemoFileWriter(output / demo_file_name(simulation.task_name), simulation.problem_info(),
                                        bddl.read())
            recorded = writer.init_state_indices()
            progress.update(len(recorded & set(init_states)))
            for init_state in init_states:
                if init_state in recorded:
                    continue
                progress.set_description(f'task {task_id} init {init_state}')
                episode = run_episode(simulation, init_state, max_steps, keep_frames=True)
                if episode.success:
                    name = writer.write(episode.demonstration)
                    episode.demonstration = None  # written: free the frames
                    tqdm.write(f'{_outcome(episode)}, written as {name}')
                else:
                    tqdm.write(f'{_outcome(episode)}, not written')
                episodes.append(episode)
                progress.update()
        finally:
            simulation.close()
    progress.close()
    return episodes


def measure(task_ids: list[int], init_states: list[int], max_steps: int) -> list[Episode]:
    """The expert's episodes over the given tasks and initial states, nothing written."""
    episodes = []
    progress = tqdm(total=len(task_ids) * len(init_states), unit='episode')
    for task_id in task_ids:
        simulation = LiberoSimulation(SUITE, task_id, init_states[0], resolution=128)
        try:
            for init_state in init_states:
                progress.set_description(f'task {task_id} init {init_state}')
                episodes.append(run_episode(simulation, init_state, max_steps, keep_frames=False))
                tqdm.write(_outcome(episodes[-1]))  # one line per episode: a killed run still leaves its figures
                progress.update()
        finally:
            simulation.close()
    progress.close()
    return episodes


def _outcome(episode: Episode) -> str:
    result = f'success in {episode.steps} steps' if episode.success else f'no success in {episode.steps} steps'
    return f'task {episode.task_id} init state {episode.init_state}: {result}'


def summarize(episodes: list[Episode]) -> dict[int, dict]:
    """Per task: successes, attempts, failed initial states and episode lengths of the successes."""
    summary = {}
    for task_id in sorted({episode.task_id for episode in episodes}):
        task_episodes = [episode for episode in episodes if episode.task_id == task_id]
        lengths = [episode.steps for episode in task_episodes if episode.success]
        summary[task_id] = {
            'successes': len(lengths), 'episodes': len(task_episodes),
            'failed_init_states': [episode.init_state for episode in task_episodes if not episode.success],
            'steps_mean': float(np.mean(lengths)) if lengths else None,
            'steps_min': min(lengths, default=None), 'steps_max': max(lengths, default=None),
        }
    return summary


def parse_init_states(text: str) -> list[int]:
    """'0-39' or '0,3,7' or '0-9,20-29' -> the listed initial states, in order."""
    states = []
    for part in text.split(','):
        first, _, last = part.partition('-')
        states.extend(range(int(first), int(last or first) + 1))
    return states


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', type=int, nargs='+', required=True, help='LIBERO-Goal task ids')
    parser.add_argument('--init-states', type=parse_init_states,
                        default=list(TRAINING_FIXED), help='e.g. 0-39 (the default) or 0,3,7')
    parser.add_argument('--output', type=Path, default=Path('demos'), help='directory of the HDF5 files')
    parser.add_argument('--resolution', type=int, choices=(128, 256), default=128,
                        help="camera images (LIBERO's datasets: 128; OpenVLA-OFT's regenerated ones: 256)")
    parser.add_argument('--max-steps', type=int, default=MAX_STEPS)
    parser.add_argument('--measure', action='store_true', help='only measure the success rate, write no demos')
    parser.add_argument('--report', type=Path, help='also write the per-task summary here as JSON')
    args = parser.parse_args(argv)
    if args.measure:
        episodes = measure(args.tasks, args.init_states, args.max_steps)
    else:
        episodes = record(args.tasks, args.init_states, args.output, args.resolution, args.max_steps)
    summary = summarize(episodes)
    if not summary:
        print('nothing to run: every demo is already recorded')
    for task_id, task in summary.items():
        lengths = (f'episode length mean {task["steps_mean"]:.1f} (min {task["steps_min"]}, max {task["steps_max"]})'
                   if task['successes'] else 'no success')
        print(f'task {task_id}: {task["successes"]}/{task["episodes"]} successful, {lengths}, '
              f'failed initial states {task["failed_init_states"]}')
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({'init_states': args.init_states, 'tasks': summary}, indent=2))


if __name__ == '__main__':
    main()
