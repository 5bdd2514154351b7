"""Recordings: MCAP writing (schemas, rotation), LIBERO data converted to recordings, replay through the engine
(exact against the same queries run directly), the settings sweep, and, with real processes, the recorder beside
the policy node: every topic recorded, the recorded actions reproduced offline, the sweep's YAML loaded by the node."""

import json
import signal
import time

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2._dynamic import generate_dynamic

from ctr_vla_ros.control.chunk_execution import DeltaLimits
from ctr_vla_ros.control.robot_state import axis_angle_to_quaternion, quaternion_multiply
from ctr_vla_ros.control.trajectory import predicted_path
from ctr_vla_ros.ctr.config import PRESETS, CtrConfig
from ctr_vla_ros.data.libero_hdf5 import DemoFileWriter, Demonstration
from ctr_vla_ros.model.checkpoint import load_checkpoint
from ctr_vla_ros.policy import VlaPolicy
from ctr_vla_ros.recording.mcap_writer import RecordingLimits, RecordingWriter
from ctr_vla_ros.recording.message_definitions import cdr_encoder, message_definition
from ctr_vla_ros.recording.replay import RECORDING_METADATA, open_recording, recorded_queries, replay
from ctr_vla_ros.tools import convert_to_mcap, sweep
from ctr_vla_ros.tools import replay as replay_tool
from conftest import LIBERO_SEQUENCES

UNNORM_KEY = 'libero_spatial_no_noops'
SEQUENCE = LIBERO_SEQUENCES / 'libero_spatial_t0_i0.npz'


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    output = tmp_path_factory.mktemp('recordings')
    return convert_to_mcap.convert_sequence(SEQUENCE, output)[0]


def test_schemas_carry_every_dependency_once_and_no_constants():
    text = message_definition('ctr_vla_ros_msgs/msg/EndEffectorDelta')
    assert text.count('MSG: std_msgs/msg/Header') == 1 and text.count('MSG: builtin_interfaces/msg/Time') == 1
    assert 'uint8 STOP=0' in text and 'MSG: ctr_vla_ros_msgs' not in text  # constants are not types
    path = message_definition('nav_msgs/msg/Path')
    assert path.count('MSG: ') == 6  # PoseStamped, Header, Time, Pose, Point, Quaternion


def test_cdr_encoding_matches_rclpy():
    serialization = pytest.importorskip('rclpy.serialization')
    from sensor_msgs.msg import Image

    data = cdr_encoder('sensor_msgs/msg/Image')({
        'header': {'stamp': {'sec': 3, 'nanosec': 7}, 'frame_id': 'wrist'}, 'height': 2, 'width': 1,
        'encoding': 'rgb8', 'is_bigendian': 0, 'step': 3, 'data': bytes(range(6))})
    message = serialization.deserialize_message(data, Image)
    assert (message.header.stamp.sec, message.header.stamp.nanosec, message.header.frame_id) == (3, 7, 'wrist')
    assert (message.height, message.width, message.step, list(message.data)) == (2, 1, 3, list(range(6)))
    # And the other way: rclpy's bytes decode with the schema alone (padding bytes may differ, so not compared).
    decoded = generate_dynamic('sensor_msgs/msg/Image', message_definition('sensor_msgs/msg/Image'))[
        'sensor_msgs/msg/Image'](serialization.serialize_message(message))
    assert (decoded.header.frame_id, decoded.step, bytes(decoded.data)) == ('wrist', 3, bytes(range(6)))


def test_writer_rotates_by_size_and_duration_and_keeps_the_newest_files(tmp_path):
    encode = cdr_encoder('std_msgs/msg/String')
    writer = RecordingWriter(tmp_path, 'run', RecordingLimits(max_duration=1.0, max_files=2), compression='lz4')
    writer.add_topic('/chatter', 'std_msgs/msg/String')
    writer.set_metadata(RECORDING_METADATA, {'query_every': '8'})
    writer.set_metadata('rosbag2', {'serialized_bag_info': 'not JSON: {'})  # another tool's, kept as text
    for index in range(50):  # 10 messages per second for 5 s
        writer.write('/chatter', encode({'data': f'message {index}'}), log_time=index * 100_000_000)
    writer.close()
    assert [path.name for path in writer.files] == [f'run_{index}.mcap' for index in range(5)]
    kept = [path for path in writer.files if path.exists()]
    assert [path.name for path in kept] == ['run_3.mcap', 'run_4.mcap']
    recording = open_recording(kept)
    assert recording.message_counts == {'/chatter': 20}
    assert recording.metadata == {RECORDING_METADATA: {'query_every': 8},
                                  'rosbag2': {'serialized_bag_info': 'not JSON: {'}}

    sized = RecordingWriter(tmp_path / 'sized', 'big', RecordingLimits(max_bytes=3 << 20), compression='none')
    sized.add_topic('/blob', 'std_msgs/msg/String')
    for index in range(40):  # 40 x 256 KiB: the 3 MiB limit gives 4 files (each ends within a 1 MiB chunk)
        sized.write('/blob', encode({'data': 'x' * (256 << 10)}), log_time=index)
    sized.close()
    assert len(sized.files) == 4
    assert open_recording(sized.files).message_counts == {'/blob': 40}
    for path in sized.files:
        with open(path, 'rb') as stream:
            summary = make_reader(stream).get_summary()
        assert summary.schemas[1].encoding == 'ros2msg' and summary.channels[1].message_encoding == 'cdr'


def test_a_demonstration_with_a_frame_stride_converts_to_a_query_every_chunk(tmp_path):
    """17 steps with frames at steps 0, 4, ..., 16: the cameras publish those 5 frames upright, and the queries are
    still every 8 steps, at steps 0, 8 and 16, each with its step's state."""
    generator = np.random.default_rng(0)
    frames = generator.integers(0, 256, (2, 5, 16, 16, 3), dtype=np.uint8)
    ee_states = generator.normal(size=(17, 6))
    gripper_states = generator.normal(size=(17, 2))
    demonstration = Demonstration(actions=np.zeros((17, 7)), agentview_rgb=frames[0], eye_in_hand_rgb=frames[1],
                                  ee_states=ee_states, gripper_states=gripper_states, joint_states=np.zeros((17, 7)),
                                  robot_states=np.zeros((17, 9)), states=np.zeros((17, 4)), frame_stride=4)
    source = tmp_path / 'turn_on_the_stove_demo.hdf5'
    DemoFileWriter(source, {'language_instruction': 'turn on the stove'}).write(demonstration)
    [path] = convert_to_mcap.convert_demos(source, tmp_path / 'recordings', None)
    recording = open_recording([path])
    assert recording.message_counts['/camera/primary/image_raw'] == 5
    assert recording.metadata[RECORDING_METADATA]['query_every'] == 2
    queries = list(recorded_queries(recording))
    assert [query.timestamp for query in queries] == pytest.approx([0.0, 0.4, 0.8])
    for query, frame, step in zip(queries, (0, 2, 4), (0, 8, 16)):
        np.testing.assert_array_equal(query.images[0], frames[0, frame, ::-1, ::-1])
        np.testing.assert_array_equal(query.images[1], frames[1, frame, ::-1, ::-1])
        np.testing.assert_array_equal(query.state, np.concatenate([ee_states[step], gripper_states[step]]))
        assert query.instruction == 'turn on the stove'


def test_a_converted_sequence_replays_as_its_queries(converted, libero_sequence):
    recording = open_recording([converted])
    assert recording.message_counts == {'/camera/primary/image_raw': 20, '/camera/wrist/image_raw': 20,
                                        '/robot_state': 20, '/instruction': 1}
    assert recording.metadata[RECORDING_METADATA]['query_every'] == 1
    queries = list(recorded_queries(recording))
    assert len(queries) == 20
    for index, query in enumerate(queries):
        assert np.array_equal(query.images[0], libero_sequence['agentview'][index])
        assert np.array_equal(query.images[1], libero_sequence['wrist'][index])
        assert np.array_equal(query.state, libero_sequence['proprio8'][index].astype(np.float64))
        assert query.instruction == libero_sequence['instruction']
    assert [query.reset_reason for query in queries[:2]] == ['first_query', None]
    assert queries[1].timestamp == pytest.approx(0.4)  # a query every 8 control steps at 20 Hz


def test_replay_equals_the_policy_run_directly(converted, libero_sequence, tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    direct = VlaPolicy(checkpoint, UNNORM_KEY, ctr=PRESETS['paper'])
    replayed = VlaPolicy(checkpoint, UNNORM_KEY, ctr=PRESETS['paper'])
    full = VlaPolicy(checkpoint, UNNORM_KEY, ctr=PRESETS['off'])
    results = list(replay([replayed, full], recorded_queries(open_recording([converted]))))
    for index, (query, (result, full_result)) in enumerate(results):
        expected = direct.predict([libero_sequence['agentview'][index], libero_sequence['wrist'][index]],
                                  libero_sequence['proprio8'][index], libero_sequence['instruction'],
                                  timestamp=query.timestamp)
        assert np.array_equal(result.normalized_actions, expected.normalized_actions), index
        assert result.keyframe == (index % 5 == 0)
        if result.keyframe:  # a keyframe recomputes everything: the same numbers as full recompute
            assert np.allclose(result.normalized_actions, full_result.normalized_actions, atol=1e-5)
    assert any(result.vision_reuse > 0 for _, (result, _) in results)


def test_sweep_writes_the_plot_and_the_recommended_parameter_file(converted, tiny_checkpoint, tmp_path):
    output = tmp_path / 'sweep'
    code = sweep.main([str(converted), '--checkpoint', str(tiny_checkpoint), '--unnorm-key', UNNORM_KEY,
                       '--output', str(output), '--limit', '6', '--max-deviation', '1.0',
                       '--thresholds', '0.002', '0.004', '0.008', '--cosine-thresholds', '--top-k', '32', '160',
                       '--caps', '120', '0', '--keyframe-intervals', '5'])
    assert code == 0
    result = json.loads((output / 'sweep.json').read_text())
    # The grid (3 thresholds x 2 top-K x 2 caps x no pruning or from layer 1) and the presets paper,
    # patch_reference, fast, prune_static.
    assert len(result['settings']) == 24 + 4
    assert result['queries'] == 6 and (output / 'sweep.png').stat().st_size > 10_000
    points = result['settings']
    assert points['gray0.004_k32_cap0_kf5']['config']['llm_prune_layer'] == -1
    assert points['gray0.004_k32_cap0_kf5_prune1']['config']['llm_prune_layer'] == 1
    best = max(points, key=lambda name: points[name]['flops_reduction'])
    assert result['recommended'] == best and best in result['pareto_front']
    for name in result['pareto_front']:  # nothing on the front is beaten on both axes
        assert not any(other['flops_reduction'] > points[name]['flops_reduction']
                       and other['deviation_mean'] < points[name]['deviation_mean'] for other in points.values())
    loaded = CtrConfig.from_yaml(output / 'recommended_ctr.yaml')
    assert loaded == CtrConfig.from_dict(points[best]['config'])


def test_sweep_checks_its_best_settings_in_closed_loop(converted, tiny_checkpoint, tmp_path):
    pytest.importorskip('libero', reason='the LIBERO simulation extra is not installed (make setup-sim)')
    output = tmp_path / 'sweep'
    code = sweep.main([str(converted), '--checkpoint', str(tiny_checkpoint), '--unnorm-key', UNNORM_KEY,
                       '--output', str(output), '--limit', '4', '--max-deviation', '1.0', '--thresholds', '0.004',
                       '--cosine-thresholds', '--top-k', '32', '--caps', '0', '--keyframe-intervals', '5',
                       '--prune-layers', '-1', '1', '--precise-speeds', '0', '0.4',
                       '--consistency-thresholds', '0', '0.5', '--closed-loop', '1',
                       '--eval-tasks', '0', '--eval-init-states', '40', '40', '--eval-max-steps', '12',
                       '--workers', '1'])
    result = json.loads((output / 'sweep.json').read_text())
    points = result['settings']
    assert {'gray0.004_k32_cap0_kf5_prune1', 'gray0.004_k32_cap0_kf5', 'gray0.004_k32_cap0_kf5_precise0.4g0',
            'gray0.004_k32_cap0_kf5_prune1_precise0.4g0'} <= set(points)
    assert points['gray0.004_k32_cap0_kf5_prune1']['config']['attention_layer'] == 0
    assert points['gray0.004_k32_cap0_kf5_precise0.4g0']['config']['precise_speed'] == 0.4
    assert points['gray0.004_k32_cap0_kf5_guard0.5']['config']['consistency_threshold'] == 0.5
    best = max(points, key=lambda name: points[name]['flops_reduction'])
    # The random-weight policy fails every episode with or without reuse: success is kept, so the best is chosen.
    assert code == 0 and set(result['closed_loop']) == {'off', 'paper', best} and result['recommended'] == best
    assert result['closed_loop'][best]['paired_episodes'] == 1
    evaluation = json.loads((output / 'closed_loop' / 'eval.json').read_text())
    assert {episode['start'] for episode in evaluation['episodes']} == {'fixed-40'}
    text = (output / 'recommended_ctr.yaml').read_text()
    assert 'closed loop 0/1 against off 0/1' in text
    assert CtrConfig.from_yaml(output / 'recommended_ctr.yaml') == CtrConfig.from_dict(points[best]['config'])


def test_predicted_path_follows_the_clamped_deltas():
    limits = DeltaLimits((0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 1.0))
    state = np.array([0.1, -0.2, 1.0, 0.0, 0.0, np.pi / 2, 0.04, -0.04])
    deltas = np.zeros((3, 7))
    deltas[:, 0] = [0.005, 0.02, -0.005]  # the second is clamped to 0.01
    deltas[:, 5] = 0.05  # about z, in the base frame
    positions, orientations = predicted_path(state, deltas, limits)
    assert positions.shape == (4, 3) and orientations.shape == (4, 4)
    assert np.allclose(positions[:, 0], [0.1, 0.105, 0.115, 0.110]) and np.allclose(positions[:, 1:], [-0.2, 1.0])
    expected = quaternion_multiply(axis_angle_to_quaternion([0.0, 0.0, 0.15]),
                                   axis_angle_to_quaternion([0.0, 0.0, np.pi / 2]))
    assert np.allclose(orientations[-1], expected)
    assert np.allclose(orientations[0], axis_angle_to_quaternion(state[3:6]))


# ------------------------------------------------------------------------------------------ real processes
@pytest.mark.ros
def test_recorder_records_the_policy_and_replay_reproduces_it(tiny_checkpoint, libero_sequence, ros_domain,
                                                                tmp_path):
    from ctr_vla_ros_msgs.msg import ActionChunk
    from nav_msgs.msg import Path

    from ctr_vla_ros.tools.node_processes import NodeProcess
    from helpers.policy_feed import NODE, Feed
    from helpers.ros_harness import Driver, wait_until

    recorder = NodeProcess('ctr_vla_recorder', overrides={
        'output_directory': str(tmp_path), 'recording_name': 'run', 'max_file_duration': 2.0})
    policy = NodeProcess('ctr_vla_policy', overrides={'checkpoint': str(tiny_checkpoint), 'proprio_source': 'state'})
    driver = Driver()
    try:
        chunks = driver.record(ActionChunk, f'{NODE}/action_chunk')
        paths = driver.record(Path, f'{NODE}/predicted_path')
        feed = Feed(driver, libero_sequence['agentview'][0], libero_sequence['wrist'][0],
                    libero_sequence['proprio8'][0], libero_sequence['instruction'])
        frame = iter(range(10**6))

        def next_frames():  # the scene changes, so the masks mix reused and recomputed patches
            index = next(frame) % 20
            feed.primary, feed.wrist = libero_sequence['agentview'][index], libero_sequence['wrist'][index]
        driver.node.create_timer(0.3, next_frames)
        policy.wait_for_log('ready:')
        for topic in ('/camera/primary/image_raw', '/camera/wrist/image_raw', '/instruction', '/robot_state',
                      f'{NODE}/ee_delta', f'{NODE}/action_chunk', f'{NODE}/ctr_stats', f'{NODE}/predicted_path',
                      f'{NODE}/reuse_mask/primary', f'{NODE}/reuse_mask/wrist'):
            recorder.wait_for_log(f'recording {topic} (')
        recorder.wait_for_log('recorded the parameters of ctr_vla_policy')
        feed.enable()
        wait_until(lambda: len(chunks) >= 12, 120, '12 chunks')
        feed.enable(False)  # the outputs stop (a chunk in flight is dropped), so the recording ends complete
        time.sleep(1.0)
        received = len(chunks)
        assert recorder.interrupt() == 0
    finally:
        policy.process.send_signal(signal.SIGINT)
        policy.interrupt()
        recorder.kill()
        driver.close()

    files = sorted(tmp_path.glob('run_*.mcap'), key=lambda path: int(path.stem.split('_')[1]))
    assert len(files) >= 2, 'a new file every 2 s'
    recording = open_recording(files)
    counts = recording.message_counts
    assert counts[f'{NODE}/action_chunk'] == received
    for topic in (f'{NODE}/ctr_stats', f'{NODE}/predicted_path', f'{NODE}/reuse_mask/primary',
                  f'{NODE}/reuse_mask/wrist'):
        assert counts[topic] == counts[f'{NODE}/action_chunk'], topic
    assert counts['/instruction'] == 1 and counts[f'{NODE}/ee_delta'] > counts[f'{NODE}/action_chunk']
    assert counts['/camera/primary/image_raw'] > 20 and counts['/robot_state'] > 20
    settings = recording.policy_settings
    assert settings['checkpoint'] == str(tiny_checkpoint) and settings['ctr.top_k'] == 32

    first = paths[0]
    assert len(first.poses) == 9  # the current pose and one per action of the chunk
    position = first.poses[0].pose.position
    assert [position.x, position.y, position.z] == pytest.approx(libero_sequence['proprio8'][0][:3].tolist())

    report = tmp_path / 'replay.json'
    assert replay_tool.main([str(path) for path in files] + ['--json', str(report)]) == 0
    result = json.loads(report.read_text())
    assert result['summary']['reproduced'], result['summary']
    assert result['summary']['queries'] >= counts[f'{NODE}/action_chunk'] - 5  # from the first recorded keyframe
    assert any(row['vision_reuse'] > 0 for row in result['queries'])


@pytest.mark.ros
def test_the_policy_node_starts_with_the_sweeps_parameter_file(tiny_checkpoint, ros_domain, tmp_path):
    from rcl_interfaces.srv import GetParameters

    from ctr_vla_ros.tools.node_processes import CONFIG, NodeProcess
    from helpers.ros_harness import Driver, wait_until

    tuned = PRESETS['fast'].replace(top_k=48, difference_threshold=0.012, keyframe_interval=7)
    path = tmp_path / 'recommended_ctr.yaml'
    path.write_text(tuned.to_parameters_yaml(comment='written by the test'))
    policy = NodeProcess('ctr_vla_policy', parameter_files=(CONFIG, path),
                         overrides={'checkpoint': str(tiny_checkpoint)})
    driver = Driver()
    try:
        policy.wait_for_log('ready:')
        client = driver.node.create_client(GetParameters, '/ctr_vla_policy/get_parameters')
        assert client.wait_for_service(timeout_sec=20)
        names = [f'ctr.{name}' for name in ('top_k', 'difference_threshold', 'keyframe_interval', 'reference')]
        future = client.call_async(GetParameters.Request(names=names))
        wait_until(future.done, 20, 'parameters')
        values = future.result().values
        assert [values[0].integer_value, values[1].double_value, values[2].integer_value, values[3].string_value] \
            == [48, 0.012, 7, 'patch']
        assert policy.interrupt() == 0
    finally:
        policy.kill()
        driver.close()
