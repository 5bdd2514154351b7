"""Camera image messages (sensor_msgs/Image fields, from rclpy or decoded from a recording) to numpy, honouring
`step` (row padding) and `encoding` (the PyPI cv-bridge does not). No ROS import: recordings decode without it."""

from __future__ import annotations

from typing import Any

import numpy as np

CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}


class ImageError(ValueError):
    """The image message cannot be used; the message says why."""


def image_to_rgb(message: Any) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an 8-bit image message (rgb8, bgr8, rgba8, bgra8, mono8)."""
    encoding = message.encoding.lower()
    if encoding not in CHANNELS:
        raise ImageError(f'unsupported encoding {message.encoding!r}; expected one of {sorted(CHANNELS)}')
    channels = CHANNELS[encoding]
    height, width, step = message.height, message.width, message.step
    if height == 0 or width == 0:
        raise ImageError(f'empty image ({width}x{height})')
    if step < width * channels:
        raise ImageError(f'step {step} is smaller than width {width} x {channels} bytes per pixel')
    if len(message.data) < step * height:
        raise ImageError(f'truncated data: {len(message.data)} bytes, expected step {step} x height {height} = '
                         f'{step * height}')
    rows = np.frombuffer(message.data, dtype=np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, :width * channels].reshape(height, width, channels)
    if encoding == 'mono8':
        return np.repeat(pixels, 3, axis=2)
    if encoding.startswith('bgr'):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])
