"""The supervisor's rules, without ROS: every mode transition, the command on every tick, stops that hold the
gripper, invalidated chunks, and the reasons it gives."""

import math

import numpy as np
import pytest

from ctr_vla_ros.control.chunk_execution import DeltaLimits
from ctr_vla_ros.control.supervisor import (CommandKind, InstructionUpdate, Mode, Supervisor,
                                            SupervisorSettings)

PERIOD = 0.05
STATE = np.arange(8, dtype=np.float64) * 0.01
LIMITS = DeltaLimits((0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 1.0))


def settings(**changes):
    values = dict(camera_names=('primary', 'wrist'), camera_timeout=0.5, pair_tolerance=0.05, state_timeout=0.5,
                  execution_mode='open_loop', requery_remaining=2, limits=LIMITS, dry_run=False)
    values.update(changes)
    return SupervisorSettings(**values)


def chunk(gripper=1.0, x=0.004):
    deltas = np.zeros((8, 7))
    deltas[:, 0] = x
    deltas[:, 6] = gripper
    return deltas


class Robot:
    """Feeds a supervisor fresh camera frames and states, one control tick at a time."""

    def __init__(self, supervisor, instruction='put the bowl on the plate'):
        self.supervisor = supervisor
        self.now = 10.0
        self.frame = 0
        if instruction is not None:
            supervisor.set_instruction(instruction)

    def inputs(self, cameras=(True, True), wrist_offset=0.0, state=True):
        self.frame += 1
        for camera, on in enumerate(cameras):
            if on:
                stamp = self.now + (wrist_offset if camera == 1 else 0.0)
                self.supervisor.add_frame(camera, stamp, f'frame {self.frame} camera {camera}', self.now)
        if state:
            self.supervisor.set_state(STATE, self.now)

    def tick(self, **inputs):
        self.now += PERIOD
        self.inputs(**inputs)
        return self.supervisor.tick(self.now)

    def answer(self, deltas=None):
        """Compute the requested query (instantly) and hand back a chunk."""
        query = self.supervisor.wait_for_query(timeout=0)
        assert query is not None, 'no query was requested'
        return self.supervisor.finish_query(query, chunk() if deltas is None else deltas)


def running(**changes):
    supervisor = Supervisor(settings(**changes))
    robot = Robot(supervisor)
    robot.inputs()
    supervisor.set_enabled(True, robot.now)
    return supervisor, robot


def test_disabled_sends_nothing_and_asks_for_nothing():
    supervisor = Supervisor(settings())
    robot = Robot(supervisor)
    for _ in range(5):
        tick = robot.tick()
        assert tick.command is None and tick.mode is Mode.DISABLED
    assert supervisor.wait_for_query(timeout=0) is None


def test_enable_answers_with_what_is_still_missing():
    supervisor = Supervisor(settings())
    message, stop = supervisor.set_enabled(True, 1.0)
    assert stop is None
    assert message.startswith('enabled; no motion until')
    for missing in ('camera primary: no frame yet', 'camera wrist: no frame yet', 'instruction: none yet',
                    'robot state: none yet'):
        assert missing in message
    robot = Robot(supervisor)
    robot.inputs()
    assert supervisor.set_enabled(True, robot.now) == ('enabled', None)


def test_a_command_on_every_tick_while_enabled_in_both_modes():
    for mode in ('open_loop', 'overlap'):
        supervisor, robot = running(execution_mode=mode)
        kinds = []
        pending_for = 0
        for _ in range(60):
            tick = robot.tick()
            assert tick.command is not None, f'{mode}: a tick without a command'
            kinds.append(tick.command.kind)
            # inference takes three ticks
            if supervisor._inference_busy:
                pending_for += 1
                if pending_for == 3:
                    robot.answer()
                    pending_for = 0
        assert CommandKind.MOTION in kinds and CommandKind.STOP not in kinds
        if mode == 'open_loop':
            assert kinds.count(CommandKind.HOLD) > 5  # the arm holds while each chunk is computed
        else:
            assert kinds[10:].count(CommandKind.HOLD) < kinds[10:].count(CommandKind.MOTION) / 4


def test_chunk_execution_with_clamps_then_hold_at_the_chunk_boundary():
    supervisor, robot = running()
    first = robot.tick().command
    assert first.kind is CommandKind.HOLD and math.isnan(first.gripper)  # nothing commanded yet: no change
    deltas = chunk(gripper=1.0, x=0.03)  # beyond the 0.01 m clamp
    assert robot.answer(deltas) == 1
    commands = [robot.tick().command for _ in range(9)]
    assert [command.kind for command in commands] == [CommandKind.MOTION] * 8 + [CommandKind.HOLD]
    assert [command.index_in_chunk for command in commands[:8]] == list(range(8))
    assert all(command.chunk_id == 1 and command.translation[0] == 0.01 for command in commands[:8])
    hold = commands[8]
    assert hold.gripper == 1.0 and not hold.translation.any() and not hold.rotation.any() and hold.chunk_id == 0
    assert supervisor.status(robot.now).clamped_dimensions == 8


@pytest.mark.parametrize('stop_by', ['camera_dropout', 'reset', 'disable', 'shutdown', 'stale_state', 'fault'])
def test_every_stop_keeps_the_last_commanded_gripper(stop_by):
    supervisor, robot = running()
    robot.tick()
    robot.answer(chunk(gripper=1.0))
    assert robot.tick().command.kind is CommandKind.MOTION
    if stop_by == 'camera_dropout':
        robot.now += 0.6
        stop = robot.tick(cameras=(True, False)).command
    elif stop_by == 'reset':
        stop = supervisor.reset()
    elif stop_by == 'disable':
        message, stop = supervisor.set_enabled(False, robot.now)
        assert message == 'disabled'
    elif stop_by == 'shutdown':
        stop = supervisor.shutdown()
    elif stop_by == 'stale_state':
        robot.now += 0.6
        stop = robot.tick(state=False).command
    else:
        robot.tick()
        query = supervisor.wait_for_query(timeout=0)
        assert query is None  # a chunk is still executing in open loop: no query yet
        supervisor.fail_query('CUDA error', model_fault=True)
        stop = robot.tick().command
        assert supervisor.status(robot.now).mode is Mode.FAULT
    assert stop.kind is CommandKind.STOP
    assert stop.gripper == 1.0 and not stop.translation.any() and not stop.rotation.any()


def test_stops_before_any_motion_leave_the_gripper_alone():
    supervisor, robot = running()
    stop = supervisor.reset()
    assert stop.kind is CommandKind.STOP and math.isnan(stop.gripper)


def test_a_refused_state_drops_the_chunk_in_flight_and_the_queued_one():
    supervisor, robot = running(execution_mode='overlap')
    robot.tick()
    robot.answer()
    for _ in range(7):
        robot.tick()  # overlap: the next query is requested when 2 actions are left
    in_flight = supervisor.wait_for_query(timeout=0)
    assert in_flight is not None and np.array_equal(in_flight.state, STATE)
    supervisor.refuse_state('non-finite state')
    assert supervisor.finish_query(in_flight, chunk()) is None  # built from a state older than the refused one
    tick = robot.supervisor.tick(robot.now + PERIOD)
    assert tick.command.kind is CommandKind.STOP and tick.mode is Mode.WAITING
    assert 'robot state: refused: non-finite state' in tick.problems


def test_instruction_updates():
    supervisor = Supervisor(settings())
    assert supervisor.set_instruction('  ') is InstructionUpdate.REFUSED_EMPTY
    assert 'instruction: the last instruction received was empty' in supervisor.status(0.0).problems
    assert supervisor.set_instruction('open the drawer') is InstructionUpdate.FIRST
    assert supervisor.set_instruction('open the drawer ') is InstructionUpdate.UNCHANGED
    robot = Robot(supervisor, instruction=None)
    robot.inputs()
    supervisor.set_enabled(True, robot.now)
    robot.tick()
    query = supervisor.wait_for_query(timeout=0)
    assert query.instruction == 'open the drawer'
    assert supervisor.set_instruction('close the drawer') is InstructionUpdate.CHANGED
    assert supervisor.finish_query(query, chunk()) is None  # computed for the old task
    robot.tick()
    assert supervisor.wait_for_query(timeout=0).instruction == 'close the drawer'


def test_problems_name_the_reason():
    supervisor, robot = running()
    supervisor.refuse_frame(0, "unsupported encoding '16UC1'")
    robot.now += 0.6
    tick = robot.tick(cameras=(False, True))
    assert tick.mode is Mode.WAITING and tick.mode_changed
    assert "camera primary: frames refused: unsupported encoding '16UC1'" in tick.problems
    robot.now += 0.6
    tick = robot.tick(cameras=(False, True))
    assert any(problem.startswith('camera primary: frames refused') for problem in tick.problems)

    supervisor, robot = running()
    robot.now += 0.6
    problems = robot.tick(cameras=(True, False)).problems
    assert any(problem.startswith('camera wrist: stale, silent for 0.6') for problem in problems)

    supervisor, robot = running()
    robot.now += 0.6
    robot.tick(wrist_offset=0.2)
    assert 'cameras out of sync: no frames within 0.05 s of each other' in robot.tick(wrist_offset=0.2).problems


def test_fault_until_enable_or_reset():
    supervisor, robot = running()
    robot.tick()
    supervisor.fail_query('the model produced non-finite actions', model_fault=True)
    tick = robot.tick()
    assert tick.mode is Mode.FAULT and tick.command.kind is CommandKind.STOP
    assert supervisor.status(robot.now).last_error == 'the model produced non-finite actions'
    supervisor.set_enabled(True, robot.now)
    assert robot.tick().mode is Mode.RUNNING

    supervisor.fail_query('image too small', model_fault=False)  # a refused input: the next query may succeed
    assert robot.tick().mode is Mode.RUNNING


def test_reset_keyframes_the_engine_at_the_next_query():
    supervisor, robot = running()
    robot.tick()
    in_flight = supervisor.wait_for_query(timeout=0)
    assert in_flight.engine_reset is None
    supervisor.reset()
    assert supervisor.finish_query(in_flight, chunk()) is None
    robot.tick()
    assert supervisor.wait_for_query(timeout=0).engine_reset == 'episode_reset'


def test_a_camera_set_is_never_queried_twice():
    supervisor, robot = running()
    robot.tick()
    robot.answer()
    for _ in range(8):
        robot.supervisor.tick(robot.now)  # no new frames: the chunk executes
    robot.supervisor.tick(robot.now)
    assert supervisor.wait_for_query(timeout=0) is None  # the newest set was used: wait for the next one
    robot.inputs()
    assert supervisor.wait_for_query(timeout=0) is not None  # the new set triggers the query


def test_dry_run_queries_without_enabling_and_never_commands():
    supervisor = Supervisor(settings(dry_run=True))
    robot = Robot(supervisor)
    robot.inputs()
    assert robot.tick().command is None
    robot.answer()
    assert all(robot.tick().command is None for _ in range(10))
    assert supervisor.reset() is None and supervisor.shutdown() is None


@pytest.mark.parametrize('mode, wanted', [('open_loop', [7]), ('overlap', [5])])
def test_wants_frames_says_which_frames_the_next_tick_may_use(mode, wanted):
    """Frames are wanted while a chunk is needed and none is being computed: after the tick that takes a chunk's
    last step (open loop) or reaches the requery point (overlap, 2 steps left), and never while a query is in
    flight (overlap: the tick after the requery point asks for the next chunk)."""
    supervisor, robot = running(execution_mode=mode)
    assert supervisor.wants_frames()
    assert robot.tick().command.kind is CommandKind.HOLD  # the query for the first chunk
    assert not supervisor.wants_frames()  # it is being computed
    robot.answer()
    after = []
    for index in range(8):
        assert robot.tick().command.kind is CommandKind.MOTION
        if supervisor.wants_frames():
            after.append(index)
    assert after == wanted
