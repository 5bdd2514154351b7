"""Reuse-mask overlays for people: the camera image with each patch's CTR state drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

from ctr_vla_ros.ctr.mask import PatchState

# Reused patches are dimmed and tinted blue; recomputed ones keep their pixels and get a coloured border.
REUSED_TINT = np.array([40, 90, 200], dtype=np.float32)
REUSED_BLEND = 0.55  # weight of the tint in a reused patch
BORDER_COLORS = {
    PatchState.RECOMPUTED_DYNAMIC: (255, 140, 0),  # orange: the patch changed
    PatchState.RECOMPUTED_TASK_RELEVANT: (0, 220, 0),  # green: attended by the prompt
    PatchState.RECOMPUTED_OVER_CAP: (255, 220, 0),  # yellow: static but over the reuse cap
}
GRID_COLOR = (90, 90, 90)
KEYFRAME_COLOR = (220, 30, 30)


def draw_overlay(image: np.ndarray, patch_states: np.ndarray, keyframe: bool, reuse_ratio: float) -> np.ndarray:
    """image: HxWx3 uint8 RGB (any size; the patch grid is stretched over it). patch_states: (rows, cols) of
    PatchState values. Returns a new HxWx3 uint8 RGB image."""
    rows, cols = patch_states.shape
    height, width = image.shape[:2]
    row_edges = np.linspace(0, height, rows + 1).round().astype(int)
    col_edges = np.linspace(0, width, cols + 1).round().astype(int)
    row_of_pixel = np.searchsorted(row_edges, np.arange(height), side='right') - 1
    col_of_pixel = np.searchsorted(col_edges, np.arange(width), side='right') - 1
    pixel_states = patch_states[row_of_pixel][:, col_of_pixel]

    canvas = image.astype(np.float32)
    reused = pixel_states == PatchState.REUSED
    canvas[reused] = (1 - REUSED_BLEND) * canvas[reused] + REUSED_BLEND * REUSED_TINT
    canvas = canvas.round().astype(np.uint8)

    for edge in row_edges[1:-1]:
        canvas[edge, :] = GRID_COLOR
    for edge in col_edges[1:-1]:
        canvas[:, edge] = GRID_COLOR
    for (row, col), state in np.ndenumerate(patch_states):
        color = BORDER_COLORS.get(PatchState(state))
        if color is not None:
            cv2.rectangle(canvas, (int(col_edges[col]), int(row_edges[row])),
                          (int(col_edges[col + 1]) - 1, int(row_edges[row + 1]) - 1), color, 1)

    scale = max(height, 240) / 480
    label = f'reuse {reuse_ratio:.0%}'
    cv2.putText(canvas, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if keyframe:
        banner = max(12, height // 14)
        canvas[:banner] = KEYFRAME_COLOR
        cv2.putText(canvas, 'KEYFRAME', (4, banner - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas
