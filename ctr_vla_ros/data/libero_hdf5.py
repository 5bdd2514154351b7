"""LIBERO's demonstration files: one HDF5 file per task, laid out as the official LIBERO datasets and OpenVLA-OFT's
regenerated ones (`put_the_bowl_on_the_plate_demo.hdf5`):

    data                          attrs: problem_info (JSON with language_instruction), num_demos, total, ...
    data/demo_N                   attrs: num_samples, init_state (the first MuJoCo state), model_file (MuJoCo XML)
        actions          (T, 7)   float64  delta position, delta axis-angle, gripper (-1 open, +1 close)
        states           (T, S)   float64  the flattened MuJoCo state before each action (replayable)
        robot_states     (T, 9)   float64  gripper finger positions (2), eef position (3), eef quaternion xyzw (4)
        rewards, dones   (T,)     uint8    1 at the last step only (every demonstration succeeded there)
        obs/agentview_rgb, obs/eye_in_hand_rgb   (T, H, W, 3) uint8, upside down as LIBERO renders them
        obs/ee_states    (T, 6)   float64  eef position + axis-angle; obs/ee_pos, obs/ee_ori are its two halves
        obs/gripper_states (T, 2) float64  finger joint positions
        obs/joint_states (T, 7)   float64  arm joint angles

The writer adds to each demo `start` (where it started: `fixed-N`, the task's recorded initial state N, or
`sampled-S`, a placement drawn with seed S; files of earlier versions have `init_state_index` N instead) and, for
demonstrations recorded with perturbed execution, `perturbation` (its settings as JSON) and `executed_actions`
(T, 7), what the arm was commanded; `actions` are then the expert's clean actions, the labels. A demonstration whose
cameras were rendered every k-th step only has `frame_stride` k: its two image datasets then hold the frames of steps
0, k, 2k, ... (ceil(T / k) of them), everything else every step. The reader depends on none of these: OpenVLA-OFT's regenerated files have none, so the instruction then comes from the file name, as their
converter takes it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

IMAGE_COMPRESSION = 'gzip'  # readable by every HDF5 build (lzf needs h5py's filter)
IMAGE_COMPRESSION_LEVEL = 4
OBSERVATION_KEYS = ('agentview_rgb', 'eye_in_hand_rgb', 'ee_states', 'gripper_states', 'joint_states')
LOCKED_FILE_WAIT = 600.0  # s a writer waits for readers to close the file (HDF5 locks it while open)
LOCKED_FILE_POLL = 5.0  # s


@dataclasses.dataclass
class Demonstration:
    actions: np.ndarray  # (T, 7)
    agentview_rgb: np.ndarray  # (T, H, W, 3) uint8, upside down (LIBERO's OpenGL image convention)
    eye_in_hand_rgb: np.ndarray  # (T, H, W, 3) uint8, upside down
    ee_states: np.ndarray  # (T, 6) eef position + axis-angle
    gripper_states: np.ndarray  # (T, 2)
    joint_states: np.ndarray  # (T, 7)
    robot_states: np.ndarray  # (T, 9)
    states: np.ndarray  # (T, S) flattened MuJoCo states
    model_file: str = ''  # the episode's MuJoCo model as XML (with `states`, what replays it), when known
    start: str | None = None  # where it started ('fixed-3', 'sampled-10000'), when known
    executed_actions: np.ndarray | None = None  # (T, 7) when the arm executed perturbed actions, not `actions`
    perturbation: str = ''  # the perturbation's settings as JSON, when perturbed
    frame_stride: int = 1  # the images are those of steps 0, frame_stride, 2 * frame_stride, ...

    def __len__(self) -> int:
        return len(self.actions)

    def image_steps(self) -> np.ndarray:
        """The steps whose camera images the demonstration holds, in the order of its image arrays."""
        return np.arange(0, len(self), self.frame_stride)


def demo_file_name(task_name: str) -> str:
    """The official file name of a task's demonstrations, e.g. 'turn_on_the_stove_demo.hdf5'."""
    return f'{task_name}_demo.hdf5'


def instruction_from_file_name(path: str | Path) -> str:
    """'KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5' -> 'turn on the stove': the scene prefix (upper-case words)
    and the '_demo' suffix dropped."""
    words = Path(path).name.removesuffix('.hdf5').removesuffix('_demo').split('_')
    while words and not words[0].islower():
        words.pop(0)
    return ' '.join(words)


class DemoFileWriter:
    """Appends demonstrations to one task's file. The file is open only while a demo is written and closed (flushed)
    right after, so a killed recording keeps every finished demo. A demo interrupted while being written has no
    `num_samples` yet (it is written last) and is dropped when the file is opened again."""

    def __init__(self, path: str | Path, problem_info: dict[str, str], bddl_file_content: str = '') -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _open_for_appending(self.path) as file:
            data = file.require_group('data')
            data.attrs['problem_info'] = json.dumps(problem_info)
            data.attrs['macros_image_convention'] = 'opengl'  # images upside down, as LIBERO's datasets store them
            if bddl_file_content:
                data.attrs['bddl_file_content'] = bddl_file_content
            for name in [name for name in data if 'num_samples' not in data[name].attrs]:
                del data[name]
            _update_totals(data)

    def starts(self) -> set[str]:
        """The starts of the demos already in the file."""
        with h5py.File(self.path, 'r') as file:
            return {start for start in map(_start, file['data'].values()) if start is not None}

    def write(self, demonstration: Demonstration) -> str:
        """Add one demonstration as the next demo_N; returns its name."""
        length = len(demonstration)
        for key in ('agentview_rgb', 'eye_in_hand_rgb'):
            if len(getattr(demonstration, key)) != len(demonstration.image_steps()):
                raise ValueError(f'{key} holds {len(getattr(demonstration, key))} frames; {length} steps with '
                                 f'frame stride {demonstration.frame_stride} need {len(demonstration.image_steps())}')
        with _open_for_appending(self.path) as file:
            data = file['data']
            name = f'demo_{len(data)}'
            demo = data.create_group(name)
            demo.create_dataset('actions', data=demonstration.actions.astype(np.float64))
            demo.create_dataset('states', data=demonstration.states.astype(np.float64))
            demo.create_dataset('robot_states', data=demonstration.robot_states.astype(np.float64))
            last_step = np.zeros(length, dtype=np.uint8)
            last_step[-1] = 1
            demo.create_dataset('rewards', data=last_step)
            demo.create_dataset('dones', data=last_step)
            obs = demo.create_group('obs')
            for key in ('agentview_rgb', 'eye_in_hand_rgb'):
                obs.create_dataset(key, data=getattr(demonstration, key).astype(np.uint8),
                                   compression=IMAGE_COMPRESSION, compression_opts=IMAGE_COMPRESSION_LEVEL)
            obs.create_dataset('ee_states', data=demonstration.ee_states.astype(np.float64))
            obs.create_dataset('ee_pos', data=demonstration.ee_states[:, :3].astype(np.float64))
            obs.create_dataset('ee_ori', data=demonstration.ee_states[:, 3:].astype(np.float64))
            obs.create_dataset('gripper_states', data=demonstration.gripper_states.astype(np.float64))
            obs.create_dataset('joint_states', data=demonstration.joint_states.astype(np.float64))
            demo.attrs['init_state'] = demonstration.states[0].astype(np.float64)
            if demonstration.model_file:
                demo.attrs['model_file'] = demonstration.model_file
            if demonstration.start is not None:
                demo.attrs['start'] = demonstration.start
            if demonstration.executed_actions is not None:
                demo.create_dataset('executed_actions', data=demonstration.executed_actions.astype(np.float64))
                demo.attrs['perturbation'] = demonstration.perturbation
            if demonstration.frame_stride != 1:
                demo.attrs['frame_stride'] = demonstration.frame_stride
            demo.attrs['num_samples'] = length  # last: marks the demo complete
            _update_totals(data)
        return name


def _start(demo: h5py.Group) -> str | None:
    if 'start' in demo.attrs:
        return str(demo.attrs['start'])
    if 'init_state_index' in demo.attrs:  # written before sampled starts existed
        return f'fixed-{int(demo.attrs["init_state_index"])}'
    return None


def _open_for_appending(path: Path) -> h5py.File:
    """Open for writing, waiting while another process (a training job, an inspection) has the file open: HDF5
    refuses a writer then, and a recording should not die of it after computing an episode."""
    deadline = time.monotonic() + LOCKED_FILE_WAIT
    while True:
        try:
            return h5py.File(path, 'a')
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(LOCKED_FILE_POLL)


def _update_totals(data: h5py.Group) -> None:
    data.attrs['num_demos'] = len(data)
    data.attrs['total'] = sum(int(demo.attrs['num_samples']) for demo in data.values())


class DemoFileReader:
    """Reads a LIBERO demonstration file, official or written here. Demos come in their numeric order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = h5py.File(self.path, 'r')
        data = self.file['data']
        problem_info = json.loads(data.attrs['problem_info']) if 'problem_info' in data.attrs else {}
        self.instruction: str = problem_info.get('language_instruction') or instruction_from_file_name(self.path)
        self.demo_names: list[str] = sorted(data, key=lambda name: int(re.sub(r'\D', '', name) or 0))

    def __len__(self) -> int:
        return len(self.demo_names)

    def __iter__(self) -> Iterator[Demonstration]:
        return (self.read(name) for name in self.demo_names)

    def read(self, name: str) -> Demonstration:
        demo = self.file['data'][name]
        obs = demo['obs']
        return Demonstration(
            actions=demo['actions'][()], states=demo['states'][()], robot_states=demo['robot_states'][()],
            **{key: obs[key][()] for key in OBSERVATION_KEYS}, model_file=demo.attrs.get('model_file', ''),
            start=_start(demo),
            executed_actions=demo['executed_actions'][()] if 'executed_actions' in demo else None,
            perturbation=demo.attrs.get('perturbation', ''), frame_stride=int(demo.attrs.get('frame_stride', 1)))

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> DemoFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
