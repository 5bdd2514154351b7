"""From a raw camera image to the model's input, as in the authors' LIBERO evaluation (no TensorFlow needed).

1. optional 180-degree rotation (LIBERO renders upside down);
2. if not 224x224 already: JPEG round trip at quality 95 (the training images were JPEG-compressed), then an
   antialiased Lanczos-3 resize to 224x224;
3. optional centre crop of 90% of the area, resampled back to 224 with TensorFlow's `crop_and_resize` bilinear
   sampling, converted back to uint8 with floor(x * 255.5) as TensorFlow's `convert_image_dtype` does;
4. per-tower normalisation, channels stacked [DINOv2 (0-2) | SigLIP (3-5)].

Steps 1-3 give the uint8 224x224 image the model sees (`prepare_image`); the CTR mask compares those.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
import torch

from ctr_vla_ros.model.config import IMAGE_SIZE

CROP_AREA_FRACTION = 0.9
DINOV2_MEAN, DINOV2_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
JPEG_QUALITY = 95


def resize_to_model(image: np.ndarray) -> np.ndarray:
    """JPEG round trip + antialiased Lanczos resize to 224x224 (no-op if already 224x224)."""
    if image.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=JPEG_QUALITY)
    decoded = Image.open(buffer).convert('RGB')
    return np.asarray(decoded.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))


def center_crop_sample_points(size: int = IMAGE_SIZE, area_fraction: float = CROP_AREA_FRACTION) -> np.ndarray:
    """Source coordinates (rows or columns) that TensorFlow's crop_and_resize samples for the centre crop."""
    side = math.sqrt(area_fraction)
    start, end = (1 - side) / 2, (1 + side) / 2
    return start * (size - 1) + np.arange(size) * (end - start) * (size - 1) / (size - 1)


def center_crop(image: np.ndarray) -> np.ndarray:
    """90%-area centre crop of a 224x224 uint8 image, bilinearly resampled back to 224x224 uint8."""
    values = image.astype(np.float32) / 255.0
    points = center_crop_sample_points(image.shape[0])
    low = np.floor(points).astype(np.int64)
    high = np.ceil(points).astype(np.int64)
    weight = (points - low).astype(np.float32)
    rows_low, rows_high = values[low], values[high]
    row_weight = weight[:, None, None]
    top = rows_low[:, low] + (rows_low[:, high] - rows_low[:, low]) * weight[None, :, None]
    bottom = rows_high[:, low] + (rows_high[:, high] - rows_high[:, low]) * weight[None, :, None]
    resampled = top + (bottom - top) * row_weight
    return np.floor(np.clip(resampled * 255.5, 0, 255)).astype(np.uint8)


def prepare_image(image: np.ndarray, rotate180: bool = False, crop: bool = True) -> np.ndarray:
    """Raw HxWx3 uint8 RGB camera image -> the 224x224x3 uint8 image the model sees."""
    if rotate180:
        image = image[::-1, ::-1]
    image = resize_to_model(np.ascontiguousarray(image))
    return center_crop(image) if crop else image


def pixel_values(model_images: list[np.ndarray], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = 'cpu') -> torch.Tensor:
    """Model-input images (224x224x3 uint8 each) -> (num_images, 6, 224, 224) normalised for both towers."""
    images = torch.from_numpy(np.stack(model_images)).to(device).permute(0, 3, 1, 2).float() / 255.0
    towers = []
    for mean, std in ((DINOV2_MEAN, DINOV2_STD), (SIGLIP_MEAN, SIGLIP_STD)):
        mean_tensor = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        std_tensor = torch.tensor(std, device=device).view(1, 3, 1, 1)
        towers.append((images - mean_tensor) / std_tensor)
    return torch.cat(towers, dim=1).to(dtype)
