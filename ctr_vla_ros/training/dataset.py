"""LIBERO demonstrations as OpenVLA-OFT training samples, prepared exactly as serving prepares a query.

One sample is one timestep of one demonstration that has camera images (every timestep, or every k-th of a
demonstration recorded with frame stride k): its two camera images, its 8-D proprio state (end-effector position
and axis-angle, two gripper finger positions) and the chunk of the next `chunk_size` actions, padded with the
episode's last action at its end, as the release's data pipeline does. As in the release's "no_noops" LIBERO
datasets, a timestep whose action does not move the arm (translation and rotation norm below 1e-4) and repeats the
previous kept gripper action is dropped before anything else.

Actions are converted to OpenVLA-OFT's LIBERO convention before statistics and normalisation: gripper 1 = open,
0 = close (LIBERO stores -1 = open, +1 = close), which is what `GRIPPER_CONVENTIONS['open_is_one']` turns back into a
command at serving time. Actions and proprio are normalised with the training split's q01/q99 (the gripper action,
`mask` false, passes through), with the same function serving uses for the state.

Images are stored upside down in LIBERO's HDF5 files: the samples keep them as stored (128 x 128 in LIBERO's
datasets, a third of the 224 x 224 model input's bytes: 400 demonstrations fit in memory), and each batch goes through
the serving path's `prepare_image` (rotation by 180 degrees, JPEG round trip, Lanczos resize to 224; a few
milliseconds per image) when it is used. Training samples are prepared without the centre crop (the random crop of
the augmentation replaces it), validation samples with it, so validation sees exactly what the policy sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctr_vla_ros.data.libero_hdf5 import DemoFileReader, Demonstration
from ctr_vla_ros.model.normalization import normalize_proprio
from ctr_vla_ros.model.preprocess import prepare_image

NOOP_THRESHOLD = 1e-4  # the release's no-op test on the norm of the 6 arm action dimensions


@dataclasses.dataclass
class Episode:
    """One demonstration with its no-op steps removed and its gripper action in the OpenVLA-OFT convention; its
    samples are the kept steps that have images."""

    instruction: str
    images: np.ndarray  # (N, num_images, H, W, 3) uint8 as stored (upside down), model order: agentview, wrist
    proprio: np.ndarray  # (T, 8): ee position (3), ee axis-angle (3), gripper finger positions (2)
    actions: np.ndarray  # (T, 7): delta position, delta axis-angle, gripper (1 = open, 0 = close)
    sample_steps: np.ndarray  # (N,) int64: the kept steps (indices into `actions`) that `images` show


def noop_steps(actions: np.ndarray) -> np.ndarray:
    """(T,) bool, True where the action is a no-op: no arm motion and the same gripper action as the last kept step
    (for the first step, no arm motion suffices)."""
    noop = np.zeros(len(actions), dtype=bool)
    previous_gripper = None
    for step, action in enumerate(actions):
        still = np.linalg.norm(action[:-1]) < NOOP_THRESHOLD
        noop[step] = still and (previous_gripper is None or action[-1] == previous_gripper)
        if not noop[step]:
            previous_gripper = action[-1]
    return noop


def gripper_to_open_is_one(gripper: np.ndarray) -> np.ndarray:
    """LIBERO's gripper action (-1 = open, +1 = close) -> OpenVLA-OFT's (1 = open, 0 = close): clip to [0, 1], then
    invert, as the release's LIBERO transform does."""
    return 1.0 - np.clip(gripper, 0.0, 1.0)


def make_episode(instruction: str, demonstration: Demonstration) -> Episode:
    """One demonstration as stored -> an Episode (no-ops dropped, gripper converted)."""
    keep = ~noop_steps(demonstration.actions)
    actions = demonstration.actions[keep].astype(np.float64)
    actions[:, -1] = gripper_to_open_is_one(actions[:, -1])
    proprio = np.concatenate([demonstration.ee_states, demonstration.gripper_states], axis=1)[keep]
    image_steps = demonstration.image_steps()
    kept_frames = keep[image_steps]
    images = np.stack([demonstration.agentview_rgb[kept_frames], demonstration.eye_in_hand_rgb[kept_frames]], axis=1)
    kept_index = np.cumsum(keep) - 1  # a kept step's index among the kept steps
    return Episode(instruction, images, proprio.astype(np.float64), actions, kept_index[image_steps[kept_frames]])


def episodes_from_files(paths: Sequence[str | Path]) -> list[Episode]:
    """Every demonstration of every LIBERO HDF5 file, in the given file order, then by demo number."""
    episodes = []
    for path in paths:
        with DemoFileReader(path) as reader:
            episodes.extend(make_episode(reader.instruction, demonstration) for demonstration in reader)
    return episodes


def split_episodes(episodes: Sequence[Episode], validation_fraction: float, seed: int
                   ) -> tuple[list[Episode], list[Episode]]:
    """Hold out whole demonstrations for validation: the same fraction of each instruction's demonstrations (at
    least one when the fraction is positive and the instruction has two or more), chosen by the seed."""
    generator = np.random.default_rng(seed)
    training, validation = [], []
    for instruction in sorted({episode.instruction for episode in episodes}):
        group = [episode for episode in episodes if episode.instruction == instruction]
        held_out = round(validation_fraction * len(group))
        if validation_fraction > 0 and len(group) >= 2:
            held_out = max(held_out, 1)
        held_out = min(held_out, len(group) - 1)
        chosen = set(generator.permutation(len(group))[:held_out].tolist())
        for index, episode in enumerate(group):
            (validation if index in chosen else training).append(episode)
    return training, validation


def action_chunks(actions: np.ndarray, chunk_size: int) -> np.ndarray:
    """(T, dim) -> (T, chunk_size, dim): the actions from each step on, the last action repeated past the end."""
    steps = np.minimum(np.arange(len(actions))[:, None] + np.arange(chunk_size)[None, :], len(actions) - 1)
    return actions[steps]


def _summary(values: np.ndarray) -> dict[str, list[float]]:
    return {'mean': values.mean(0).tolist(), 'std': values.std(0).tolist(), 'max': values.max(0).tolist(),
            'min': values.min(0).tolist(), 'q01': np.quantile(values, 0.01, axis=0).tolist(),
            'q99': np.quantile(values, 0.99, axis=0).tolist()}


def dataset_statistics(episodes: Iterable[Episode]) -> dict[str, Any]:
    """One unnorm key's entry of the release's `dataset_statistics.json`: action and proprio summaries per
    dimension; the action `mask` is false for the gripper, which is never normalised."""
    episodes = list(episodes)
    actions = np.concatenate([episode.actions for episode in episodes])
    proprio = np.concatenate([episode.proprio for episode in episodes])
    mask = [True] * (actions.shape[1] - 1) + [False]
    return {'action': {**_summary(actions), 'mask': mask}, 'proprio': _summary(proprio),
            'num_transitions': len(actions), 'num_trajectories': len(episodes)}


def normalize_actions(actions: np.ndarray, statistics: dict[str, Any]) -> np.ndarray:
    """Dataset units -> [-1, 1] with q01/q99, clipped, mask-off dimensions unchanged: the inverse of serving's
    `unnormalize_actions` inside q01..q99. The release uses one map for state and actions; so does this."""
    return normalize_proprio(actions, statistics)


@dataclasses.dataclass
class SampleSet:
    """Training or validation samples, everything in memory; `model_images` prepares a batch's images."""

    images: np.ndarray  # (N, num_images, H, W, 3) uint8 as stored (upside down)
    proprio: torch.Tensor  # (N, proprio_dim) float32, normalised
    actions: torch.Tensor  # (N, chunk_size, action_dim) float32, normalised
    instruction_index: torch.Tensor  # (N,) int64, index into `instructions`
    instructions: list[str]
    center_crop: bool  # the serving path's crop (validation), or none (training, where the augmentation crops)
    episode_first: torch.Tensor | None = None  # (N,) int64: the index of each sample's episode's first sample
    step: torch.Tensor | None = None  # (N,) int64: each sample's step in its episode (no-ops not counted)

    def __len__(self) -> int:
        return len(self.actions)

    def subset(self, indices: torch.Tensor) -> SampleSet:
        """These samples, without their episodes (a subset keeps no `episode_first` and `step`)."""
        return SampleSet(self.images[indices.numpy()], self.proprio[indices], self.actions[indices],
                         self.instruction_index[indices], self.instructions, self.center_crop)

    def model_images(self, indices: torch.Tensor) -> torch.Tensor:
        """(batch, num_images, 224, 224, 3) uint8: the images of these samples as `prepare_image` gives them."""
        stored = self.images[indices.numpy()]
        prepared = [prepare_image(image, rotate180=True, crop=self.center_crop)
                    for image in stored.reshape(-1, *stored.shape[2:])]
        return torch.from_numpy(np.stack(prepared)).unflatten(0, stored.shape[:2])


def build_samples(episodes: Sequence[Episode], statistics: dict[str, Any], instructions: Sequence[str],
                  chunk_size: int, center_crop: bool) -> SampleSet:
    """Every sample of these episodes. center_crop: the serving path's crop (validation), or none (training,
    where the augmentation crops)."""
    proprio = [normalize_proprio(episode.proprio[episode.sample_steps], statistics['proprio']) for episode in episodes]
    actions = [normalize_actions(action_chunks(episode.actions, chunk_size)[episode.sample_steps],
                                 statistics['action']) for episode in episodes]
    instruction_index = [np.full(len(episode.sample_steps), instructions.index(episode.instruction))
                         for episode in episodes]
    lengths = np.array([len(episode.sample_steps) for episode in episodes])
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return SampleSet(np.concatenate([episode.images for episode in episodes]),
                     torch.from_numpy(np.concatenate(proprio)).float(),
                     torch.from_numpy(np.concatenate(actions)).float(),
                     torch.from_numpy(np.concatenate(instruction_index)).long(), list(instructions), center_crop,
                     torch.from_numpy(firsts).long(),
                     torch.from_numpy(np.concatenate([episode.sample_steps for episode in episodes])).long())
