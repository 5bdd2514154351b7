"""Record LIBERO-Goal demonstrations with the scripted expert, in LIBERO's HDF5 layout, or measure its success.

    python -m ctr_vla_ros.tools.record_demos --tasks 1 6 7 8 --init-states 0 39 --sampled-inits 10000 10079 \
        --action-noise 0.1 --push-rate 0.01 --gripper-rate 0.003 --workers 2 --output demos/
    python -m ctr_vla_ros.tools.record_demos --tasks 1 6 7 8 --init-states 40 49 --measure --action-noise 0.1

One episode per (task, start): LIBERO's fixed initial states (`--init-states`) and placements drawn from the task's
BDDL regions with a seed (`--sampled-inits`). Only successful episodes are written, each as soon as it ends (with
the rest of a release that the success interrupted), one file per task named like the official ones
(`put_the_bowl_on_the_plate_demo.hdf5`); `--workers N` records N tasks
at once, one process each. With perturbed execution (`--action-noise`, `--push-rate`, `--gripper-rate`, see
`sim/perturbation.py`) the arm executes perturbed actions and the expert's clean ones are the labels, so the
demonstrations show how to come back from a policy's errors. `--frame-stride K` renders the cameras every K-th step
only (the expert needs no images, and rendering is nearly all of a recorded step's cost on a CPU): the files then
hold the frames of steps 0, K, 2K, ... beside every step's actions and states, the frames that a recording of every
step would hold at those steps.
A run is deterministic and resumable: demos already in a file are skipped, so a killed run continues where it
stopped (a failed start is tried again: it fails again, deterministically). The starts reserved for evaluation
(fixed states 40-49, seeds 0-9999) are never recorded; `--measure` runs any start without writing anything, and
without rendering (the expert reads the simulator's state; rendering does not touch the physics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import signal
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctr_vla_ros.control.robot_state import quaternion_to_axis_angle
from ctr_vla_ros.data.libero_hdf5 import DemoFileWriter, Demonstration, demo_file_name
from ctr_vla_ros.evaluation.starts import KINDS, Start, check_training_starts, starts
from ctr_vla_ros.sim.expert import LiberoGoalExpert
from ctr_vla_ros.sim.libero_env import LiberoSimulation, Observation
from ctr_vla_ros.sim.perturbation import PerturbedExecution, Perturbation

SUITE = 'libero_goal'
MAX_STEPS = 300  # OpenVLA-OFT's episode limit for LIBERO-Goal
FRAME_STRIDES = (1, 2, 4, 8)  # the divisors of the release's 8-step action chunk


@dataclasses.dataclass
class Episode:
    task_id: int
    start: str
    success: bool
    steps: int
    segments: int  # perturbation segments (pushes, wrong gripper commands) the expert recovered from or not
    demonstration: Demonstration | None  # only for a successful episode whose frames were kept


class _Frames:
    """Per-step columns of a demonstration, taken before each action as LIBERO's datasets do; the cameras' columns
    only at the steps whose frames were rendered."""

    def __init__(self, frame_stride: int) -> None:
        self.frame_stride = frame_stride
        self.columns: dict[str, list[np.ndarray]] = {field.name: [] for field in dataclasses.fields(Demonstration)
                                                     if field.name not in ('model_file', 'start', 'perturbation', 'frame_stride')}

    def add(self, observation: Observation, state: np.ndarray, action: np.ndarray, executed: np.ndarray) -> None:
        quaternion = observation.eef_quaternion_xyzw
        columns = self.columns
        columns['actions'].append(action)
        columns['executed_actions'].append(executed)
        # LiberoSimulation turns LIBERO's images upright; the datasets keep them as rendered, upside down.
        if observation.primary is not None:
            columns['agentview_rgb'].append(observation.primary[::-1, ::-1])
            columns['eye_in_hand_rgb'].append(observation.wrist[::-1, ::-1])
        columns['ee_states'].append(np.concatenate([observation.eef_position, quaternion_to_axis_angle(quaternion)]))
        columns['gripper_states'].append(observation.gripper_positions)
        columns['joint_states'].append(observation.joint_positions)
        columns['robot_states'].append(np.concatenate([observation.gripper_positions, observation.eef_position,
                                                       quaternion]))
        columns['states'].append(state)

    def demonstration(self, model_file: str, start: Start, perturbation: Perturbation) -> Demonstration:
        columns = {name: np.stack(values) for name, values in self.columns.items()}
        if not perturbation.active:  # the executed actions are the labels
            del columns['executed_actions']
        return Demonstration(**columns, model_file=model_file, start=start.key,
                             perturbation=json.dumps(perturbation.to_json()) if perturbation.active else '',
                             frame_stride=self.frame_stride)


def episode_generator(task_id: int, start: Start) -> np.random.Generator:
    """The perturbations' generator of one episode: a function of the task and the start alone."""
    return np.random.default_rng([task_id, KINDS.index(start.kind), start.index])


def run_episode(simulation: LiberoSimulation, start: Start, perturbation: Perturbation, max_steps: int,
                keep_frames: bool, frame_stride: int = 1) -> Episode:
    """The expert from one start until the task succeeds or `max_steps` pass. Seeded with the start alone, so the
    episode is the same whatever ran before it. The cameras render every `frame_stride`-th step; without frames to
    keep, never."""
    observation = start.reset(simulation)
    expert = LiberoGoalExpert(simulation)
    execution = PerturbedExecution(perturbation, episode_generator(simulation.task_id, start))
    frames = _Frames(frame_stride) if keep_frames else None
    segments = 0
    for step in range(max_steps):
        action = expert.act(observation)
        executed = execution.executed(action)
        segments += execution.segment_started
        if frames is not None:
            frames.add(observation, simulation.sim_state(), action, executed)
        observation = simulation.step(executed, render=keep_frames and (step + 1) % frame_stride == 0)
        if observation.success:
            demonstration = None
            if frames is not None:
                _record_release(simulation, expert, execution, frames, observation, step + 1, max_steps)
                demonstration = frames.demonstration(simulation.model_xml(), start, perturbation)
            return Episode(simulation.task_id, start.key, True, step + 1, segments, demonstration)
    return Episode(simulation.task_id, start.key, False, max_steps, segments, None)


# The expert's last phases of a placement: LIBERO's success fires as soon as the held object touches its destination.
PLACING_PHASES = ('lower onto the destination', 'release')


def _record_release(simulation: LiberoSimulation, expert: LiberoGoalExpert, execution: PerturbedExecution,
                    frames: _Frames, observation: Observation, step: int, max_steps: int) -> None:
    """The rest of a placement that the task's success interrupted. LIBERO's success fires when the held object
    touches its destination, during the last centimetres of the descent or the first steps of the release, so a
    demonstration that ended there would hardly ever show the gripper opening: the policy learns to carry the object
    to the release point and hover there. The descent and the release (GRIPPER_STEPS) are recorded to their end; a
    demonstration that ends in any other phase (turning a knob, opening a drawer) is left as it is."""
    for placing_step in range(step, max_steps):
        action = expert.act(observation)
        if expert.phase not in PLACING_PHASES:
            return
        executed = execution.executed(action)
        frames.add(observation, simulation.sim_state(), action, executed)
        observation = simulation.step(executed, render=(placing_step + 1) % frames.frame_stride == 0)


def record(task_ids: list[int], chosen: list[Start], perturbation: Perturbation, output: Path, resolution: int,
           max_steps: int, workers: int = 1, frame_stride: int = 1) -> list[Episode]:
    """Record every (task, start) not in the output files yet; returns the episodes run (without their frames).
    With several workers, each task is recorded by one worker process (one writer per file), so the files are the
    same whatever the number of workers: an episode depends on its task and start alone."""
    check_training_starts(chosen)
    parallel = workers > 1 and len(task_ids) > 1
    jobs = [(task_id, chosen, perturbation, output, resolution, max_steps, frame_stride, position if parallel else None)
            for position, task_id in enumerate(task_ids)]
    if not parallel:
        return [episode for job in jobs for episode in _record_task(*job)]
    context = multiprocessing.get_context('spawn')  # a fresh process per worker: no inherited MuJoCo state
    # A recording stopped with SIGTERM (kill, a job scheduler) stops its workers too, as Ctrl-C does: leaving the
    # pool terminates them, where an orphaned worker would go on writing beside the next run.
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with context.Pool(min(workers, len(jobs))) as pool:
            return [episode for episodes in pool.starmap(_record_task, jobs) for episode in episodes]
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _exit_on_sigterm(signal_number: int, frame: object) -> None:
    raise SystemExit(128 + signal_number)


def _record_task(task_id: int, chosen: list[Start], perturbation: Perturbation, output: Path, resolution: int,
                 max_steps: int, frame_stride: int, position: int | None) -> list[Episode]:
    """Record one task's starts that are not in its file yet, each demo written as soon as it ends. `position`: the
    line of this task's progress bar among the workers' (None: a single bar)."""
    simulation = LiberoSimulation(SUITE, task_id, resolution=resolution)
    episodes = []
    try:
        with open(simulation.bddl_file) as bddl:
            writer = DemoFileWriter(output / demo_file_name(simulation.task_name), simulation.problem_info(),
                                    bddl.read())
        recorded = writer.starts()
        with tqdm(total=len(chosen), initial=len(recorded & {start.key for start in chosen}), unit='demo',
                  desc=f'task {task_id}', position=position) as progress:
            for start in chosen:
                if start.key in recorded:
                    continue
                episode = run_episode(simulation, start, perturbation, max_steps, keep_frames=True,
                                      frame_stride=frame_stride)
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
    return episodes


def measure(task_ids: list[int], chosen: list[Start], perturbation: Perturbation, max_steps: int) -> list[Episode]:
    """The expert's episodes over the given tasks and starts, nothing written."""
    episodes = []
    progress = tqdm(total=len(task_ids) * len(chosen), unit='episode')
    for task_id in task_ids:
        simulation = LiberoSimulation(SUITE, task_id, resolution=128)
        try:
            for start in chosen:
                progress.set_description(f'task {task_id} {start.key}')
                episodes.append(run_episode(simulation, start, perturbation, max_steps, keep_frames=False))
                tqdm.write(_outcome(episodes[-1]))  # one line per episode: a killed run still leaves its figures
                progress.update()
        finally:
            simulation.close()
    progress.close()
    return episodes


def _outcome(episode: Episode) -> str:
    result = f'success in {episode.steps} steps' if episode.success else f'no success in {episode.steps} steps'
    return f'task {episode.task_id} {episode.start} ({episode.segments} perturbation segments): {result}'


def summarize(episodes: list[Episode]) -> dict[int, dict]:
    """Per task: successes, attempts, failed initial states and episode lengths of the successes."""
    summary = {}
    for task_id in sorted({episode.task_id for episode in episodes}):
        task_episodes = [episode for episode in episodes if episode.task_id == task_id]
        lengths = [episode.steps for episode in task_episodes if episode.success]
        summary[task_id] = {
            'successes': len(lengths), 'episodes': len(task_episodes),
            'failed_starts': [episode.start for episode in task_episodes if not episode.success],
            'segments': sum(episode.segments for episode in task_episodes),
            'steps_mean': float(np.mean(lengths)) if lengths else None,
            'steps_min': min(lengths, default=None), 'steps_max': max(lengths, default=None),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', type=int, nargs='+', required=True, help='LIBERO-Goal task ids')
    parser.add_argument('--init-states', type=int, nargs=2, metavar=('FIRST', 'LAST'),
                        help="LIBERO's fixed initial states FIRST..LAST (inclusive) of every task")
    parser.add_argument('--sampled-inits', type=int, nargs=2, metavar=('FIRST', 'LAST'),
                        help="placements drawn from each task's BDDL regions with seeds FIRST..LAST (inclusive)")
    parser.add_argument('--output', type=Path, default=Path('demos'), help='directory of the HDF5 files')
    parser.add_argument('--resolution', type=int, choices=(128, 256), default=128,
                        help="camera images (LIBERO's datasets: 128; OpenVLA-OFT's regenerated ones: 256)")
    parser.add_argument('--frame-stride', type=int, choices=FRAME_STRIDES, default=1,
                        help='render the cameras every K-th step only (a divisor of the 8-step action chunk, so '
                             'that frames one chunk apart are both in the file)')
    parser.add_argument('--max-steps', type=int, default=MAX_STEPS)
    defaults = Perturbation()
    parser.add_argument('--action-noise', type=float, default=defaults.action_noise,
                        help='standard deviation of the noise on every executed motion component (action units)')
    parser.add_argument('--push-rate', type=float, default=defaults.push_rate,
                        help=f'probability per step of a push off the path ({defaults.push_steps} steps)')
    parser.add_argument('--gripper-rate', type=float, default=defaults.gripper_rate,
                        help=f'probability per step of a wrong gripper command ({defaults.gripper_steps} steps)')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes recording in parallel, one task each (one per core)')
    parser.add_argument('--measure', action='store_true', help='only measure the success rate, write no demos')
    parser.add_argument('--report', type=Path, help='also write the per-task summary here as JSON')
    args = parser.parse_args(argv)
    if args.init_states is None and args.sampled_inits is None:
        parser.error('give --init-states, --sampled-inits or both')
    chosen = starts(args.init_states, args.sampled_inits)
    try:
        perturbation = Perturbation(action_noise=args.action_noise, push_rate=args.push_rate,
                                    gripper_rate=args.gripper_rate)
        if args.measure:
            episodes = measure(args.tasks, chosen, perturbation, args.max_steps)
        else:
            episodes = record(args.tasks, chosen, perturbation, args.output, args.resolution, args.max_steps,
                              args.workers, args.frame_stride)
    except ValueError as error:
        parser.error(str(error))
    summary = summarize(episodes)
    if not summary:
        print('nothing to run: every demo is already recorded')
    for task_id, task in summary.items():
        lengths = (f'episode length mean {task["steps_mean"]:.1f} (min {task["steps_min"]}, max {task["steps_max"]})'
                   if task['successes'] else 'no success')
        print(f'task {task_id}: {task["successes"]}/{task["episodes"]} successful, {lengths}, '
              f'{task["segments"]} perturbation segments, failed starts {task["failed_starts"]}')
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({'starts': [start.key for start in chosen],
                                           'perturbation': perturbation.to_json(), 'tasks': summary}, indent=2))


if __name__ == '__main__':
    main()
