"""The policy as the ROS nodes and tools use it: raw camera images, robot state and an instruction in, one action
chunk out. Plain Python/PyTorch, no ROS. Every input is validated before anything reaches the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ctr_vla_ros.model.checkpoint import LoadedCheckpoint
from ctr_vla_ros.model.normalization import normalize_proprio, unnormalize_actions
from ctr_vla_ros.model.preprocess import pixel_values, prepare_image


class InputError(ValueError):
    """An input the policy refuses; the message says what was wrong. No action is produced from it."""


@dataclasses.dataclass
class PreparedQuery:
    """Everything one model query consumes, already in model form."""

    instruction: str
    model_images: list[np.ndarray]  # the 224x224x3 uint8 images the model sees, in model order
    pixel_values: torch.Tensor  # (num_images, 6, 224, 224), model dtype and device
    normalized_proprio: torch.Tensor  # (proprio_dim,)
    prompt_ids: torch.Tensor  # (L,), BOS first


@dataclasses.dataclass
class Prediction:
    normalized_actions: np.ndarray  # (chunk, action_dim), the action head's output
    actions: np.ndarray  # (chunk, action_dim), un-normalised with the dataset statistics


class VlaPolicy:
    def __init__(self, checkpoint: LoadedCheckpoint, unnorm_key: str, rotate180: bool = False,
                 center_crop: bool = True) -> None:
        self.checkpoint = checkpoint
        self.unnorm_key = unnorm_key
        self.statistics = checkpoint.statistics_for(unnorm_key)
        self.rotate180 = rotate180
        self.center_crop = center_crop
        parameter = next(checkpoint.model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device

    @property
    def layout(self):
        return self.checkpoint.architecture.action

    def prepare(self, images: Sequence[np.ndarray], state: np.ndarray, instruction: str) -> PreparedQuery:
        """Validate and convert raw inputs: RGB uint8 images (any size) in model order, the robot state, the task."""
        if len(images) != self.layout.num_images:
            raise InputError(f'expected {self.layout.num_images} camera images, got {len(images)}')
        for index, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 14:
                raise InputError(f'camera image {index}: expected HxWx3 uint8 RGB, got {image.dtype} {image.shape}')
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.layout.proprio_dim,):
            raise InputError(f'expected a {self.layout.proprio_dim}-D state, got shape {state.shape}')
        if not np.all(np.isfinite(state)):
            raise InputError(f'state has non-finite values: {state.tolist()}')
        if not instruction or not instruction.strip():
            raise InputError('the instruction is empty')

        model_images = [prepare_image(image, self.rotate180, self.center_crop) for image in images]
        proprio = normalize_proprio(state, self.statistics['proprio'])
        prompt_ids = self.checkpoint.tokens.prompt_ids(instruction.strip())
        return PreparedQuery(
            instruction=instruction.strip(), model_images=model_images,
            pixel_values=pixel_values(model_images, self.dtype, self.device),
            normalized_proprio=torch.tensor(proprio, dtype=self.dtype, device=self.device),
            prompt_ids=torch.tensor(prompt_ids, device=self.device))

    def finish(self, normalized_actions: torch.Tensor) -> Prediction:
        normalized = normalized_actions.cpu().double().numpy()
        if not np.all(np.isfinite(normalized)):
            raise FloatingPointError('the model produced non-finite actions')
        return Prediction(normalized, unnormalize_actions(normalized, self.statistics['action']))

    def predict(self, images: Sequence[np.ndarray], state: np.ndarray, instruction: str) -> Prediction:
        query = self.prepare(images, state, instruction)
        tokens = self.checkpoint.tokens
        normalized = self.checkpoint.model(query.pixel_values, query.normalized_proprio, query.prompt_ids,
                                           tokens.space_id, tokens.stop_id)
        return self.finish(normalized)
