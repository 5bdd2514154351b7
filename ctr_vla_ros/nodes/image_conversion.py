"""numpy -> sensor_msgs/Image (the other direction, which needs no ROS, is control/camera_image.py)."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ctr_vla_ros.control.camera_image import ImageError


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """An rgb8 image message from an HxWx3 uint8 array."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f'expected HxWx3 uint8, got {rgb.dtype} {rgb.shape}')
    height, width, _ = rgb.shape
    return Image(header=header, height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(rgb).tobytes())
