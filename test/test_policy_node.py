"""The policy node as its own process, driven over real topics by this test process."""

import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from ctr_vla_ros_msgs.msg import ActionChunk, CtrStats, EndEffectorDelta, ReuseMask  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from ctr_vla_ros.control.chunk_execution import ActionConvention, DeltaLimits  # noqa: E402
from ctr_vla_ros.ctr.config import CtrConfig  # noqa: E402
from ctr_vla_ros.model.checkpoint import load_checkpoint  # noqa: E402
from ctr_vla_ros.policy import VlaPolicy  # noqa: E402
from helpers.policy_feed import NODE, Feed  # noqa: E402
from helpers.ros_harness import Driver, wait_until  # noqa: E402
from ctr_vla_ros.tools.node_processes import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def start(tiny_checkpoint, libero_sequence, ros_domain):
    """start(**parameters) -> (node process, driver, feed, outputs); everything is torn down after the test."""
    started = []

    def start_node(**parameters):
        node = NodeProcess('ctr_vla_policy', overrides=
                           {'checkpoint': str(tiny_checkpoint), 'proprio_source': 'state', **parameters})
        driver = Driver()
        outputs = {
            'deltas': driver.record(EndEffectorDelta, f'{NODE}/ee_delta'),
            'chunks': driver.record(ActionChunk, f'{NODE}/action_chunk'),
            'primary_masks': driver.record(ReuseMask, f'{NODE}/reuse_mask/primary'),
            'wrist_masks': driver.record(ReuseMask, f'{NODE}/reuse_mask/wrist'),
            'stats': driver.record(CtrStats, f'{NODE}/ctr_stats'),
            'diagnostics': driver.record(DiagnosticArray, '/diagnostics'),
        }
        feed = Feed(driver, libero_sequence['agentview'][4], libero_sequence['wrist'][4],
                    libero_sequence['proprio8'][4], libero_sequence['instruction'])
        started.append((node, driver))
        node.wait_for_log('ready:')
        return node, driver, feed, outputs

    yield start_node
    # Every node process first: no driver is destroyed while a node still publishes to its subscriptions.
    for node, _ in started:
        node.kill()
    for _, driver in started:
        driver.close()


def seconds(stamp):
    return stamp.sec + stamp.nanosec * 1e-9


def moving(deltas):
    return [delta for delta in deltas if delta.kind == EndEffectorDelta.MOTION]


def kinds(deltas):
    return [delta.kind for delta in deltas]


def assert_still_with_gripper(command, gripper):
    """A HOLD or STOP: no motion, and the gripper command is the last one a MOTION gave."""
    assert command.kind in (EndEffectorDelta.HOLD, EndEffectorDelta.STOP)
    assert list(command.translation) == [0.0, 0.0, 0.0] and list(command.rotation) == [0.0, 0.0, 0.0]
    assert command.gripper == gripper


def core_prediction(tiny_checkpoint, libero_sequence):
    policy = VlaPolicy(load_checkpoint(tiny_checkpoint), 'libero_spatial_no_noops', ctr=CtrConfig())
    return policy.predict([libero_sequence['agentview'][4], libero_sequence['wrist'][4]],
                          libero_sequence['proprio8'][4], libero_sequence['instruction'])


def test_chunks_and_deltas_match_the_core_prediction(start, tiny_checkpoint, libero_sequence):
    # No input-gap keyframe however slow the machine: the second query must reuse.
    node, driver, feed, outputs = start(ctr={'input_timeout': 1000.0})
    feed.enable()
    wait_until(lambda: len(outputs['chunks']) >= 3 and len(moving(outputs['deltas'])) >= 17, 90,
               'three chunks and more than two chunks of deltas')

    expected = core_prediction(tiny_checkpoint, libero_sequence)
    for chunk in outputs['chunks'][:3]:  # identical inputs: reuse must reproduce the keyframe's chunk
        assert (chunk.horizon, chunk.action_dim) == (8, 7)
        np.testing.assert_allclose(np.reshape(chunk.actions, (8, 7)), expected.actions, atol=1e-5)
        np.testing.assert_allclose(np.reshape(chunk.normalized_actions, (8, 7)), expected.normalized_actions,
                                   atol=1e-5)
        assert (chunk.header.stamp.sec, chunk.header.stamp.nanosec) in feed.published_stamps
        assert chunk.header.frame_id == 'base_link' and chunk.unnorm_key == 'libero_spatial_no_noops'

    convention = ActionConvention(0.05, 0.5, 'open_is_one')
    limits = DeltaLimits((0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 1.0))
    expected_deltas = [limits.clamp(delta)[0] for delta in convention.to_deltas(expected.actions)]
    first_chunk = [delta for delta in outputs['deltas'] if delta.chunk_id == outputs['chunks'][0].chunk_id]
    assert [delta.index_in_chunk for delta in first_chunk] == list(range(8))
    for delta, wanted in zip(first_chunk, expected_deltas):
        np.testing.assert_allclose([*delta.translation, *delta.rotation, delta.gripper], wanted, atol=1e-6)
        assert delta.control_period == pytest.approx(0.05) and delta.header.frame_id == 'base_link'
    stamps = [seconds(delta.header.stamp) for delta in first_chunk]
    assert np.median(np.diff(stamps)) == pytest.approx(0.05, rel=0.4)  # the configured rate, not a benchmark

    masks = outputs['primary_masks']
    assert masks[0].keyframe and set(masks[0].patch_state) == {ReuseMask.STATE_KEYFRAME}
    assert (masks[0].grid_rows, masks[0].grid_cols, len(masks[0].patch_state)) == (16, 16, 256)
    assert not masks[1].keyframe and ReuseMask.STATE_REUSED in set(masks[1].patch_state)
    assert outputs['wrist_masks'][0].camera_name == 'wrist'
    stats = outputs['stats']
    assert stats[0].keyframe_reason == 'first_query' and stats[1].executed_flops < stats[1].full_recompute_flops
    wait_until(lambda: any(status.message == 'running' for array in outputs['diagnostics']
                           for status in array.status), 10, 'diagnostics say running')


def test_disabled_node_sends_no_motion_and_dry_run_publishes_everything_else(start):
    node, driver, feed, outputs = start()
    time.sleep(3.0)
    assert outputs['deltas'] == [] and outputs['chunks'] == []
    states = {value.value for array in outputs['diagnostics'] for status in array.status for value in status.values
              if value.key == 'state'}
    assert states == {'disabled'}
    assert node.interrupt() == 0

    node, driver, feed, outputs = start(dry_run=True)
    feed.enable()
    wait_until(lambda: len(outputs['chunks']) >= 2, 60, 'chunks in dry run')
    assert outputs['deltas'] == []


def set_encoding(message):
    message.encoding = '16UC1'
    return message


def shrink_step(message):
    message.step = message.width * 3 - 6
    return message


def truncate(message):
    message.data = message.data[: len(message.data) // 2]
    return message


@pytest.mark.parametrize('corrupt, logged', [
    (set_encoding, "unsupported encoding '16UC1'"),
    (shrink_step, 'is smaller than width'),
    (truncate, 'truncated data'),
], ids=['wrong-encoding', 'step-size-mismatch', 'truncated'])
def test_bad_images_are_refused_and_the_node_recovers(start, corrupt, logged):
    node, driver, feed, outputs = start()
    feed.corrupt = corrupt
    time.sleep(1.0)  # longer than camera_timeout: the good frames sent during start-up are stale
    feed.enable()
    node.wait_for_log(logged, timeout=20)
    wait_until(lambda: any('camera primary: frames refused' in value.value and logged in value.value
                           for array in outputs['diagnostics'] for status in array.status for value in status.values),
               10, 'diagnostics name the reason')
    time.sleep(1.0)
    assert moving(outputs['deltas']) == [] and outputs['chunks'] == []
    feed.corrupt = None
    wait_until(lambda: moving(outputs['deltas']), 60, 'motion after good frames return')
    assert node.process.poll() is None


def test_empty_instruction_stops_motion_until_a_task_is_given(start):
    node, driver, feed, outputs = start()
    feed.instruction_publisher.publish(String(data='   '))
    feed.enable()
    node.wait_for_log('empty instruction received', timeout=20)
    time.sleep(2.0)
    assert moving(outputs['deltas']) == []
    feed.instruction_publisher.publish(String(data='put the bowl on the plate'))
    wait_until(lambda: moving(outputs['deltas']), 60, 'motion after a valid instruction')


def test_nan_state_is_refused_and_the_node_recovers(start, libero_sequence):
    node, driver, feed, outputs = start()
    good_state = feed.state
    feed.state = np.where(np.arange(8) == 3, np.nan, good_state)
    feed.enable()
    node.wait_for_log('robot state refused: non-finite', timeout=20)
    time.sleep(2.0)
    assert moving(outputs['deltas']) == [] and outputs['chunks'] == []
    feed.state = good_state
    wait_until(lambda: moving(outputs['deltas']), 60, 'motion after a valid state')


def test_cameras_out_of_sync_send_no_motion(start):
    node, driver, feed, outputs = start()
    feed.wrist_offset = 1.0
    time.sleep(1.0)  # longer than camera_timeout: the in-sync pairs sent during start-up are too old to use
    feed.enable()
    wait_until(lambda: any('cameras out of sync' in value.value for array in outputs['diagnostics']
                           for status in array.status for value in status.values), 20,
               'diagnostics report unpaired frames')
    assert moving(outputs['deltas']) == [] and outputs['chunks'] == []
    feed.wrist_offset = 0.0
    wait_until(lambda: moving(outputs['deltas']), 60, 'motion after the cameras agree again')


def test_a_camera_that_stops_brings_a_stop_within_the_timeout(start):
    node, driver, feed, outputs = start(execution_mode='overlap', requery_remaining=4)
    feed.enable()
    wait_until(lambda: len(moving(outputs['deltas'])) >= 3, 60, 'motion')
    count = len(outputs['deltas'])
    feed.cameras_on[1] = False
    wait_until(lambda: outputs['deltas'][-1].kind == EndEffectorDelta.STOP, 5, 'a STOP')
    # Judged on the node's own stamps (the same wall clock as the feed's): the last wrist frame sent, the STOP.
    last_wrist = feed.last_sent[1]
    first_stop = next(delta for delta in outputs['deltas'][count:] if delta.kind == EndEffectorDelta.STOP)
    assert 0.5 < seconds(first_stop.header.stamp) - last_wrist < 0.5 + 0.25  # camera_timeout + a tick + transport
    assert_still_with_gripper(first_stop, moving(outputs['deltas'])[-1].gripper)
    count = len(outputs['deltas'])
    wait_until(lambda: len(outputs['deltas']) >= count + 15, 10, 'a STOP on every tick: the node is alive')
    assert moving(outputs['deltas'][count:]) == []
    node.wait_for_log('motion stopped: camera wrist: stale')


def test_reset_drops_the_chunk_and_forces_a_keyframe(start):
    node, driver, feed, outputs = start()
    feed.enable()
    wait_until(lambda: len(outputs['stats']) >= 2, 60, 'two queries')
    assert feed.call(Trigger, f'{NODE}/reset', Trigger.Request()).success
    wait_until(lambda: any(stats.keyframe_reason == 'episode_reset' for stats in outputs['stats']), 30,
               'a keyframe after the reset')
    reset_stats = next(stats for stats in outputs['stats'] if stats.keyframe_reason == 'episode_reset')
    assert reset_stats.reset_count == 1


def test_stops_hold_the_gripper_at_every_boundary_and_sigint_exits_promptly(start):
    """Chunk boundary (HOLD), reset, disable and Ctrl-C (STOP): no motion, the last commanded gripper kept."""
    node, driver, feed, outputs = start()
    deltas = outputs['deltas']
    feed.enable()
    wait_until(lambda: len(moving(deltas)) >= 8 and deltas[-1].kind == EndEffectorDelta.MOTION
               and any(kind == EndEffectorDelta.HOLD for kind in kinds(deltas)), 60, 'a chunk boundary')
    for previous, command in zip(deltas, deltas[1:]):
        if command.kind == EndEffectorDelta.HOLD and previous.kind == EndEffectorDelta.MOTION:
            assert_still_with_gripper(command, previous.gripper)

    # Judged from the STOP each call publishes, the moment the node handled the request: commands before it went out
    # while the request was on its way and may be anything; after it, no step of a chunk from before may follow.
    for stop in ('reset', 'disable'):
        # Early in a chunk, so steps are left that a broken reset would go on executing.
        wait_until(lambda: deltas[-1].kind == EndEffectorDelta.MOTION and deltas[-1].index_in_chunk <= 2, 30,
                   'motion early in a chunk')
        count = len(deltas)
        if stop == 'reset':
            assert feed.call(Trigger, f'{NODE}/reset', Trigger.Request()).success
        else:
            feed.enable(False)
        wait_until(lambda: EndEffectorDelta.STOP in kinds(deltas[count:]), 5, f'the STOP of {stop}')
        stop_at = kinds(deltas).index(EndEffectorDelta.STOP, count)
        assert_still_with_gripper(deltas[stop_at], moving(deltas[:stop_at])[-1].gripper)
        if stop == 'reset':  # motion resumes with a chunk computed after the reset, from its first step
            old_chunks = max(command.chunk_id for command in moving(deltas[:stop_at]))
            wait_until(lambda: moving(deltas[stop_at:]), 30, 'motion after the reset')
            resumed = moving(deltas[stop_at:])[0]
            assert resumed.chunk_id > old_chunks and resumed.index_in_chunk == 0, \
                f'after the reset STOP: chunk {resumed.chunk_id} step {resumed.index_in_chunk} (before: chunks ' \
                f'up to {old_chunks})'
            wait_until(lambda: any(stats.query_index == resumed.chunk_id for stats in outputs['stats']), 10, 'its stats')
            assert next(stats for stats in outputs['stats'] if stats.query_index == resumed.chunk_id).keyframe_reason \
                == 'episode_reset'
    time.sleep(1.0)
    assert len(deltas) == stop_at + 1  # disabled: nothing after the STOP

    feed.enable()
    wait_until(lambda: deltas[-1].kind == EndEffectorDelta.MOTION, 30, 'motion after enabling again')
    gripper, count = deltas[-1].gripper, len(deltas)
    node.process.send_signal(signal.SIGINT)
    wait_until(lambda: any(kind == EndEffectorDelta.STOP for kind in kinds(deltas[count:])), 5, 'the final STOP')
    final_stop_at = time.monotonic()
    assert node.process.wait(timeout=10) == 0
    assert time.monotonic() - final_stop_at < 1.0
    assert_still_with_gripper(deltas[-1], moving(deltas)[-1].gripper)
    assert deltas[-1].kind == EndEffectorDelta.STOP


def test_a_command_on_every_control_tick_while_enabled(start):
    for mode in ('open_loop', 'overlap'):
        node, driver, feed, outputs = start(execution_mode=mode)
        deltas = outputs['deltas']
        feed.enable()
        wait_until(lambda: len(moving(deltas)) >= 8, 60, 'motion')
        count = len(deltas)
        wait_until(lambda: len(deltas) >= count + 60, 30, f'{mode}: 60 more commands')
        window = deltas[count:count + 60]
        stamps = np.array([seconds(delta.header.stamp) for delta in window])
        assert np.max(np.diff(stamps)) < 2 * 0.05, f'{mode}: a control tick without a command'
        assert EndEffectorDelta.STOP not in kinds(window)
        node.kill()


def test_instruction_from_a_plain_publisher(start):
    node, driver, feed, outputs = start()
    plain = driver.node.create_publisher(String, '/instruction', 10)  # volatile, as most tools publish
    wait_until(lambda: plain.get_subscription_count() >= 1, 10, 'the node matches a plain publisher')
    plain.publish(String(data='open the top drawer'))
    node.wait_for_log('instruction: "open the top drawer"', timeout=10)


def test_enable_answers_with_what_is_missing(start, tiny_checkpoint):
    node, driver, feed, outputs = start(camera_topics=['/nobody/primary', '/nobody/wrist'])
    answer = feed.call(SetBool, f'{NODE}/enable', SetBool.Request(data=True))
    assert answer.success
    assert 'camera primary: no frame yet' in answer.message and 'camera wrist: no frame yet' in answer.message
