"""OpenVLA-OFT's training recipe for the package's own model, on LIBERO HDF5 demonstrations.

The recipe: the release's sequence layout (two images, proprio token, prompt, 56 zero action slots) decoded in one
parallel pass, L1 loss between the action head's output and the normalised 8 x 7 chunk, AdamW with linear warm-up
and cosine decay, gradient-norm clipping, the release's image augmentations on training samples only (validation
uses the serving path's centre crop on held-out demonstrations).

The model starts from random weights in a given architecture (see architectures.py) or from an official-format
checkpoint (fine-tuning). Everything lives in one output directory:

    training_state.pt        model, optimizer, scheduler, step, augmentation RNG, loss history, configuration:
                             `resume` continues a killed run exactly (same batches, same augmentations, same result)
    tokenizer.json           the prompt tokenizer (built from the demonstrations' instructions, or the initial
                             checkpoint's)
    checkpoint/              the latest export in the release's checkpoint format (`load_checkpoint` reads it)
    checkpoint-best/         the export with the lowest validation loss so far
    history.json, loss_curve.png

Every validation point exports; so does the end of the run. Exports hold the weights in fp32, the training dtype.
With `ema_decay` (default 0.999) validation and every export use an exponential moving average of the weights instead
of the last step's weights: a small policy's closed-loop success swings between consecutive exports of one run (task
7: 18/20 at step 1600, 1/20 at step 2400, README), and the average is what Diffusion Policy and most robot-learning
recipes ship for that reason.

`dtype='bf16'` is autocast (the weights and the optimizer stay fp32); on the CPU its loss curve was checked against
fp32 (README). `device='cuda'` is written but untested here: the project's machines have no GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure
import numpy as np
from tokenizers import Tokenizer
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ctr_vla_ros.benchmarks.measurement import DOCS_DIR, RESULTS_DIR
from ctr_vla_ros.model.checkpoint import TOKENIZER_FILE, load_checkpoint, load_tokens
from ctr_vla_ros.model.checkpoint_writer import build_tokenizer, save_checkpoint, vocab_size_for
from ctr_vla_ros.model.config import ModelArchitecture
from ctr_vla_ros.model.openvla_oft import BatchReuse, OpenVlaOft
from ctr_vla_ros.model.preprocess import pixel_values
from ctr_vla_ros.model.random_checkpoint import random_state_dict
from ctr_vla_ros.training.architectures import DEFAULT_PRESET, resolve_architecture
from ctr_vla_ros.training.augment import augment_images
from ctr_vla_ros.training.ctr_aware import CtrAwareTraining, earlier_indices, reuse_masks, reusing_rows
from ctr_vla_ros.training.dataset import (SampleSet, build_samples, dataset_statistics, episodes_from_files,
                                          split_episodes)

STATE_FILE = 'training_state.pt'
STEP_PHASES = ('inputs', 'forward', 'backward', 'optimizer')  # what `train_step` can time
AUTOCAST_DTYPES = {'fp32': None, 'bf16': torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    data_files: tuple[str, ...]
    architecture: str | None = None  # preset or override file; with init_checkpoint, an override for loading it
    init_checkpoint: str | None = None  # official-format checkpoint to fine-tune (None: random weights)
    steps: int | None = None  # total optimizer steps; or:
    epochs: float | None = None  # total passes over the training samples
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of the total steps, linear from 0
    final_learning_rate_fraction: float = 0.1  # where the cosine decay ends, as a fraction of learning_rate
    gradient_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # of the weights' moving average that validation and exports use (0: the last weights)
    validation_fraction: float = 0.1  # of each instruction's demonstrations, held out
    validation_interval: int = 500  # steps between validation + export
    validation_samples: int = 512  # evenly spaced held-out samples used for the validation loss
    checkpoint_interval: int = 100  # steps between training-state saves
    seed: int = 0
    unnorm_key: str = 'libero_goal_no_noops'
    device: str = 'cpu'
    dtype: str = 'fp32'  # 'bf16': autocast (weights and optimizer fp32)
    # CTR-aware fine-tuning (see ctr_aware.py): the CTR configuration to train for (a preset, an evaluation
    # configuration or a parameter file; '' = none), the share of samples trained with reuse, how far back the
    # cached frame can lie (in action chunks).
    ctr_aware: str = ''
    ctr_aware_share: float = 0.5
    ctr_aware_queries_back: int = 4
    # Where every new best export goes as well (e.g. models/<name>, what a long job commits as it improves), with
    # the loss history and curve as benchmarks/results/train_<name>.json and docs/loss_curve_<name>.png; '' = none.
    publish: str = ''

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError('give exactly one of steps and epochs')
        if self.dtype not in AUTOCAST_DTYPES:
            raise ValueError(f'dtype {self.dtype!r}: expected one of {sorted(AUTOCAST_DTYPES)}')
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, final_fraction: float) -> float:
    """Linear warm-up to 1, then cosine decay to `final_fraction` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def moving_average_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's update: an exponential moving average whose decay ramps up as (1 + n) / (10 + n) towards
    `decay` over the first updates (n: updates so far), so the average does not keep the starting weights for
    thousands of steps."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        count = float(updates)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + count) / (10 + count)))
    return update


@dataclasses.dataclass
class Batch:
    """One batch, model-ready; with CTR-aware training also the samples' earlier frames and what they reuse."""

    pixels: torch.Tensor  # (batch, images, 6, 224, 224)
    proprio: torch.Tensor  # (batch, proprio_dim)
    prompts: list[torch.Tensor]
    target: torch.Tensor  # (batch, chunk, action_dim)
    earlier_pixels: torch.Tensor | None = None
    earlier_proprio: torch.Tensor | None = None
    reuse_vision: torch.Tensor | None = None  # (batch, visual tokens) bool
    reuse_llm: torch.Tensor | None = None
    earlier_rows: torch.Tensor | None = None  # the rows the earlier frames belong to (the others reuse nothing)


def _move_into_place(temporary: Path, directory: Path) -> None:
    """Replace `directory` by the finished `temporary` beside it: the old one is moved aside (`.old`) first and
    removed last, so at every moment the directory is whole, or a `.tmp` or `.old` sibling says it is being
    replaced (scripts/commit_products.sh waits for that)."""
    previous = directory.with_name(directory.name + '.old')
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(temporary, directory)
    shutil.rmtree(previous, ignore_errors=True)


class Trainer:
    """Prepares data, model and optimizer for `config` in `output`; `resume` continues from the saved state."""

    def __init__(self, config: TrainingConfig, output: Path, resume: bool = False) -> None:
        self.output = output
        state = self._read_state(config) if resume else None
        self.config = config
        output.mkdir(parents=True, exist_ok=True)

        episodes = episodes_from_files(config.data_files)
        if not episodes:
            raise ValueError('the data files hold no demonstrations')
        training, validation = split_episodes(episodes, config.validation_fraction, config.seed)
        self.statistics = dataset_statistics(training)
        self.ctr_aware = None
        if config.ctr_aware:
            from ctr_vla_ros.evaluation.configurations import ctr_config  # the evaluation's names for configurations
            self.ctr_aware = CtrAwareTraining(ctr_config(config.ctr_aware), config.ctr_aware_share,
                                              config.ctr_aware_queries_back)
        self.instructions = sorted({episode.instruction for episode in episodes})
        self.model, self.tokenizer = self._build_model(state is not None)
        self.architecture: ModelArchitecture = self.model.architecture
        vocab_size = self.architecture.llm.vocab_size
        if vocab_size < vocab_size_for(self.tokenizer):
            raise ValueError(f'the tokenizer needs a vocabulary of {vocab_size_for(self.tokenizer)}, the model has '
                             f'{vocab_size}')
        self.tokens = load_tokens(output, vocab_size)
        self.prompt_ids = [torch.tensor(self.tokens.prompt_ids(instruction), device=config.device)
                           for instruction in self.instructions]

        chunk_size = self.architecture.action.chunk_size
        self.training_samples = build_samples(training, self.statistics, self.instructions, chunk_size,
                                              center_crop=False)
        if len(self.training_samples) < config.batch_size:
            raise ValueError(f'{len(self.training_samples)} training samples, fewer than one batch '
                             f'({config.batch_size})')
        if config.publish and not validation:
            raise ValueError('publish needs held-out demonstrations: it publishes the best validation loss')
        self.validation_samples = None
        if validation:
            samples = build_samples(validation, self.statistics, self.instructions, chunk_size, center_crop=True)
            count = min(config.validation_samples, len(samples))
            self.validation_samples = samples.subset(torch.linspace(0, len(samples) - 1, count).round().long())

        self.steps_per_epoch = len(self.training_samples) // config.batch_size
        self.total_steps = config.steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.averaged = AveragedModel(self.model, multi_avg_fn=moving_average_update(config.ema_decay)) \
            if config.ema_decay else None
        # The fused kernel: most parameters are the vocabulary-sized embedding table, and the unfused update of
        # it costs several times more on a CPU.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay, fused=True)
        warmup_steps = max(1, round(config.warmup_fraction * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(
            learning_rate_factor, warmup_steps=warmup_steps, total_steps=self.total_steps,
            final_fraction=config.final_learning_rate_fraction))
        self.augment_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: dict[str, list[list[float]]] = {'train': [], 'validation': []}
        self.best_validation = math.inf
        if state is not None:
            self._restore(state)

    def _read_state(self, config: TrainingConfig) -> dict[str, Any]:
        path = self.output / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f'{path}: no training state to resume from')
        state = torch.load(path, map_location='cpu', weights_only=True)
        defaults = dataclasses.asdict(TrainingConfig(data_files=(), steps=1))
        saved = {**defaults, **state['config']}  # a setting added since the run started has its default
        # Where the best export is published changes nothing the run computes: a resumed run may name another.
        differences = {key: (saved[key], value) for key, value in dataclasses.asdict(config).items()
                       if saved[key] != value and key != 'publish'}
        if differences:
            raise ValueError(f'the run in {self.output} was started with other settings (saved, given): '
                             f'{differences}')
        return state

    def _build_model(self, resuming: bool) -> tuple[OpenVlaOft, Tokenizer]:
        """The model on the configured device (fp32) and the prompt tokenizer, which is also written to the output
        directory (a resumed run reads it back: the tokenizer is part of the run)."""
        config, tokenizer_path = self.config, self.output / TOKENIZER_FILE
        if config.init_checkpoint:
            model = load_checkpoint(config.init_checkpoint, config.architecture, torch.float32,
                                    config.device).model
            if not resuming:
                shutil.copyfile(Path(config.init_checkpoint) / TOKENIZER_FILE, tokenizer_path)
        else:
            model = OpenVlaOft(resolve_architecture(config.architecture or DEFAULT_PRESET))
            model.load_state_dict({name: value.float() for name, value in
                                   random_state_dict(model, config.seed).items()})
            model.to(config.device)
            if not resuming:
                build_tokenizer(self.instructions).save(str(tokenizer_path))
        return model.train(), Tokenizer.from_file(str(tokenizer_path))

    @property
    def exported_model(self) -> OpenVlaOft:
        """What validation measures and an export holds: the weights' moving average, or the last weights."""
        return self.model if self.averaged is None else self.averaged.module

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state['model'])
        if self.averaged is not None and 'averaged' in state:  # a run saved before the average existed starts one
            self.averaged.load_state_dict(state['averaged'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.augment_generator.set_state(state['augment_rng'])
        self.step = state['step']
        self.history = state['history']
        self.best_validation = state['best_validation']

    def save_state(self) -> None:
        """Write the training state atomically: a run killed while saving keeps the previous state."""
        state = {'config': dataclasses.asdict(self.config), 'step': self.step, 'model': self.model.state_dict(),
                 'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
                 'augment_rng': self.augment_generator.get_state(), 'history': self.history,
                 'best_validation': self.best_validation}
        if self.averaged is not None:
            state['averaged'] = self.averaged.state_dict()
        temporary = self.output / f'{STATE_FILE}.tmp'
        torch.save(state, temporary)
        os.replace(temporary, self.output / STATE_FILE)

    def batch_indices(self, step: int) -> torch.Tensor:
        """The training samples of `step`: each epoch is a fresh permutation drawn from (seed, epoch), so the order
        depends on nothing but the step."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.training_samples))
        batch = self.config.batch_size
        return torch.from_numpy(order[position * batch:(position + 1) * batch])

    def model_inputs(self, samples: SampleSet, indices: torch.Tensor, augment: bool) -> Batch:
        """The batch of these samples; augmented for training, and with CTR-aware training, for the samples drawn to
        reuse, their earlier frames (through the same augmentation as the sample: one camera at two moments) and
        the tokens reused from them."""
        device = self.config.device
        images = samples.model_images(indices)  # (batch, images, 224, 224, 3) uint8

        def pixels(model_images: torch.Tensor) -> torch.Tensor:
            return pixel_values(list(model_images.flatten(0, 1).numpy()), torch.float32,
                                device).unflatten(0, model_images.shape[:2])

        def augmented(model_images: torch.Tensor, frames: int) -> torch.Tensor:
            flat = augment_images(model_images.flatten(0, -4), self.augment_generator, frames=frames)
            return flat.unflatten(0, model_images.shape[:-3])

        prompts = [self.prompt_ids[index] for index in samples.instruction_index[indices].tolist()]
        proprio, target = samples.proprio[indices].to(device), samples.actions[indices].to(device)
        if not augment:
            return Batch(pixels(images), proprio, prompts, target)
        rows = torch.empty(0, dtype=torch.long) if self.ctr_aware is None else \
            reusing_rows(len(indices), self.ctr_aware.share, self.augment_generator)
        if len(rows) == 0:
            return Batch(pixels(augmented(images, frames=1)), proprio, prompts, target)
        earlier = earlier_indices(indices[rows], samples.episode_first, samples.step,
                                  self.architecture.action.chunk_size, self.ctr_aware.queries_back,
                                  self.augment_generator)
        pairs = augmented(torch.stack([images[rows], samples.model_images(earlier)], dim=2), frames=2)
        others = torch.ones(len(indices), dtype=torch.bool)
        others[rows] = False
        current = images.clone()
        current[rows] = pairs[:, :, 0]
        if others.any():
            current[others] = augmented(images[others], frames=1)
        reused_vision, reused_llm = reuse_masks(pairs[:, :, 0], pairs[:, :, 1], self.ctr_aware.config,
                                                self.augment_generator)
        reuse_vision = torch.zeros(len(indices), reused_vision.shape[1], dtype=torch.bool)
        reuse_llm = torch.zeros_like(reuse_vision)
        reuse_vision[rows], reuse_llm[rows] = reused_vision, reused_llm
        return Batch(pixels(current), proprio, prompts, target, pixels(pairs[:, :, 1]),
                     samples.proprio[earlier].to(device), reuse_vision.to(device), reuse_llm.to(device),
                     rows.to(device))

    def loss(self, samples: SampleSet, indices: torch.Tensor, augment: bool,
             model: OpenVlaOft | None = None) -> torch.Tensor:
        """Mean L1 between the chunks `model` (default: the trained one) predicts and the true normalised ones."""
        return self._loss(self.model_inputs(samples, indices, augment), model)

    def _loss(self, batch: Batch, model: OpenVlaOft | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        autocast_dtype = AUTOCAST_DTYPES[self.config.dtype]
        device_type = torch.device(self.config.device).type
        space, stop = self.tokens.space_id, self.tokens.stop_id
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            reuse = None
            if batch.earlier_pixels is not None:
                rule = self.ctr_aware.config
                earlier = model.earlier_pass(batch.earlier_pixels, batch.earlier_proprio,
                                             [batch.prompts[row] for row in batch.earlier_rows.tolist()],
                                             space, stop)
                reuse = BatchReuse(earlier, batch.reuse_vision, batch.reuse_llm, rule.llm_reuse_start_layer,
                                   rule.llm_prune_layer, batch.earlier_rows)
            predicted = model.forward_batch(batch.pixels, batch.proprio, batch.prompts, space, stop, reuse=reuse)
        return F.l1_loss(predicted, batch.target)

    def train_step(self, times: dict[str, float] | None = None) -> float:
        """One optimizer step; `times`, if given, accumulates the seconds spent in each of STEP_PHASES."""
        marks = [time.perf_counter()]
        batch = self.model_inputs(self.training_samples, self.batch_indices(self.step), augment=True)
        marks.append(time.perf_counter())
        loss = self._loss(batch)
        marks.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        marks.append(time.perf_counter())
        if times is not None:
            for phase, begin, end in zip(STEP_PHASES, marks, marks[1:]):
                times[phase] = times.get(phase, 0.0) + end - begin
        self.step += 1
        value = loss.item()
        self.history['train'].append([self.step, value])
        return value

    def profile(self, steps: int, warmup: int = 2) -> dict[str, float]:
        """Seconds per step in each of STEP_PHASES, and samples per second, over `steps` steps after `warmup`
        (the first steps allocate). Trains the model on the way: profile a run that is thrown away."""
        for _ in range(warmup):
            self.train_step()
        times: dict[str, float] = {}
        started = time.perf_counter()
        for _ in range(steps):
            self.train_step(times)
        elapsed = time.perf_counter() - started
        return {**{phase: total / steps for phase, total in times.items()}, 'step': elapsed / steps,
                'samples_per_second': steps * self.config.batch_size / elapsed}

    @torch.no_grad()
    def validate(self) -> float:
        samples, model = self.validation_samples, self.exported_model
        model.eval()
        total = 0.0
        for start in range(0, len(samples), self.config.batch_size):
            indices = torch.arange(start, min(start + self.config.batch_size, len(samples)))
            total += self.loss(samples, indices, augment=False, model=model).item() * len(indices)
        model.train()
        value = total / len(samples)
        self.history['validation'].append([self.step, value])
        return value

    def export(self, directory: Path) -> None:
        """The model in the release's checkpoint format, written beside `directory` and then moved into place (an
        export's sidecar names carry the step, so an older export must not remain)."""
        temporary = directory.with_name(directory.name + '.tmp')
        shutil.rmtree(temporary, ignore_errors=True)
        state = {name: tensor.detach().to('cpu', torch.float32)
                 for name, tensor in self.exported_model.state_dict().items()}
        last_validation = self.history['validation'][-1][1] if self.history['validation'] else None
        save_checkpoint(temporary, self.architecture, state, self.tokenizer, {self.config.unnorm_key: self.statistics},
                        self.step, {'ctr_vla_training': {
                            'step': self.step, 'validation_l1': last_validation,
                            'data_files': list(self.config.data_files),
                            'init_checkpoint': self.config.init_checkpoint,
                            'ctr_aware': self.config.ctr_aware or None}},
                        shard_bytes=1 << 30)
        _move_into_place(temporary, directory)

    def write_history(self) -> None:
        (self.output / 'history.json').write_text(json.dumps(self.history))
        figure = Figure(figsize=(8, 4.5))
        axes = figure.subplots()
        if self.history['train']:
            steps, losses = np.array(self.history['train']).T
            axes.plot(steps, losses, color='tab:blue', alpha=0.25, linewidth=0.8, label='train (per batch)')
            window = max(1, min(50, len(losses) // 5))
            smoothed = np.convolve(losses, np.ones(window) / window, mode='valid')
            axes.plot(steps[window - 1:], smoothed, color='tab:blue', label=f'train (mean of {window})')
        if self.history['validation']:
            steps, losses = np.array(self.history['validation']).T
            axes.plot(steps, losses, 'o-', color='tab:orange', label='validation')
        axes.set_xlabel('step')
        axes.set_ylabel('L1 loss (normalised actions)')
        axes.set_yscale('log')
        axes.grid(True, which='both', alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(self.output / 'loss_curve.png', dpi=100)

    def validation_point(self) -> None:
        """Validation point: validate, export, remember the best export, save the state and the curve."""
        if self.validation_samples is not None:
            value = self.validate()
            self.export(self.output / 'checkpoint')
            improved = value < self.best_validation
            if improved:
                self.best_validation = value
                shutil.rmtree(self.output / 'checkpoint-best', ignore_errors=True)
                shutil.copytree(self.output / 'checkpoint', self.output / 'checkpoint-best')
        else:
            self.export(self.output / 'checkpoint')
            improved = False
        self.save_state()
        self.write_history()
        if improved and self.config.publish:
            self.publish(Path(self.config.publish))

    def publish(self, directory: Path) -> None:
        """The best export into `directory`, and the loss history and curve into the results and the docs, each
        written beside its place and moved in, so a commit never holds half of one."""
        temporary = directory.with_name(directory.name + '.tmp')
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(self.output / 'checkpoint-best', temporary)
        _move_into_place(temporary, directory)
        history = json.dumps({'config': dataclasses.asdict(self.config), 'steps_per_epoch': self.steps_per_epoch,
                              'best_step': self.step, 'best_validation': self.best_validation,
                              'history': self.history})
        results, curve = RESULTS_DIR / f'train_{directory.name}.json', DOCS_DIR / f'loss_curve_{directory.name}.png'
        for path in (results, curve):
            path.parent.mkdir(parents=True, exist_ok=True)
        results.with_name(results.name + '.tmp').write_text(history)
        shutil.copyfile(self.output / 'loss_curve.png', curve.with_name(curve.name + '.tmp'))
        for path in (results, curve):
            os.replace(path.with_name(path.name + '.tmp'), path)

    def run(self) -> None:
        """Train to the end, validating and exporting on the way and at the end."""
        config = self.config
        with tqdm(total=self.total_steps, initial=self.step, desc='training', unit='batch') as progress:
            while self.step < self.total_steps:
                self.train_step()
                recent = [value for _, value in self.history['train'][-20:]]
                postfix = {'loss': f'{np.mean(recent):.4f}', 'lr': f'{self.scheduler.get_last_lr()[0]:.2e}',
                           'epoch': f'{self.step / self.steps_per_epoch:.2f}'}
                if self.history['validation']:
                    postfix['val'] = f'{self.history["validation"][-1][1]:.4f}'
                progress.set_postfix(postfix, refresh=False)
                progress.update()
                if self.step % config.validation_interval == 0 or self.step == self.total_steps:
                    self.validation_point()
                elif self.step % config.checkpoint_interval == 0:
                    self.save_state()
