"""sensor_msgs/Image <-> numpy, honouring `step` (row padding) and `encoding` (the PyPI cv-bridge does not)."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}


class ImageError(ValueError):
    """The image message cannot be used; the message says why."""


def image_to_rgb(message: Image) -> np.ndarray:
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


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """An rgb8 image message from an HxWx3 uint8 array."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f'expected HxWx3 uint8, got {rgb.dtype} {rgb.shape}')
    height, width, _ = rgb.shape
    return Image(header=header, height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(rgb).tobytes())
