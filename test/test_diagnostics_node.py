"""The diagnostics node as its own process: overlays that match the mask, health on /diagnostics."""

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from ctr_vla_ros_msgs.msg import ReuseMask  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ctr_vla_ros.ctr.overlay import REUSED_BLEND, REUSED_TINT  # noqa: E402
from ctr_vla_ros.model.preprocess import prepare_image  # noqa: E402
from ctr_vla_ros.control.camera_image import image_to_rgb  # noqa: E402
from ctr_vla_ros.nodes.image_conversion import rgb_to_image  # noqa: E402
from helpers.ros_harness import Driver, wait_until  # noqa: E402
from ctr_vla_ros.tools.node_processes import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros


def test_overlay_matches_the_mask(libero_sequence, ros_domain):
    node = NodeProcess('ctr_vla_diagnostics', overrides={'overlay_scale': 1})
    driver = Driver()
    try:
        overlays = driver.record(Image, '/ctr_vla_diagnostics/overlay/wrist', qos_profile_sensor_data)
        diagnostics = driver.record(DiagnosticArray, '/diagnostics')
        camera = driver.node.create_publisher(Image, '/camera/wrist/image_raw', qos_profile_sensor_data)
        masks = driver.node.create_publisher(ReuseMask, '/ctr_vla_policy/reuse_mask/wrist', 10)
        node.wait_for_log('overlays on')
        wait_until(lambda: camera.get_subscription_count() and masks.get_subscription_count(), 20, 'subscribers')

        frame = libero_sequence['wrist'][10]
        states = np.full(256, ReuseMask.STATE_RECOMPUTED_DYNAMIC, np.uint8)
        states[:128] = ReuseMask.STATE_REUSED  # the top half of the grid
        header = Header(stamp=driver.node.get_clock().now().to_msg(), frame_id='wrist_camera')
        mask = ReuseMask(header=header, camera_name='wrist', grid_rows=16, grid_cols=16, query_index=3,
                         keyframe=False, vision_reuse_ratio=0.5, llm_reuse_ratio=0.5)
        mask.patch_state = states.tobytes()

        def publish():
            camera.publish(rgb_to_image(frame, header))
            masks.publish(mask)
            return bool(overlays)

        wait_until(publish, 30, 'an overlay')
        overlay_message = overlays[0]
        assert (overlay_message.header.stamp, overlay_message.header.frame_id) == (header.stamp, 'wrist_camera')
        assert overlay_message.encoding == 'rgb8' and (overlay_message.height, overlay_message.width) == (224, 224)
        overlay = image_to_rgb(overlay_message)
        model_view = prepare_image(frame, rotate180=False, crop=True)
        reused = (3 * 14 + 6, 5 * 14 + 6)  # row 3: reused
        recomputed = (12 * 14 + 6, 5 * 14 + 6)  # row 12: recomputed (dynamic)
        expected_reused = np.round((1 - REUSED_BLEND) * model_view[reused].astype(np.float32)
                                   + REUSED_BLEND * REUSED_TINT)
        np.testing.assert_array_equal(overlay[reused], expected_reused)
        np.testing.assert_array_equal(overlay[recomputed], model_view[recomputed])
        wait_until(lambda: any(value.key == 'wrist_masks' and value.value != '0' for array in diagnostics
                               for status in array.status for value in status.values), 10, 'mask health')
        assert node.interrupt() == 0
    finally:
        node.kill()
        driver.close()
