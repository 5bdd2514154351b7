"""A LIBERO task as a robot: end-effector deltas in, upright camera images and proprioception out (no ROS).

LIBERO renders offscreen with MuJoCo (MUJOCO_GL=osmesa on a CPU-only machine, egl with a GPU). Its action is 7-D in
[-1, 1]: delta position (1.0 = 5 cm), delta axis-angle (1.0 = 0.5 rad), gripper -1 open / +1 close, at 20 Hz.
Its images come out upside down; they are rotated here, so the simulated cameras look like mounted cameras and the
policy runs with rotate180 off, as on a real robot.

Rendering the two cameras costs about 90% of a step on a CPU (OSMesa), and a policy that executes 8-step chunks
looks at one frame pair in 9. `step(action, render=False)` skips the cameras: robosuite samples every observable at
the same point of each step, and the cameras' sensors are wrapped so that they render only when asked to, at that
same point; rendering only reads the physics (a test checks that the states and the rendered frames are the same
as when rendering every step).

Starts: one of the task's fixed initial states (`reset`), or a fresh placement drawn from the task's own BDDL
placement regions by LIBERO's samplers, deterministic by a seed (`reset_sampled`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

CONTROL_PERIOD = 0.05  # s: LIBERO's 20 Hz
TRANSLATION_PER_UNIT = 0.05  # m per action unit
ROTATION_PER_UNIT = 0.5  # rad per action unit
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])  # what the authors' evaluation sends while objects settle
CAMERA_OBSERVABLES = ('agentview_image', 'robot0_eye_in_hand_image')
# A sampled placement's seed is offset so that its random stream never equals a fixed initial state's (those seed
# the fixtures with the state's index).
SAMPLED_SEED_OFFSET = 1_000_000


def libero_action(translation: np.ndarray, rotation: np.ndarray, gripper: float) -> np.ndarray:
    """An end-effector delta (m, rad, gripper -1 open .. +1 close) as LIBERO's 7-D action, clipped to [-1, 1]."""
    action = np.concatenate([np.asarray(translation) / TRANSLATION_PER_UNIT,
                             np.asarray(rotation) / ROTATION_PER_UNIT, [gripper]])
    return np.clip(action, -1.0, 1.0)


def command_action(motion: bool, translation: np.ndarray, rotation: np.ndarray, gripper: float,
                   held_gripper: float) -> tuple[np.ndarray, float]:
    """The LIBERO action for one step's command, and the gripper value held from then on: a MOTION moves the arm and
    sets the gripper; anything else (a HOLD, a STOP, no command at all) holds the arm still with the gripper as it
    was."""
    if not motion:
        return libero_action(np.zeros(3), np.zeros(3), held_gripper), held_gripper
    return libero_action(translation, rotation, gripper), float(np.clip(gripper, -1.0, 1.0))


@dataclasses.dataclass
class Observation:
    primary: np.ndarray | None  # (H, W, 3) uint8 RGB, upright: the third-person agentview camera (None: not rendered)
    wrist: np.ndarray | None  # (H, W, 3) uint8 RGB, upright: the eye-in-hand camera (None: not rendered)
    eef_position: np.ndarray  # (3,) m, world frame
    eef_quaternion_xyzw: np.ndarray  # (4,)
    gripper_positions: np.ndarray  # (2,) finger joint positions, m
    success: bool
    object_positions: dict[str, np.ndarray]  # world positions of the task's objects, by name
    joint_positions: np.ndarray  # (7,) arm joint angles, rad


class LiberoSimulation:
    def __init__(self, suite: str, task_id: int, init_state: int = 0, resolution: int = 256,
                 settle_steps: int = 10, seed: int = 0) -> None:
        os.environ.setdefault('MUJOCO_GL', 'osmesa')
        os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        suites = benchmark.get_benchmark_dict()
        if suite not in suites:
            raise ValueError(f'unknown LIBERO suite {suite!r}; available: {sorted(suites)}')
        self.suite_name = suite
        self.benchmark = suites[suite]()
        if not 0 <= task_id < self.benchmark.n_tasks:
            raise ValueError(f'{suite} has tasks 0..{self.benchmark.n_tasks - 1}, got {task_id}')
        task = self.benchmark.get_task(task_id)
        self.task_id = task_id
        self.instruction: str = task.language
        self.init_states = self.benchmark.get_task_init_states(task_id)
        self.task_name: str = task.name  # LIBERO's file stem, e.g. 'put_the_bowl_on_the_plate'
        self.bddl_file = os.path.join(get_libero_path('bddl_files'), task.problem_folder, task.bddl_file)
        self.env = OffScreenRenderEnv(bddl_file_name=self.bddl_file, camera_heights=resolution,
                                      camera_widths=resolution)
        self._camera_shape = (resolution, resolution, 3)
        self._render_cameras = True
        self.env.seed(seed)
        self.settle_steps = settle_steps
        self.init_state = init_state

    def reset(self, init_state: int | None = None, seed: int | None = None) -> Observation:
        """Start an episode from one of the task's recorded initial states, then let objects settle.

        LIBERO draws the fixtures' positions (cabinet, stove, rack: no free joint, so the recorded initial states do
        not hold them) from numpy's global generator at every reset, so an episode depends on the resets before it.
        A `seed` reseeds that generator first, which makes the episode depend on the seed alone."""
        if init_state is not None:
            self.init_state = init_state
        self.init_state %= len(self.init_states)
        if seed is not None:
            self.env.seed(seed)
        self._reset_scene()
        self._render_cameras = self.settle_steps == 0  # otherwise the last settling step renders
        raw = self.env.set_init_state(self.init_states[self.init_state])
        return self._settle(raw)

    def reset_sampled(self, seed: int) -> Observation:
        """Start an episode from a fresh placement of the task's objects and fixtures, drawn from the regions of its
        BDDL file by LIBERO's placement samplers with numpy's generator seeded by `seed` alone; then let objects
        settle."""
        self.env.seed(SAMPLED_SEED_OFFSET + seed)
        self._reset_scene()
        return self._settle(None)

    def step(self, action: np.ndarray, render: bool = True) -> Observation:
        """One control step; `render=False` leaves the cameras out of the observation (None)."""
        self._render_cameras = render
        raw, _, _, _ = self.env.step(np.asarray(action, dtype=np.float64))
        return self._observation(raw, render)

    def _reset_scene(self) -> None:
        """LIBERO's reset (a hard reset: new sensors), then the cameras' sensors wrapped to render on request."""
        from robosuite.utils.observables import sensor

        self.env.reset()
        observables = self.env.env._observables
        self._render_cameras = False  # set_sensor calls the sensor once to learn its shape
        for name in CAMERA_OBSERVABLES:
            render = observables[name]._sensor
            blank = np.zeros(self._camera_shape, dtype=np.uint8)

            @sensor(modality=render.__modality__)
            def camera_on_request(obs_cache, render=render, blank=blank):
                return render(obs_cache) if self._render_cameras else blank

            observables[name].set_sensor(camera_on_request)

    def _settle(self, raw: dict | None) -> Observation:
        """Still arm, gripper open, for `settle_steps` steps; the cameras render for the last observation only."""
        for step in range(self.settle_steps):
            self._render_cameras = step == self.settle_steps - 1
            raw, _, _, _ = self.env.step(SETTLE_ACTION)
        if raw is None:  # a sampled placement without settling: the observation of the placement itself
            self._render_cameras = True
            raw = self.env.env._get_observations(force_update=True)
        self._render_cameras = True
        return self._observation(raw, True)

    def _observation(self, raw: dict, rendered: bool) -> Observation:
        return Observation(
            primary=np.ascontiguousarray(raw['agentview_image'][::-1, ::-1]) if rendered else None,
            wrist=np.ascontiguousarray(raw['robot0_eye_in_hand_image'][::-1, ::-1]) if rendered else None,
            eef_position=np.array(raw['robot0_eef_pos'], dtype=np.float64),
            eef_quaternion_xyzw=np.array(raw['robot0_eef_quat'], dtype=np.float64),
            gripper_positions=np.array(raw['robot0_gripper_qpos'], dtype=np.float64),
            success=bool(self.env.check_success()),
            object_positions={key.removesuffix('_pos'): np.array(value, dtype=np.float64)
                              for key, value in raw.items()
                              if key.endswith('_pos') and not key.startswith('robot0') and '_to_' not in key},
            joint_positions=np.array(raw['robot0_joint_pos'], dtype=np.float64))

    # Privileged state: what a scripted expert and a dataset recorder read, and a policy never sees.

    @property
    def goal(self) -> list[list[str]]:
        """The task's goal predicates from its BDDL file, e.g. [['on', 'akita_black_bowl_1', 'plate_1']]."""
        return self.env.env.parsed_problem['goal_state']

    def problem_info(self) -> dict[str, str]:
        """problem_name, domain_name and language_instruction of the BDDL file, as LIBERO's datasets store them."""
        from libero.libero.envs.bddl_utils import get_problem_info
        return get_problem_info(self.bddl_file)

    def object_position(self, name: str) -> np.ndarray:
        """World position of a BDDL object or fixture (e.g. 'akita_black_bowl_1'): its root body, as LIBERO's
        predicates read it, m."""
        return np.array(self.env.sim.data.body_xpos[self.env.env.obj_body_id[name]], dtype=np.float64)

    def object_quaternion_xyzw(self, name: str) -> np.ndarray:
        """World orientation of a BDDL object or fixture, x, y, z, w like the end-effector quaternion."""
        w, x, y, z = self.env.sim.data.body_xquat[self.env.env.obj_body_id[name]]
        return np.array([x, y, z, w], dtype=np.float64)

    def body_position(self, body: str) -> np.ndarray:
        """World position of any MuJoCo body by its model name (a drawer, a knob: 'flat_stove_1_button'), m."""
        sim = self.env.sim
        return np.array(sim.data.body_xpos[sim.model.body_name2id(body)], dtype=np.float64)

    def site_position(self, site: str) -> np.ndarray:
        """World position of a MuJoCo site (a BDDL region such as a burner or a cabinet's top), m."""
        return np.array(self.env.sim.data.get_site_xpos(site), dtype=np.float64)

    def joint_position(self, joint: str) -> float:
        """Position of a 1-DoF joint (a drawer's slide in m, a knob's hinge in rad)."""
        return float(self.env.sim.data.get_joint_qpos(joint))

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel), as LIBERO's datasets store it; `set_sim_state` replays it."""
        return np.array(self.env.get_sim_state(), dtype=np.float64)

    def model_xml(self) -> str:
        """The MuJoCo model of this episode as XML. With `sim_state`, it replays an episode exactly: the fixtures'
        positions are in the model, not in the state."""
        return self.env.sim.model.get_xml()

    def set_sim_state(self, state: np.ndarray) -> Observation:
        """Put the simulation in a recorded state (no settling), e.g. to replay a dataset's `states`."""
        self._render_cameras = True
        return self._observation(self.env.set_init_state(state), True)

    def close(self) -> None:
        """Release the renderer. Call from the thread that created the simulation: MuJoCo's offscreen context
        segfaults when it is garbage-collected elsewhere."""
        self.env.close()
