"""The release's training-time image augmentations, in plain torch, each camera image drawn independently:

1. random crop of 90% of the area (square), resampled back to 224x224 with the bilinear sampling of TensorFlow's
   `crop_and_resize` (the serving path's centre crop is the same operation at the centre box);
2. brightness: add a value drawn from [-0.2, 0.2];
3. contrast: scale each channel's deviation from its mean by a factor from [0.8, 1.2];
4. saturation: scale the HSV saturation by a factor from [0.8, 1.2];
5. hue: rotate the HSV hue by up to 0.05 of a turn.

Pixel values are in [0, 1] between the steps and clipped after each, as the release's pipeline does; the result goes
back to uint8 with floor(x * 255.5), as the serving path's crop does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctr_vla_ros.model.preprocess import CROP_AREA_FRACTION

BRIGHTNESS_DELTA = 0.2
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA = 0.05


def crop_and_resize(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: float) -> torch.Tensor:
    """(N, 3, H, W) float images; per image a square box [top, top + side] x [left, left + side] in fractions of
    the image, sampled bilinearly back to H x W at TensorFlow's points: y_i = (top + i * side / (H - 1)) * (H - 1)."""
    count = images.shape[0]
    theta = torch.zeros(count, 2, 3, dtype=images.dtype, device=images.device)
    # affine_grid with align_corners maps output [-1, 1] to input side * u + centre, in the same [-1, 1] units.
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, 0, 2] = 2 * left + side - 1
    theta[:, 1, 2] = 2 * top + side - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=True)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, hue in [0, 1)."""
    red, green, blue = images.unbind(1)
    value, max_channel = images.max(dim=1)
    spread = value - images.min(dim=1).values
    saturation = torch.where(value > 0, spread / value.clamp_min(1e-12), torch.zeros_like(value))
    safe_spread = spread.clamp_min(1e-12)
    hue = torch.where(max_channel == 0, ((green - blue) / safe_spread) % 6,
                      torch.where(max_channel == 1, (blue - red) / safe_spread + 2, (red - green) / safe_spread + 4))
    hue = torch.where(spread > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV, hue in [0, 1) -> RGB in [0, 1]."""
    hue, saturation, value = images.unbind(1)
    channels = []
    for offset in (5, 3, 1):  # red, green, blue
        sector = (offset + hue * 6) % 6
        ramp = torch.clamp(torch.minimum(sector, 4 - sector), 0, 1)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=1)


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def augment_images(images: torch.Tensor, generator: torch.Generator, frames: int = 1) -> torch.Tensor:
    """(N, H, W, 3) uint8 model images (not centre-cropped) -> augmented (N, H, W, 3) uint8. All random draws come
    from `generator`, so a run is reproducible from its state. `frames`: every run of that many consecutive images
    shares one draw (one camera at several moments, seen through the same augmentation)."""
    count = images.shape[0]
    draws = count // frames

    def uniform(low: float, high: float) -> torch.Tensor:
        return _uniform(draws, low, high, generator).repeat_interleave(frames)

    side = math.sqrt(CROP_AREA_FRACTION)
    top = uniform(0, 1 - side)
    left = uniform(0, 1 - side)
    brightness = uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast = uniform(*CONTRAST_RANGE)
    saturation = uniform(*SATURATION_RANGE)
    hue = uniform(-HUE_DELTA, HUE_DELTA)

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.view(count, 1, 1, 1)

    pixels = images.permute(0, 3, 1, 2).float() / 255
    pixels = crop_and_resize(pixels, top, left, side).clamp(0, 1)
    pixels = (pixels + per_image(brightness)).clamp(0, 1)
    mean = pixels.mean(dim=(2, 3), keepdim=True)
    pixels = ((pixels - mean) * per_image(contrast) + mean).clamp(0, 1)
    hsv = rgb_to_hsv(pixels)
    hsv = torch.stack([(hsv[:, 0] + hue.view(count, 1, 1)) % 1,
                       (hsv[:, 1] * saturation.view(count, 1, 1)).clamp(0, 1), hsv[:, 2]], dim=1)
    pixels = hsv_to_rgb(hsv).clamp(0, 1)
    return torch.floor(pixels * 255.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
