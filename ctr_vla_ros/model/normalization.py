"""Dataset-statistics normalisation of proprioception and actions, and gripper conventions (plain functions)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Added to the q01..q99 range so a constant dimension does not divide by zero (the release's constant).
RANGE_EPSILON = 1e-8


def normalize_proprio(state: np.ndarray, statistics: dict[str, Any]) -> np.ndarray:
    """Map the state to [-1, 1] with the dataset's q01/q99 and clip (dimensions with mask false pass through)."""
    q01, q99 = np.asarray(statistics['q01'], np.float64), np.asarray(statistics['q99'], np.float64)
    mask = np.asarray(statistics.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)
    normalized = np.clip(2 * (state - q01) / (q99 - q01 + RANGE_EPSILON) - 1, -1, 1)
    return np.where(mask, normalized, state)


def unnormalize_actions(normalized: np.ndarray, statistics: dict[str, Any]) -> np.ndarray:
    """Normalised actions (..., action_dim) -> dataset units where mask is true; masked-off dims pass through."""
    q01, q99 = np.asarray(statistics['q01'], np.float64), np.asarray(statistics['q99'], np.float64)
    mask = np.asarray(statistics.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)
    actions = 0.5 * (normalized + 1) * (q99 - q01 + RANGE_EPSILON) + q01
    return np.where(mask, actions, normalized)


def gripper_open_one_to_command(gripper: np.ndarray) -> np.ndarray:
    """OpenVLA-OFT LIBERO gripper (1 = open, 0 = close, continuous) -> command (-1 open, +1 close), binarised as the
    authors' evaluation does: -sign(2g - 1)."""
    return -np.sign(2 * np.asarray(gripper, np.float64) - 1)


def gripper_close_one_to_command(gripper: np.ndarray) -> np.ndarray:
    """Datasets whose gripper is 1 = close, 0 = open (continuous) -> command in [-1 open, +1 close]."""
    return np.clip(2 * np.asarray(gripper, np.float64) - 1, -1, 1)


GRIPPER_CONVENTIONS = {
    'open_is_one': gripper_open_one_to_command,
    'close_is_one': gripper_close_one_to_command,
}
