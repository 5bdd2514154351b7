"""LIBERO's demonstration files: the writer's layout is the official one, and what it writes reads back exactly."""

import json
import subprocess
import sys
import time

import h5py
import numpy as np

from ctr_vla_ros.data import libero_hdf5
from ctr_vla_ros.data.libero_hdf5 import (DemoFileReader, DemoFileWriter, Demonstration, demo_file_name,
                                          instruction_from_file_name)

PROBLEM_INFO = {'problem_name': 'libero_tabletop_manipulation', 'domain_name': 'robosuite',
                'language_instruction': 'put the bowl on the plate'}
STATE_SIZE = 79


def random_demonstration(length: int, seed: int, start: str | None = None, perturbed: bool = False) -> Demonstration:
    rng = np.random.default_rng(seed)
    return Demonstration(
        actions=rng.uniform(-1, 1, (length, 7)),
        agentview_rgb=rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
        eye_in_hand_rgb=rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
        ee_states=rng.normal(size=(length, 6)), gripper_states=rng.normal(size=(length, 2)),
        joint_states=rng.normal(size=(length, 7)), robot_states=rng.normal(size=(length, 9)),
        states=rng.normal(size=(length, STATE_SIZE)), model_file=f'<mujoco model="{seed}"/>', start=start,
        executed_actions=rng.uniform(-1, 1, (length, 7)) if perturbed else None,
        perturbation='{"action_noise": 0.1}' if perturbed else '')


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / demo_file_name('put_the_bowl_on_the_plate')
    writer = DemoFileWriter(path, PROBLEM_INFO)
    written = [random_demonstration(5, seed=0, start='fixed-3'),
               random_demonstration(7, seed=1, start='sampled-10004', perturbed=True)]
    assert [writer.write(demonstration) for demonstration in written] == ['demo_0', 'demo_1']
    assert writer.starts() == {'fixed-3', 'sampled-10004'}
    with DemoFileReader(path) as reader:
        assert reader.instruction == 'put the bowl on the plate'
        assert reader.demo_names == ['demo_0', 'demo_1'] and len(reader) == 2
        for original, read in zip(written, reader, strict=True):
            for field in ('actions', 'agentview_rgb', 'eye_in_hand_rgb', 'ee_states', 'gripper_states',
                          'joint_states', 'robot_states', 'states'):
                np.testing.assert_array_equal(getattr(read, field), getattr(original, field), err_msg=field)
            assert (read.model_file, read.start, read.perturbation) == \
                (original.model_file, original.start, original.perturbation)
        assert reader.read('demo_0').executed_actions is None
        np.testing.assert_array_equal(reader.read('demo_1').executed_actions, written[1].executed_actions)


def test_layout_matches_the_official_datasets(tmp_path):
    path = tmp_path / 'turn_on_the_stove_demo.hdf5'
    DemoFileWriter(path, PROBLEM_INFO).write(random_demonstration(6, seed=2, start='fixed-0'))
    with h5py.File(path, 'r') as file:
        data = file['data']
        assert json.loads(data.attrs['problem_info'])['language_instruction'] == 'put the bowl on the plate'
        assert (data.attrs['num_demos'], data.attrs['total']) == (1, 6)
        demo = data['demo_0']
        assert set(demo) == {'actions', 'states', 'robot_states', 'rewards', 'dones', 'obs'}
        assert set(demo['obs']) == {'agentview_rgb', 'eye_in_hand_rgb', 'ee_states', 'ee_pos', 'ee_ori',
                                    'gripper_states', 'joint_states'}
        expected = {'actions': ((6, 7), np.float64), 'states': ((6, STATE_SIZE), np.float64),
                    'robot_states': ((6, 9), np.float64), 'rewards': ((6,), np.uint8), 'dones': ((6,), np.uint8),
                    'obs/agentview_rgb': ((6, 16, 16, 3), np.uint8), 'obs/eye_in_hand_rgb': ((6, 16, 16, 3), np.uint8),
                    'obs/ee_states': ((6, 6), np.float64), 'obs/ee_pos': ((6, 3), np.float64),
                    'obs/ee_ori': ((6, 3), np.float64), 'obs/gripper_states': ((6, 2), np.float64),
                    'obs/joint_states': ((6, 7), np.float64)}
        for key, (shape, dtype) in expected.items():
            assert (demo[key].shape, demo[key].dtype) == (shape, dtype), key
        assert demo['obs/agentview_rgb'].compression == 'gzip'
        np.testing.assert_array_equal(demo['dones'][()], [0, 0, 0, 0, 0, 1])
        np.testing.assert_array_equal(demo['rewards'][()], [0, 0, 0, 0, 0, 1])
        assert demo.attrs['num_samples'] == 6 and demo.attrs['start'] == 'fixed-0'
        np.testing.assert_array_equal(demo.attrs['init_state'], demo['states'][0])


def test_reader_reads_a_file_without_attributes(tmp_path):
    """OpenVLA-OFT's regenerated files have no attributes at all: the instruction comes from the file name."""
    path = tmp_path / 'KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5'
    demonstration = random_demonstration(4, seed=3)
    with h5py.File(path, 'w') as file:
        demo = file.create_group('data').create_group('demo_10')
        for key in ('actions', 'states', 'robot_states'):
            demo.create_dataset(key, data=getattr(demonstration, key))
        for key in ('agentview_rgb', 'eye_in_hand_rgb', 'ee_states', 'gripper_states', 'joint_states'):
            demo.create_dataset(f'obs/{key}', data=getattr(demonstration, key))
        file['data'].copy('demo_10', 'demo_2')
    with DemoFileReader(path) as reader:
        assert reader.instruction == 'turn on the stove'
        assert reader.demo_names == ['demo_2', 'demo_10']  # numeric order, as LIBERO numbers them
        read = reader.read('demo_10')
        np.testing.assert_array_equal(read.eye_in_hand_rgb, demonstration.eye_in_hand_rgb)
        assert (read.model_file, read.start, read.executed_actions) == ('', None, None)


def test_a_demo_interrupted_while_written_is_dropped_on_reopening(tmp_path):
    path = tmp_path / 'put_the_bowl_on_the_plate_demo.hdf5'
    DemoFileWriter(path, PROBLEM_INFO).write(random_demonstration(3, seed=4, start='fixed-0'))
    with h5py.File(path, 'a') as file:  # what a kill between a demo's datasets and its num_samples leaves
        file['data'].create_group('demo_1').create_dataset('actions', data=np.zeros((2, 7)))
    writer = DemoFileWriter(path, PROBLEM_INFO)
    assert writer.starts() == {'fixed-0'}
    assert writer.write(random_demonstration(2, seed=5, start='fixed-1')) == 'demo_1'
    with DemoFileReader(path) as reader:
        assert [len(demonstration) for demonstration in reader] == [3, 2]


def test_files_of_earlier_versions_name_their_fixed_starts_by_index(tmp_path):
    path = tmp_path / 'put_the_bowl_on_the_plate_demo.hdf5'
    writer = DemoFileWriter(path, PROBLEM_INFO)
    writer.write(random_demonstration(2, seed=7))
    with h5py.File(path, 'a') as file:
        file['data/demo_0'].attrs['init_state_index'] = 12
    assert writer.starts() == {'fixed-12'}
    with DemoFileReader(path) as reader:
        assert reader.read('demo_0').start == 'fixed-12'


def test_writer_waits_while_another_process_has_the_file_open(tmp_path, monkeypatch):
    path = tmp_path / 'put_the_bowl_on_the_plate_demo.hdf5'
    writer = DemoFileWriter(path, PROBLEM_INFO)
    monkeypatch.setattr(libero_hdf5, 'LOCKED_FILE_POLL', 0.1)
    reader = subprocess.Popen([sys.executable, '-c', f"import h5py, time; file = h5py.File({str(path)!r}, 'r'); "
                               "print('open', flush=True); time.sleep(2)"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == 'open\n'
        start = time.monotonic()
        assert writer.write(random_demonstration(2, seed=6, start='fixed-0')) == 'demo_0'
        assert time.monotonic() - start > 0.5, 'the reader held the file: the writer had to wait'
    finally:
        reader.wait()


def test_names_follow_the_official_files():
    assert demo_file_name('open_the_middle_drawer_of_the_cabinet') == 'open_the_middle_drawer_of_the_cabinet_demo.hdf5'
    assert instruction_from_file_name('put_the_bowl_on_the_plate_demo.hdf5') == 'put the bowl on the plate'
    long_name = 'LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket_demo.hdf5'
    assert instruction_from_file_name(long_name) == 'put both the alphabet soup and the tomato sauce in the basket'
