"""Pure parts under the nodes: frame pairing, chunk execution, clamps, robot state, image conversion, overlays."""

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ctr_vla_ros.control.camera_image import ImageError, image_to_rgb
from ctr_vla_ros.control.chunk_execution import ActionConvention, ChunkExecutor, DeltaLimits
from ctr_vla_ros.control.frame_pairing import FramePairer
from ctr_vla_ros.control.robot_state import check_state_range, libero_state, quaternion_to_axis_angle
from ctr_vla_ros.ctr.mask import PatchState
from ctr_vla_ros.ctr.overlay import BORDER_COLORS, REUSED_BLEND, REUSED_TINT, draw_overlay
from ctr_vla_ros.nodes.image_conversion import rgb_to_image


def test_frame_pairer_matches_within_tolerance_and_prefers_the_newest():
    pairer = FramePairer(2, tolerance=0.02, max_lag=0.5)
    assert pairer.latest() is None
    pairer.add(0, 1.00, 'p1')
    pairer.add(1, 1.05, 'w1')
    assert pairer.latest() is None  # 50 ms apart
    pairer.add(1, 1.01, 'w2')
    pairer.add(0, 1.10, 'p2')
    assert pairer.latest().frames == ('p1', 'w2')  # p2 has no partner yet
    pairer.add(1, 1.11, 'w3')
    pair = pairer.latest()
    assert (pair.stamp, pair.frames) == (1.10, ('p2', 'w3'))
    pairer.add(1, 1.51, 'w4')  # the cameras drift apart: p3 and p4 find no partner
    pairer.add(0, 1.30, 'p3')
    assert pairer.latest().frames == ('p2', 'w3')  # 0.2 s older than p3: still current enough
    pairer.add(0, 1.70, 'p4')
    assert pairer.latest() is None  # p2 is 0.6 s older than p4: too old to stand in


def test_chunk_executor_modes_and_clamps():
    limits = DeltaLimits((0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 1.0))
    deltas = np.zeros((8, 7))
    deltas[0] = [0.02, -0.005, -0.03, 0.2, 0.0, -0.05, 1.0]
    executor = ChunkExecutor(limits, 'open_loop')
    assert executor.needs_query()
    executor.load(deltas, chunk_id=4)
    first = executor.next_delta()
    np.testing.assert_allclose(first.delta, [0.01, -0.005, -0.01, 0.1, 0.0, -0.05, 1.0])
    assert (first.chunk_id, first.index_in_chunk, first.clamped_dimensions) == (4, 0, 3)
    for _ in range(6):
        executor.next_delta()
        assert not executor.needs_query()
    assert executor.next_delta().index_in_chunk == 7 and executor.needs_query()
    assert executor.next_delta() is None

    overlap = ChunkExecutor(limits, 'overlap', requery_remaining=3)
    overlap.load(deltas, chunk_id=1)
    for _ in range(4):
        overlap.next_delta()
    assert not overlap.needs_query()
    overlap.next_delta()
    assert overlap.needs_query() and overlap.remaining == 3
    overlap.load(deltas, chunk_id=2)  # the new chunk replaces the rest of the old one
    assert overlap.remaining == 8 and overlap.next_delta().chunk_id == 2
    with pytest.raises(ValueError, match='execution mode'):
        ChunkExecutor(limits, 'closed_loop')


def test_libero_action_convention():
    actions = np.array([[1.0, -0.5, 0.2, 1.0, 0.0, -0.4, 0.9], [0, 0, 0, 0, 0, 0, 0.1]])
    deltas = ActionConvention(0.05, 0.5, 'open_is_one').to_deltas(actions)
    np.testing.assert_allclose(deltas[0], [0.05, -0.025, 0.01, 0.5, 0.0, -0.2, -1.0])
    assert deltas[1, 6] == 1.0  # 0.1 = nearly closed -> close


def test_robot_state_from_pose():
    # 90 degrees about z: quaternion (0, 0, sin 45, cos 45).
    half = np.sqrt(0.5)
    np.testing.assert_allclose(quaternion_to_axis_angle([0, 0, half, half]), [0, 0, np.pi / 2], atol=1e-9)
    np.testing.assert_allclose(quaternion_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    state = libero_state(np.array([0.1, 0.2, 0.3]), np.array([1.0, 0, 0, 0]), np.array([0.03, -0.03]))
    np.testing.assert_allclose(state, [0.1, 0.2, 0.3, np.pi, 0, 0, 0.03, -0.03], atol=1e-9)
    with pytest.raises(ValueError, match='not a unit quaternion'):
        libero_state(np.zeros(3), np.array([0, 0, 0, 2.0]), np.zeros(2))
    with pytest.raises(ValueError, match='2 gripper finger positions'):
        libero_state(np.zeros(3), np.array([0, 0, 0, 1.0]), np.zeros(3))
    statistics = {'q01': [0.0, -1.0], 'q99': [1.0, 1.0]}
    check_state_range(np.array([1.4, -1.9]), statistics, margin=0.5)
    with pytest.raises(ValueError, match=r'\[0\]=1.6000 not in \[-0.5000, 1.5000\]'):
        check_state_range(np.array([1.6, 0.0]), statistics, margin=0.5)


def image_message(encoding, height, width, step, data):
    return Image(header=Header(frame_id='camera'), height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=step, data=bytes(data))


def test_image_conversion_honours_step_and_encoding():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)  # 3 bytes of row padding
    padded[:, :9] = rgb.reshape(2, 9)
    np.testing.assert_array_equal(image_to_rgb(image_message('rgb8', 2, 3, 12, padded.tobytes())), rgb)
    bgr = rgb[:, :, ::-1].copy()
    np.testing.assert_array_equal(image_to_rgb(image_message('bgr8', 2, 3, 9, bgr.tobytes())), rgb)
    bgra = np.concatenate([bgr, np.full((2, 3, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(image_message('bgra8', 2, 3, 12, bgra.tobytes())), rgb)
    rgba = np.concatenate([rgb, np.zeros((2, 3, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(image_message('rgba8', 2, 3, 12, rgba.tobytes())), rgb)
    mono = np.array([[0, 128, 255], [1, 2, 3]], np.uint8)
    np.testing.assert_array_equal(image_to_rgb(image_message('mono8', 2, 3, 3, mono.tobytes())),
                                  np.repeat(mono[:, :, None], 3, axis=2))
    with pytest.raises(ImageError, match="unsupported encoding '16UC1'"):
        image_to_rgb(image_message('16UC1', 2, 3, 6, bytes(12)))
    with pytest.raises(ImageError, match='step 8 is smaller than width 3 x 3'):
        image_to_rgb(image_message('rgb8', 2, 3, 8, bytes(16)))
    with pytest.raises(ImageError, match='truncated data: 10 bytes'):
        image_to_rgb(image_message('rgb8', 2, 3, 9, bytes(10)))
    round_trip = rgb_to_image(rgb, Header(frame_id='x'))
    assert (round_trip.encoding, round_trip.step) == ('rgb8', 9)
    np.testing.assert_array_equal(image_to_rgb(round_trip), rgb)


def test_overlay_pixels_follow_the_mask():
    image = np.full((224, 224, 3), 200, np.uint8)
    states = np.full((16, 16), PatchState.REUSED, np.uint8)
    states[5, 7] = PatchState.RECOMPUTED_DYNAMIC
    states[9, 2] = PatchState.RECOMPUTED_TASK_RELEVANT
    overlay = draw_overlay(image, states, keyframe=False, reuse_ratio=254 / 256)
    reused_pixel = overlay[3 * 14 + 7, 3 * 14 + 7]
    np.testing.assert_array_equal(reused_pixel, np.round((1 - REUSED_BLEND) * 200 + REUSED_BLEND * REUSED_TINT))
    np.testing.assert_array_equal(overlay[5 * 14 + 7, 7 * 14 + 7], [200, 200, 200])  # recomputed: untouched
    np.testing.assert_array_equal(overlay[5 * 14 + 13, 7 * 14 + 5], BORDER_COLORS[PatchState.RECOMPUTED_DYNAMIC])
    np.testing.assert_array_equal(overlay[9 * 14 + 5, 2 * 14],
                                  BORDER_COLORS[PatchState.RECOMPUTED_TASK_RELEVANT])
    keyframe = draw_overlay(image, np.full((16, 16), PatchState.KEYFRAME, np.uint8), keyframe=True, reuse_ratio=0)
    assert tuple(keyframe[2, 150]) == (220, 30, 30)  # the banner
    np.testing.assert_array_equal(keyframe[100, 100], [200, 200, 200])
