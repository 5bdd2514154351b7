"""The policy as the ROS nodes and tools use it: raw camera images, robot state and an instruction in, one action
chunk out, computed by the CTR engine (with CTR disabled it is the plain full-recompute model through the same code
path). Plain Python/PyTorch, no ROS. Every input is validated before anything reaches the model."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from ctr_vla_ros.ctr.config import CtrConfig
from ctr_vla_ros.ctr.engine import CtrEngine, ModelInput, StepReport
from ctr_vla_ros.model.checkpoint import LoadedCheckpoint
from ctr_vla_ros.model.config import ActionLayout
from ctr_vla_ros.model.normalization import normalize_proprio, unnormalize_actions
from ctr_vla_ros.model.preprocess import pixel_values, prepare_image


class InputError(ValueError):
    """An input the policy refuses; the message says what was wrong. No action is produced from it."""


@dataclasses.dataclass
class Prediction:
    normalized_actions: np.ndarray  # (chunk, action_dim), the action head's output
    actions: np.ndarray  # (chunk, action_dim), un-normalised with the dataset statistics
    report: StepReport  # what the CTR engine did: mask, reuse ratios, FLOPs, per-stage time


class VlaPolicy:
    def __init__(self, checkpoint: LoadedCheckpoint, unnorm_key: str, rotate180: bool = False,
                 center_crop: bool = True, ctr: CtrConfig | None = None) -> None:
        self.checkpoint = checkpoint
        self.engine = CtrEngine(checkpoint.model, checkpoint.tokens, ctr or CtrConfig())
        self.unnorm_key = unnorm_key
        self.statistics = checkpoint.statistics_for(unnorm_key)
        self.rotate180 = rotate180
        self.center_crop = center_crop
        parameter = next(checkpoint.model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device

    @property
    def layout(self) -> ActionLayout:
        return self.checkpoint.architecture.action

    def prepare(self, images: Sequence[np.ndarray], state: np.ndarray, instruction: str) -> ModelInput:
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
        return ModelInput(
            model_images=model_images, camera_shapes=tuple(image.shape for image in images),
            pixel_values=pixel_values(model_images, self.dtype, self.device),
            normalized_proprio=torch.tensor(proprio, dtype=self.dtype, device=self.device),
            prompt_ids=torch.tensor(prompt_ids))  # on the CPU: the engine compares it without waiting

    def predict(self, images: Sequence[np.ndarray], state: np.ndarray, instruction: str,
                timestamp: float | None = None) -> Prediction:
        """One action chunk. timestamp: the camera stamp in seconds (for the CTR input-gap keyframe)."""
        started = time.perf_counter()
        query = self.prepare(images, state, instruction)
        preprocess_time = time.perf_counter() - started
        normalized_actions, report = self.engine.step(query, timestamp)
        report.times.preprocess = preprocess_time
        normalized = normalized_actions.cpu().double().numpy()
        if not np.all(np.isfinite(normalized)):
            raise FloatingPointError('the model produced non-finite actions')
        return Prediction(normalized, unnormalize_actions(normalized, self.statistics['action']), report)
