"""Training of the package's own OpenVLA-OFT: the batched forward, the LIBERO dataset, the loop, its checkpoints and
the export. Nothing trains for real: tiny models, a hand-made HDF5 file, a few steps."""

import torch

from ctr_vla_ros.model.config import ActionLayout, LlmConfig, ModelArchitecture, VisionTowerConfig
from ctr_vla_ros.model.openvla_oft import OpenVlaOft
from ctr_vla_ros.model.random_checkpoint import random_state_dict

SPACE_ID, STOP_ID = 29871, 2
TINY = ModelArchitecture(
    (VisionTowerConfig('dinov2', 32, 3, 2, 64, num_registers=4), VisionTowerConfig('siglip', 32, 3, 2, 64)),
    LlmConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=32064),
    ActionLayout())


def random_model(seed: int = 0) -> OpenVlaOft:
    model = OpenVlaOft(TINY)
    model.load_state_dict({name: value.float() for name, value in random_state_dict(model, seed).items()})
    return model


def test_batched_forward_equals_each_sample_alone():
    torch.manual_seed(0)
    model = random_model()
    prompts = [torch.tensor([1, 40, 41, 42, 43, 44, 45]), torch.tensor([1, 50, 51]), torch.tensor([1, 60, 61, 62])]
    pixel_values = torch.randn(3, 2, 6, 224, 224)
    proprio = torch.rand(3, 8) * 2 - 1
    batched = model.forward_batch(pixel_values, proprio, prompts, SPACE_ID, STOP_ID)
    assert batched.shape == (3, 8, 7)
    for index, prompt in enumerate(prompts):
        alone = model(pixel_values[index], proprio[index], prompt, SPACE_ID, STOP_ID)
        torch.testing.assert_close(batched[index].detach(), alone, rtol=0, atol=1e-5)
