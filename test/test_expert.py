"""The scripted LIBERO-Goal expert and its recorder. Skipped only when the simulation extra is not installed
(`make setup-sim`; CI installs it)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
from ctr_vla_ros.data.libero_hdf5 import DemoFileReader  # noqa: E402
from ctr_vla_ros.evaluation.starts import Start, starts  # noqa: E402
from ctr_vla_ros.sim.expert import GRIPPER_STEPS, OPEN, PASS_THROUGH, LiberoGoalExpert  # noqa: E402
from ctr_vla_ros.sim.libero_env import LiberoSimulation  # noqa: E402
from ctr_vla_ros.sim.perturbation import PerturbedExecution, Perturbation  # noqa: E402
from ctr_vla_ros.tools import record_demos  # noqa: E402


def test_expert_reaches_its_first_waypoint_smoothly():
    simulation = LiberoSimulation('libero_goal', 8, resolution=64)  # put the bowl on the plate
    try:
        observation = simulation.reset(0)
        expert = LiberoGoalExpert(simulation)
        actions = [expert.act(observation)]
        first_phase, first_waypoint = expert.phase, expert.waypoint
        assert first_phase == 'above the bowl'
        # Above the bowl's far rim, from its simulated pose: not the bowl's origin.
        bowl = simulation.object_position('akita_black_bowl_1')
        assert first_waypoint[2] > bowl[2] + 0.1 and 0.03 < first_waypoint[0] - bowl[0] < 0.06
        waypoint = first_waypoint
        for _ in range(40):
            observation = simulation.step(actions[-1])
            actions.append(expert.act(observation))
            if expert.phase != first_phase:
                break
            waypoint = expert.waypoint  # follows the bowl, which may still settle a little
        assert expert.phase == 'down to the bowl', f'still {expert.phase!r} after {len(actions)} steps'
        assert np.linalg.norm(observation.eef_position - waypoint) < PASS_THROUGH
        assert np.linalg.norm(waypoint - first_waypoint) < 0.005
        actions = np.array(actions)
        assert np.abs(actions[:, :6]).max() <= 0.7
        assert np.abs(np.diff(actions[:, :6], axis=0)).max() <= 0.1 + 1e-9, 'no jumps between consecutive actions'
        np.testing.assert_array_equal(actions[:, 6], -1.0)  # open on the way to the grasp
    finally:
        simulation.close()


def test_expert_puts_the_cream_cheese_in_the_bowl_gripping_it_across_its_width():
    simulation = LiberoSimulation('libero_goal', 6, resolution=64)  # put the cream cheese in the bowl
    try:
        observation = simulation.reset_sampled(10000)
        expert = LiberoGoalExpert(simulation)
        phases = []
        for _ in range(200):
            observation = simulation.step(expert.act(observation), render=False)
            if not phases or phases[-1] != expert.phase:
                phases.append(expert.phase)
            if expert.phase == 'close on the cream cheese':
                # The box's width (its y axis; 4.3 cm, its length is 8.1) lies along the fingers' closing
                # direction, which is the grip site's y axis in the world.
                box_y = Rotation.from_quat(simulation.object_quaternion_xyzw('cream_cheese_1')).apply([0, 1, 0])
                fingers = Rotation.from_quat(observation.eef_quaternion_xyzw).apply([0, 1, 0])
                assert abs(box_y @ fingers) > 0.98
            if observation.success:
                break
        assert observation.success, f'no success; phases {phases}'
        assert phases[:4] == ['above the cream cheese', 'down to the cream cheese', 'close on the cream cheese',
                              'lift the cream cheese']
    finally:
        simulation.close()


def test_expert_knows_which_goals_it_can_do():
    assert LiberoGoalExpert.supports(['on', 'akita_black_bowl_1', 'plate_1'])
    assert LiberoGoalExpert.supports(['on', 'akita_black_bowl_1', 'wooden_cabinet_1_top_side'])
    assert LiberoGoalExpert.supports(['on', 'cream_cheese_1', 'akita_black_bowl_1'])
    assert not LiberoGoalExpert.supports(['on', 'akita_black_bowl_1', 'akita_black_bowl_1'])
    assert LiberoGoalExpert.supports(['turnon', 'flat_stove_1'])
    assert not LiberoGoalExpert.supports(['open', 'wooden_cabinet_1_middle_region'])
    assert not LiberoGoalExpert.supports(['on', 'wine_bottle_1', 'wine_rack_1_top_region'])


def test_recorder_never_records_the_starts_reserved_for_evaluation(tmp_path):
    for chosen in (starts((38, 40), None), starts(None, (9999, 10000))):
        with pytest.raises(ValueError, match='reserved for evaluation'):
            record_demos.record([8], chosen, Perturbation(), tmp_path, resolution=128, max_steps=10)
    assert not any(tmp_path.iterdir())


def test_without_perturbation_the_executed_action_is_the_clean_one():
    execution = PerturbedExecution(Perturbation(), np.random.default_rng(0))
    clean = np.array([0.3, -0.2, 0.1, 0.0, 0.05, -0.1, 1.0])
    for _ in range(50):
        np.testing.assert_array_equal(execution.executed(clean), clean)


def test_perturbed_execution_noise_pushes_and_gripper_segments():
    clean = np.array([0.2, 0.0, -0.1, 0.0, 0.0, 0.05, -1.0])
    noise = PerturbedExecution(Perturbation(action_noise=0.05), np.random.default_rng(1))
    executed = np.array([noise.executed(clean) for _ in range(4000)])
    np.testing.assert_allclose((executed - clean)[:, :6].std(axis=0), 0.05, rtol=0.08)
    np.testing.assert_allclose((executed - clean)[:, :6].mean(axis=0), 0.0, atol=0.005)
    np.testing.assert_array_equal(executed[:, 6], -1.0)  # the gripper command is binary: no noise on it
    assert np.abs(PerturbedExecution(Perturbation(action_noise=5.0), np.random.default_rng(2))
                  .executed(clean)[:6]).max() <= 1.0

    perturbation = Perturbation(push_rate=0.05, gripper_rate=0.05, push_steps=6, push_size=0.5, gripper_steps=4,
                                quiet_steps=10)
    execution = PerturbedExecution(perturbation, np.random.default_rng(3))
    steps = []
    for _ in range(600):
        action = execution.executed(clean)
        steps.append((execution.segment, execution.segment_started, action))
    assert all(segment is None for segment, _, _ in steps[:10]), 'nothing in the quiet steps'
    kinds = [segment for segment, started, _ in steps if started]
    assert {'push', 'gripper'} <= set(kinds)
    for index, (segment, started, action) in enumerate(steps):
        if started:  # a segment lasts its length, then the clean action comes back
            length = perturbation.push_steps if segment == 'push' else perturbation.gripper_steps
            assert [item[0] for item in steps[index:index + length]] == [segment] * length
        if segment == 'push':
            assert np.linalg.norm(action[:3]) == pytest.approx(0.5)
            np.testing.assert_array_equal(action[3:], clean[3:])
        elif segment == 'gripper':
            np.testing.assert_array_equal(action, [*clean[:6], 1.0])
        else:
            np.testing.assert_array_equal(action, clean)
    again = PerturbedExecution(perturbation, np.random.default_rng(3))
    np.testing.assert_array_equal([again.executed(clean) for _ in range(600)], [action for *_, action in steps])


def test_perturbed_demonstration_labels_the_clean_actions_and_resumes(tmp_path):
    """The expert recovers from a push and a wrong gripper command; the file holds its clean actions as labels, what
    the arm executed beside them, and the start; two workers record two tasks, each into its own file, the same as
    one worker's; rendering every 4th step only keeps those steps' frames and changes nothing else; a second run
    records nothing."""
    perturbation = Perturbation(action_noise=0.1, push_rate=0.02, gripper_rate=0.01)
    chosen = [Start('sampled', 10_000)]
    episodes = record_demos.record([8, 7], chosen, perturbation, tmp_path, resolution=128, max_steps=300, workers=2)
    assert [(episode.task_id, episode.success, episode.segments >= 2) for episode in episodes] == \
        [(8, True, True), (7, True, True)]
    files = {path.name: path for path in tmp_path.glob('*.hdf5')}
    assert sorted(files) == ['put_the_bowl_on_the_plate_demo.hdf5', 'turn_on_the_stove_demo.hdf5']
    record_demos.record([7], chosen, perturbation, tmp_path / 'one_worker', resolution=128, max_steps=300)
    with DemoFileReader(files['turn_on_the_stove_demo.hdf5']) as reader, \
            DemoFileReader(tmp_path / 'one_worker' / 'turn_on_the_stove_demo.hdf5') as alone:
        assert reader.instruction == 'turn on the stove' and len(reader.read('demo_0')) == episodes[1].steps
        parallel, sequential = reader.read('demo_0'), alone.read('demo_0')
        for field in ('actions', 'executed_actions', 'states', 'agentview_rgb', 'eye_in_hand_rgb', 'ee_states'):
            np.testing.assert_array_equal(getattr(parallel, field), getattr(sequential, field), err_msg=field)
    record_demos.record([7], chosen, perturbation, tmp_path / 'strided', resolution=128, max_steps=300, frame_stride=4)
    with DemoFileReader(tmp_path / 'strided' / 'turn_on_the_stove_demo.hdf5') as strided_file:
        strided = strided_file.read('demo_0')
    assert strided.frame_stride == 4 and len(strided) == len(sequential)
    np.testing.assert_array_equal(strided.image_steps(), np.arange(0, len(sequential), 4))
    for field in ('agentview_rgb', 'eye_in_hand_rgb'):
        np.testing.assert_array_equal(getattr(strided, field), getattr(sequential, field)[::4], err_msg=field)
    for field in ('actions', 'executed_actions', 'states', 'ee_states', 'gripper_states', 'joint_states'):
        np.testing.assert_array_equal(getattr(strided, field), getattr(sequential, field), err_msg=field)
    with DemoFileReader(files['put_the_bowl_on_the_plate_demo.hdf5']) as reader:
        demonstration = reader.read('demo_0')
    # LIBERO's success fires as the bowl touches the plate; the descent and the release are recorded to their end.
    assert demonstration.start == 'sampled-10000' and len(demonstration) > episodes[0].steps
    np.testing.assert_array_equal(demonstration.actions[-GRIPPER_STEPS:, 6], OPEN)
    assert json.loads(demonstration.perturbation) == perturbation.to_json()
    difference = demonstration.executed_actions - demonstration.actions
    assert 0.05 < difference[:, :6].std() < 0.3
    assert np.abs(np.diff(demonstration.actions[:, :6], axis=0)).max() <= 0.1 + 1e-9, 'the labels stay smooth'
    assert record_demos.record([8, 7], chosen, perturbation, tmp_path, resolution=128, max_steps=300,
                               workers=2) == []


def _worker_pids(parent: int) -> set[int]:
    """The multiprocessing workers among the children of `parent` (their command line runs spawn_main)."""
    pids = set()
    for entry in Path('/proc').iterdir():
        try:
            if entry.name.isdigit() and int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1]) == parent \
                    and b'spawn_main' in (entry / 'cmdline').read_bytes():
                pids.add(int(entry.name))
        except (OSError, ValueError, IndexError):  # the process ended while being read
            continue
    return pids


def test_a_terminated_recording_stops_its_workers(tmp_path):
    """SIGTERM to a recording with workers ends the workers with it, so none goes on writing beside a rerun."""
    command = [sys.executable, '-m', 'ctr_vla_ros.tools.record_demos', '--tasks', '8', '7', '--sampled-inits',
               '10000', '10000', '--workers', '2', '--output', str(tmp_path)]
    recording = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers := _worker_pids(recording.pid)) < 2:  # both started (recording takes minutes)
            assert recording.poll() is None and time.monotonic() < deadline, 'the workers did not start'
            time.sleep(0.2)
        recording.send_signal(signal.SIGTERM)
        status = recording.wait(timeout=60)
        # The recording ends only after its pool has terminated and joined the workers; an orphan would still be
        # rendering its episode (tens of seconds).
        assert not [pid for pid in workers if os.path.exists(f'/proc/{pid}')], 'workers outlived the recording'
        assert status == 128 + signal.SIGTERM
    finally:
        recording.kill()
        for pid in workers:  # a failed run leaves no orphan behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
