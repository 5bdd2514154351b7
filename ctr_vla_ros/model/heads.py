"""The small modules around the LLM: vision-to-LLM projector, proprio projector and the L1-regression action head.
Module names mirror the checkpoint keys (`projector.fc*`, and the sidecars' keys without their `module.` prefix)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class FusedGeluProjector(nn.Module):
    """Per patch: Linear(fused -> 4*fused), GELU, Linear(-> hidden), GELU, Linear(hidden -> hidden)."""

    def __init__(self, fused_vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(fused_vision_width, 4 * fused_vision_width)
        self.fc2 = nn.Linear(4 * fused_vision_width, hidden_size)
        self.fc3 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(features)))))


class ProprioProjector(nn.Module):
    def __init__(self, proprio_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, normalized_proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(normalized_proprio)))


class MlpResNetBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.ffn(hidden)


class MlpResNet(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.mlp_resnet_blocks = nn.ModuleList(MlpResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.fc1(self.layer_norm1(hidden)))
        for block in self.mlp_resnet_blocks:
            hidden = block(hidden)
        return self.fc2(self.layer_norm2(hidden))


class L1RegressionActionHead(nn.Module):
    """Reads the LLM hidden states of the action positions, (chunk * action_dim, hidden), and regresses the
    normalised chunk: the action_dim hidden vectors of one step are concatenated into one input row."""

    def __init__(self, hidden_size: int, chunk_size: int, action_dim: int) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.model = MlpResNet(hidden_size * action_dim, hidden_size, action_dim)

    def forward(self, action_hidden: torch.Tensor) -> torch.Tensor:
        return self.model(action_hidden.reshape(self.chunk_size, -1))
