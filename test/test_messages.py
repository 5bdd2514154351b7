"""Each interface message round-trips between two separate processes over a real topic, field by field."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy')
msgs = pytest.importorskip('ctr_vla_ros_msgs.msg')
from builtin_interfaces.msg import Time  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from helpers.ros_messages import message_to_data  # noqa: E402

pytestmark = pytest.mark.ros

TEST_DIR = Path(__file__).parent


def header(frame_id: str) -> Header:
    return Header(stamp=Time(sec=1_700_000_123, nanosec=456_789_000), frame_id=frame_id)


def end_effector_delta() -> msgs.EndEffectorDelta:
    return msgs.EndEffectorDelta(
        header=header('base_link'), translation=[0.001, -0.002, 0.0035], rotation=[0.01, 0.0, -0.02],
        gripper=1.0, chunk_id=12, index_in_chunk=7, control_period=0.05)


def action_chunk() -> msgs.ActionChunk:
    actions = [0.01 * i - 0.2 for i in range(56)]
    return msgs.ActionChunk(
        header=header('base_link'), chunk_id=3, horizon=8, action_dim=7, control_period=0.05,
        actions=actions, normalized_actions=[a * 3.0 for a in actions],
        camera_stamps=[Time(sec=1_700_000_123, nanosec=456_789_000), Time(sec=1_700_000_123, nanosec=470_000_000)],
        proprio=[0.1, -0.2, 1.05, 3.1, 0.02, -0.01, 0.039, -0.039],
        instruction='put the bowl on the plate', model_name='openvla-oft',
        checkpoint='openvla-7b-oft-finetuned-libero-spatial', unnorm_key='libero_spatial_no_noops',
        observation_age=0.015, inference_latency=0.123)


def reuse_mask() -> msgs.ReuseMask:
    states = [msgs.ReuseMask.STATE_REUSED, msgs.ReuseMask.STATE_RECOMPUTED_DYNAMIC,
              msgs.ReuseMask.STATE_RECOMPUTED_TASK_RELEVANT, msgs.ReuseMask.STATE_KEYFRAME]
    return msgs.ReuseMask(
        header=header('wrist_camera_optical_frame'), camera_name='wrist', grid_rows=16, grid_cols=16,
        patch_state=[states[i % 4] for i in range(256)], attention_score=[i / 1024.0 for i in range(256)],
        query_index=41, keyframe=False, vision_reuse_ratio=0.375, llm_reuse_ratio=0.25)


def ctr_stats() -> msgs.CtrStats:
    return msgs.CtrStats(
        header=header('agentview_camera'), query_index=41, preprocess_time=0.001, mask_time=0.0005,
        vision_time=0.02, projector_time=0.003, llm_time=0.09, head_time=0.001, total_time=0.1155,
        vision_flops=7.4e11, projector_flops=7.0e10, llm_flops=8.03e12, head_flops=3.0e9, executed_flops=8.84e12,
        full_recompute_flops=9.5e12, vision_reuse_ratio=0.5, llm_reuse_ratio=0.4375, keyframe=True,
        keyframe_reason='interval', keyframe_count=9, reset_count=2)


@pytest.mark.parametrize('make_message', [end_effector_delta, action_chunk, reuse_mask, ctr_stats],
                         ids=lambda f: f.__name__)
def test_message_round_trips_between_processes(make_message, ros_domain):
    sent = make_message()
    message_type = f'ctr_vla_ros_msgs/msg/{type(sent).__name__}'
    topic = f'/round_trip/{type(sent).__name__}'
    echo = subprocess.Popen(
        [sys.executable, '-m', 'helpers.echo_once', message_type, topic],
        cwd=TEST_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('round_trip_publisher', context=context)
        publisher = node.create_publisher(type(sent), topic, 10)
        deadline = time.monotonic() + 20.0
        while publisher.get_subscription_count() == 0 and echo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.get_subscription_count() == 1, f'echo never subscribed: {echo.stderr.read()}'
        publisher.publish(sent)
        stdout, stderr = echo.communicate(timeout=30)
    finally:
        echo.kill()
        rclpy.shutdown(context=context)

    assert echo.returncode == 0, stderr
    received = json.loads(stdout.splitlines()[-1])
    expected = message_to_data(sent)
    assert received.keys() == expected.keys()
    for field, value in expected.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert received[field] == pytest.approx(value, rel=0, abs=0), field
        else:
            assert received[field] == value, field
