"""Small models shared by the tests."""

import torch
import torchvision
from torch import nn


class TinyNet(nn.Module):
    """A small GAP + linear CNN. ``dead`` channels of the last conv output exact zeros, ``flat`` channels a
    constant positive value (both spatially constant maps)."""

    def __init__(self, classes: int = 5, dead: tuple = (), flat: tuple = ()) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():
            conv = self.features[3]
            for k in (*dead, *flat):
                conv.weight[k] = 0
                conv.bias[k] = -1.0 if k in dead else 0.5

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_vit(classes: int = 5) -> torchvision.models.VisionTransformer:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=classes
    )
