"""A scripted expert for LIBERO-Goal tasks that reads the simulator's privileged state.

The expert picks its script from the task's BDDL goal: `(On akita_black_bowl_1 X)` picks the bowl by its rim and
sets it down on X (the plate, the stove's burner, the top of the cabinet); `(On cream_cheese_1 akita_black_bowl_1)`
picks the cream cheese across its width and lowers it onto the bowl; `(Turnon flat_stove_1)` grips the stove's knob
by its ridge and twists it. Positions come from the MuJoCo bodies, sites and joints (`LiberoSimulation`'s
privileged accessors), never from the cameras.

Each script is a Python generator of motion primitives: move the grip site to a point, hold it there while the
gripper closes or opens, check that a grasp held (and start the grasp over if it did not). A move is proportional
control with a speed cap and a limit on how much the action changes per step, so a small learned policy sees smooth
actions well inside [-1, 1]. The gripper points straight down throughout; only the knob twist turns the wrist.

    simulation = LiberoSimulation('libero_goal', 8)
    observation = simulation.reset(0)
    expert = LiberoGoalExpert(simulation)
    while not observation.success:
        observation = simulation.step(expert.act(observation))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator

import numpy as np
from scipy.spatial.transform import Rotation

from ctr_vla_ros.sim.libero_env import LiberoSimulation, Observation

OPEN, CLOSED = -1.0, 1.0

# The arm's response to LIBERO's operational-space controller, measured in the LIBERO-Goal scene: a constant
# translation action of 1.0 moves the grip site about 1.3 cm per step, a rotation action of 1.0 turns it 0.1 rad.
METRES_PER_STEP_PER_UNIT = 0.013
RADIANS_PER_STEP_PER_UNIT = 0.1
CONVERGENCE_STEPS = 6  # a position error is commanded away in about this many steps (before the speed cap)
ORIENTATION_CONVERGENCE_STEPS = 5
CRUISE_SPEED = 0.7  # action units (about 0.9 cm per step): free-space moves
CAREFUL_SPEED = 0.45  # close to contact: descents onto a grasp or a surface
MAX_ROTATION_ACTION = 0.5
MAX_ACTION_CHANGE = 0.1  # norm of the change of the translation (and rotation) part between two steps

PASS_THROUGH = 0.02  # m: a waypoint the arm only travels through
PRECISE = 0.008  # m: a waypoint where the gripper then closes or opens
MOVE_TIMEOUT = 80  # steps
GRIPPER_STEPS = 10  # the fingers close on an object (or open fully) in about 8 steps
GRASP_ATTEMPTS = 3

HOVER = 0.08  # m above a grasp point before descending onto it
LIFT = 0.06  # m a grasped object rises before the grasp is checked
HELD_RISE = 0.025  # m: the object rose at least this much with the gripper, so the grasp held
CARRY_CLEARANCE = 0.07  # m: the object's bottom travels this far above the higher of its start and its destination
RELEASE_HEIGHT = 0.01  # m: the object's bottom stops this far above the destination's surface; the gripper opens there


@dataclasses.dataclass(frozen=True)
class HeldObject:
    """An object the expert picks up: where the grip site goes relative to the object's origin and the gripper's
    heading, both turning with the object about the vertical or not; and how far its origin is above its bottom."""

    name: str  # BDDL object
    label: str  # in the expert's phases: 'lift the bowl'
    grasp_offset: tuple[float, float, float]  # m, in the world frame, or the object's if turns_with_object
    grasp_yaw: float  # rad: the gripper's heading, added to the object's heading if turns_with_object
    turns_with_object: bool
    origin_height: float  # m

    def grasp_point(self, simulation: LiberoSimulation) -> np.ndarray:
        offset = np.array(self.grasp_offset)
        if self.turns_with_object:
            offset = Rotation.from_euler('z', self.heading(simulation)).apply(offset)
        return simulation.object_position(self.name) + offset

    def gripper_yaw(self, simulation: LiberoSimulation) -> float:
        if not self.turns_with_object:
            return self.grasp_yaw
        yaw = self.heading(simulation) + self.grasp_yaw
        return (yaw + np.pi / 2) % np.pi - np.pi / 2  # the two fingers are alike: the nearer of yaw and yaw + pi

    def heading(self, simulation: LiberoSimulation) -> float:
        return float(Rotation.from_quat(simulation.object_quaternion_xyzw(self.name)).as_euler('xyz')[2])


# The black bowl, measured from its collision meshes: its origin is the centre of its bottom, its wall ends 5.3 cm
# up, 4.0-5.4 cm from the axis. The fingers pinch the wall on the bowl's far (+x) side, closing along x (the wrist
# turned a quarter turn), pads covering the top 1.7 cm of the wall. That keeps the 20 cm wide hand along x, clear of
# the cabinet's lid and the cream cheese on the bowl's -y and +y sides, and of the wine bottle on its near side.
# The cream cheese is a box of 8.1 x 4.3 x 1.8 cm lying flat, its origin at its centre, its length along its own x
# axis: the fingers close across its width, pads on its upper 1.3 cm, clear of the table.
HELD_OBJECTS = {
    'akita_black_bowl_1': HeldObject('akita_black_bowl_1', 'bowl', (0.047, 0.0, 0.041), np.pi / 2,
                                     turns_with_object=False, origin_height=0.0),
    'cream_cheese_1': HeldObject('cream_cheese_1', 'cream cheese', (0.0, 0.0, 0.004), 0.0, turns_with_object=True,
                                 origin_height=0.009),
}


@dataclasses.dataclass(frozen=True)
class PlaceTarget:
    """Where the held object goes for one BDDL goal argument: a body or site, the height of its surface above that point,
    and a shift of the aim within the goal region (the cabinet's far side is at the edge of the arm's reach)."""

    name: str
    is_site: bool
    surface_height: float  # m
    shift: tuple[float, float] = (0.0, 0.0)  # m, x and y

    def surface_centre(self, simulation: LiberoSimulation) -> np.ndarray:
        position = simulation.site_position(self.name) if self.is_site else simulation.object_position(self.name)
        return position + np.array([*self.shift, self.surface_height])


# Surface heights measured from the collision meshes: the plate's floor, the burner's top, the cabinet's lid, the
# bowl's rim (the cream cheese is longer than the bowl is wide: it comes to rest on the rim). The BDDL checks: on the
# plate = within 3 cm of its centre and touching it; on the burner or the cabinet = inside the site's box (7.5 cm and
# 12.5 x 9.4 cm half-sizes) and touching the fixture; on the bowl = touching it, above its origin.
PLACE_TARGETS = {
    'plate_1': PlaceTarget('plate_1', is_site=False, surface_height=0.007),
    'flat_stove_1_cook_region': PlaceTarget('flat_stove_1_cook_region', is_site=True, surface_height=0.025),
    'wooden_cabinet_1_top_side': PlaceTarget('wooden_cabinet_1_top_side', is_site=True, surface_height=0.001,
                                             shift=(-0.03, 0.025)),
    'akita_black_bowl_1': PlaceTarget('akita_black_bowl_1', is_site=False, surface_height=0.053),
}

# The flat stove's knob (body and hinge `flat_stove_1_button`) turns about the vertical; LIBERO counts it as on from
# 0.5 rad. Its 2.5 cm wide ridge lies along the knob's x axis (world x at angle 0) and stands 5 cm above its base: the
# fingers close across the ridge, pads on its upper 1.6 cm, and the wrist turns the knob well past the threshold.
KNOB_GRIP_HEIGHT = 0.039  # grip site above the knob's origin
KNOB_TWIST = 0.9  # rad
KNOB_ON_ANGLE = 0.5  # rad: LIBERO's threshold (FlatStove's turn-on range starts there)
TWIST_TIMEOUT = 60

Motion = Generator[np.ndarray, None, None]  # yields one action per control step


class LiberoGoalExpert:
    """Completes one LIBERO-Goal task from privileged state. Call `act` once per control step with the latest
    observation; `phase` and `waypoint` tell what it is doing, `finished` that its script has ended."""

    def __init__(self, simulation: LiberoSimulation) -> None:
        if len(simulation.goal) != 1 or not self.supports(simulation.goal[0]):
            raise ValueError(f'no expert script for the goal {simulation.goal}')
        self.simulation = simulation
        self.observation: Observation | None = None
        self.phase = 'not started'
        self.waypoint: np.ndarray | None = None
        self.finished = False
        self.yaw = 0.0  # the gripper's target heading about the vertical, rad
        self.previous_translation = np.zeros(3)  # the last action's parts, for smoothing
        self.previous_rotation = np.zeros(3)
        predicate, *arguments = simulation.goal[0]
        if predicate == 'on':
            self.script = self._place(HELD_OBJECTS[arguments[0]], PLACE_TARGETS[arguments[1]])
        else:
            self.script = self._turn_on_knob(f'{arguments[0]}_button')

    @staticmethod
    def supports(goal: list[str]) -> bool:
        """Whether the expert has a script for this BDDL goal predicate."""
        predicate, *arguments = goal
        return ((predicate == 'on' and arguments[0] in HELD_OBJECTS and arguments[1] in PLACE_TARGETS
                 and arguments[0] != arguments[1])
                or (predicate == 'turnon' and arguments[0] == 'flat_stove_1'))

    def act(self, observation: Observation) -> np.ndarray:
        """LIBERO's 7-D action for this step."""
        self.observation = observation
        if not self.finished:
            try:
                return next(self.script)
            except StopIteration:
                self.finished = True
                self.phase = 'finished'
        return self._move_action(observation.eef_position, OPEN, CAREFUL_SPEED)

    # Scripts.

    def _place(self, held: HeldObject, target: PlaceTarget) -> Motion:
        simulation = self.simulation

        for _ in range(GRASP_ATTEMPTS):
            self.yaw = held.gripper_yaw(simulation)
            rest_height = simulation.object_position(held.name)[2]
            yield from self._grasp(held.label, lambda: held.grasp_point(simulation))
            lift_point = self.observation.eef_position + [0.0, 0.0, LIFT]
            yield from self._move_to(f'lift the {held.label}', CLOSED, PASS_THROUGH, CAREFUL_SPEED, lift_point)
            if simulation.object_position(held.name)[2] - rest_height < HELD_RISE:
                yield from self._release_and_back_off()  # the fingers missed or it slipped out: again
                continue

            destination = target.surface_centre(simulation) + [0.0, 0.0, held.origin_height]
            carry_height = max(rest_height, destination[2]) + CARRY_CLEARANCE
            # Measured once, while the object hangs still: re-measuring it during the carry would chase its swing in
            # the fingers and overshoot.
            grip_offset = self.observation.eef_position - simulation.object_position(held.name)
            lift_point = np.array([*self.observation.eef_position[:2], carry_height + grip_offset[2]])
            yield from self._move_to('lift to carry height', CLOSED, PASS_THROUGH, CRUISE_SPEED, lift_point)
            carry_point = np.array([*destination[:2], carry_height]) + grip_offset
            yield from self._move_to('carry over the destination', CLOSED, PASS_THROUGH, CRUISE_SPEED, carry_point)
            if simulation.object_position(held.name)[2] < carry_height - LIFT:
                continue  # it slipped out on the way: pick it up again
            release_point = destination + [0.0, 0.0, RELEASE_HEIGHT] + grip_offset
            yield from self._move_to('lower onto the destination', CLOSED, PRECISE, CAREFUL_SPEED, release_point)
            yield from self._release_and_back_off()
            return

    def _turn_on_knob(self, knob: str) -> Motion:
        simulation = self.simulation

        def grasp_point() -> np.ndarray:
            return simulation.body_position(knob) + [0.0, 0.0, KNOB_GRIP_HEIGHT]

        for _ in range(GRASP_ATTEMPTS):
            start_angle = simulation.joint_position(knob)
            self.yaw = start_angle  # fingers across the ridge
            yield from self._grasp('knob', grasp_point)
            self.yaw = start_angle + KNOB_TWIST
            self.phase = 'twist the knob'
            for _ in range(TWIST_TIMEOUT):
                if simulation.joint_position(knob) - start_angle >= 0.9 * KNOB_TWIST:
                    break
                yield self._move_action(grasp_point(), CLOSED, CAREFUL_SPEED)
            yield from self._release_and_back_off()
            if simulation.joint_position(knob) >= KNOB_ON_ANGLE:
                return

    # Primitives.

    def _grasp(self, name: str, grasp_point: Callable[[], np.ndarray]) -> Motion:
        """Open above the grasp point, descend onto it, close."""
        yield from self._move_to(f'above the {name}', OPEN, PASS_THROUGH, CRUISE_SPEED,
                                 lambda: grasp_point() + [0.0, 0.0, HOVER])
        yield from self._move_to(f'down to the {name}', OPEN, PRECISE, CAREFUL_SPEED, grasp_point)
        yield from self._hold(f'close on the {name}', CLOSED, GRIPPER_STEPS)

    def _release_and_back_off(self) -> Motion:
        yield from self._hold('release', OPEN, GRIPPER_STEPS)
        back_off_point = self.observation.eef_position + [0.0, 0.0, HOVER]
        yield from self._move_to('back off', OPEN, PASS_THROUGH, CAREFUL_SPEED, back_off_point)

    def _move_to(self, phase: str, gripper: float, tolerance: float, speed: float,
                 target: np.ndarray | Callable[[], np.ndarray]) -> Motion:
        """Move the grip site to `target` (a point, or a function re-evaluated every step for a point that follows
        an object), or give up after MOVE_TIMEOUT steps (the script's checks then find out what went wrong)."""
        self.phase = phase
        for _ in range(MOVE_TIMEOUT):
            self.waypoint = target() if callable(target) else target
            if np.linalg.norm(self.waypoint - self.observation.eef_position) < tolerance:
                return
            yield self._move_action(self.waypoint, gripper, speed)

    def _hold(self, phase: str, gripper: float, steps: int) -> Motion:
        """Keep the grip site where it is while the gripper closes or opens."""
        self.phase = phase
        self.waypoint = self.observation.eef_position.copy()
        for _ in range(steps):
            yield self._move_action(self.waypoint, gripper, CAREFUL_SPEED)

    def _move_action(self, target: np.ndarray, gripper: float, speed: float) -> np.ndarray:
        """Proportional control towards `target` and the target orientation, speed-capped, and changed by at most
        MAX_ACTION_CHANGE from the previous step's action."""
        translation = (target - self.observation.eef_position) / (CONVERGENCE_STEPS * METRES_PER_STEP_PER_UNIT)
        if np.linalg.norm(translation) > speed:
            translation *= speed / np.linalg.norm(translation)
        self.previous_translation = _limit_change(self.previous_translation, translation)
        self.previous_rotation = _limit_change(self.previous_rotation, self._orientation_action())
        return np.concatenate([self.previous_translation, self.previous_rotation, [gripper]])

    def _orientation_action(self) -> np.ndarray:
        """Turn the gripper towards pointing straight down with heading `yaw` (LIBERO rotates in the world frame)."""
        target = Rotation.from_euler('xyz', [np.pi, 0.0, self.yaw])
        error = (target * Rotation.from_quat(self.observation.eef_quaternion_xyzw).inv()).as_rotvec()
        action = error / (ORIENTATION_CONVERGENCE_STEPS * RADIANS_PER_STEP_PER_UNIT)
        return np.clip(action, -MAX_ROTATION_ACTION, MAX_ROTATION_ACTION)


def _limit_change(previous: np.ndarray, desired: np.ndarray) -> np.ndarray:
    change = desired - previous
    if np.linalg.norm(change) > MAX_ACTION_CHANGE:
        change *= MAX_ACTION_CHANGE / np.linalg.norm(change)
    return previous + change
