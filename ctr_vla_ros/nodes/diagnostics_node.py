"""ctr_vla_diagnostics: reuse-mask overlays for RViz and mask health on /diagnostics.

Subscribes:  <camera_topics> (sensor_msgs/Image) and <mask_topic_prefix>/<camera name> (ReuseMask).
Publishes:   ~/overlay/<camera name> (sensor_msgs/Image rgb8, the source frame's header; only while someone
             subscribes), /diagnostics.

The overlay is drawn on the image the model saw (same rotation and centre crop as the policy node, shared through
the `/**` section of the params file), so every patch of the grid is exactly one model patch.
"""

from __future__ import annotations

import collections
import threading
import time

from ctr_vla_ros_msgs.msg import ReuseMask
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ctr_vla_ros.ctr.overlay import draw_overlay
from ctr_vla_ros.model.preprocess import prepare_image
from ctr_vla_ros.control.camera_image import ImageError, image_to_rgb
from ctr_vla_ros.nodes.image_conversion import rgb_to_image
from ctr_vla_ros.nodes.parameters import (CAMERA_TOPIC_PARAMETERS, MODEL_VIEW_PARAMETERS, ParameterSpec,
                                          declare)
from ctr_vla_ros.nodes.runtime import run

PARAMETERS = CAMERA_TOPIC_PARAMETERS + MODEL_VIEW_PARAMETERS + [
    ParameterSpec('mask_topic_prefix', '/ctr_vla_policy/reuse_mask', 'ReuseMask topics: <prefix>/<camera name>'),
    ParameterSpec('overlay_scale', 2, 'overlay size = 224 x this (nearest-neighbour upscaling)', minimum=1,
                  maximum=8),
    ParameterSpec('mask_timeout', 5.0, 'no mask for longer than this (s) is reported as a warning', minimum=0.0),
    ParameterSpec('diagnostics_rate', 1.0, '/diagnostics publications per second (Hz)', minimum=0.1),
]
FRAMES_KEPT = 30  # per camera, to find the frame a mask was computed from


class DiagnosticsNode(Node):
    def __init__(self) -> None:
        super().__init__('ctr_vla_diagnostics')
        self.settings = settings = declare(self, PARAMETERS)
        self.camera_names = settings['camera_names']
        self.lock = threading.Lock()
        self.frames = [collections.OrderedDict() for _ in self.camera_names]  # stamp -> Image message
        self.mask_times = [0.0 for _ in self.camera_names]
        self.mask_counts = [0 for _ in self.camera_names]
        self.last_masks: list[ReuseMask | None] = [None for _ in self.camera_names]
        self.overlay_publishers = [self.create_publisher(Image, f'~/overlay/{name}', qos_profile_sensor_data)
                                   for name in self.camera_names]
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        for camera, (topic, name) in enumerate(zip(settings['camera_topics'], self.camera_names)):
            self.create_subscription(Image, topic, lambda message, camera=camera: self.on_image(camera, message),
                                     qos_profile_sensor_data)
            self.create_subscription(ReuseMask, f'{settings["mask_topic_prefix"]}/{name}',
                                     lambda message, camera=camera: self.on_mask(camera, message), 10)
        self.create_timer(1.0 / settings['diagnostics_rate'], self.publish_diagnostics)
        self.get_logger().info(f'overlays on {[publisher.topic_name for publisher in self.overlay_publishers]}')

    def on_image(self, camera: int, message: Image) -> None:
        frames = self.frames[camera]
        with self.lock:
            frames[(message.header.stamp.sec, message.header.stamp.nanosec)] = message
            while len(frames) > FRAMES_KEPT:
                frames.popitem(last=False)

    def on_mask(self, camera: int, mask: ReuseMask) -> None:
        with self.lock:
            self.mask_times[camera] = time.monotonic()
            self.mask_counts[camera] += 1
            self.last_masks[camera] = mask
            frame = self.frames[camera].get((mask.header.stamp.sec, mask.header.stamp.nanosec))
        publisher = self.overlay_publishers[camera]
        if publisher.get_subscription_count() == 0:
            return  # nobody is looking: skip the drawing
        if frame is None:
            self.get_logger().warning(f'{self.camera_names[camera]}: the frame of mask {mask.query_index} is no '
                                      'longer buffered; overlay skipped', throttle_duration_sec=5.0)
            return
        states = np.frombuffer(bytes(mask.patch_state), dtype=np.uint8)
        if states.size != mask.grid_rows * mask.grid_cols:
            self.get_logger().error(f'{self.camera_names[camera]}: mask has {states.size} states for a '
                                    f'{mask.grid_rows}x{mask.grid_cols} grid', throttle_duration_sec=5.0)
            return
        try:
            rgb = image_to_rgb(frame)
        except ImageError as error:
            self.get_logger().error(f'{self.camera_names[camera]}: {error}', throttle_duration_sec=5.0)
            return
        model_view = prepare_image(rgb, self.settings['rotate180'], self.settings['center_crop'])
        scale = self.settings['overlay_scale']
        model_view = model_view.repeat(scale, axis=0).repeat(scale, axis=1)
        overlay = draw_overlay(model_view, states.reshape(mask.grid_rows, mask.grid_cols), mask.keyframe,
                               mask.vision_reuse_ratio)
        publisher.publish(rgb_to_image(overlay, mask.header))

    def publish_diagnostics(self) -> None:
        now = time.monotonic()
        level, problems, values = DiagnosticStatus.OK, [], []
        with self.lock:
            for camera, name in enumerate(self.camera_names):
                mask = self.last_masks[camera]
                age = now - self.mask_times[camera] if mask is not None else float('inf')
                if age > self.settings['mask_timeout']:
                    level = DiagnosticStatus.WARN
                    problems.append(f'no reuse mask for {name}' if mask is None else f'{name} mask {age:.1f} s old')
                values += [KeyValue(key=f'{name}_masks', value=str(self.mask_counts[camera])),
                           KeyValue(key=f'{name}_mask_age_s', value=f'{age:.2f}')]
                if mask is not None:
                    values += [KeyValue(key=f'{name}_vision_reuse', value=f'{mask.vision_reuse_ratio:.3f}'),
                               KeyValue(key=f'{name}_llm_reuse', value=f'{mask.llm_reuse_ratio:.3f}'),
                               KeyValue(key=f'{name}_keyframe', value=str(mask.keyframe))]
        array = DiagnosticArray(status=[DiagnosticStatus(
            level=level, name=f'{self.get_name()}: reuse masks', hardware_id='ctr_vla',
            message='; '.join(problems) or 'masks arriving', values=values)])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)


def main(args: list[str] | None = None) -> None:
    run(DiagnosticsNode, args)


if __name__ == '__main__':
    main()
