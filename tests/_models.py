"""Small models shared by the tests."""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import castream

IMAGENET = castream.Preprocess()  # the statistics the tests' models "were trained with"


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

        IMAGENET.declare(self)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_vit(classes: int = 5) -> torchvision.models.VisionTransformer:
    return IMAGENET.declare(
        torchvision.models.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
            num_classes=classes,
        )
    )


class StaticSame(nn.Conv2d):
    """TF-"SAME" convolution with a fixed ZeroPad2d inside, as efficientnet-lite-pytorch builds it."""

    def __init__(self, cin, cout, k, stride=1, groups=1, image=224):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        out = -(-image // stride)
        pad = max((out - 1) * stride + k - image, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        return F.conv2d(
            self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


class Block(nn.Module):
    """Depthwise (static-padded) + pointwise, as an inverted-residual block without the expansion."""

    def __init__(self, cin, cout, stride, image):
        super().__init__()
        self.dw = StaticSame(cin, cin, 3, stride, groups=cin, image=image)
        self.bn = nn.BatchNorm2d(cin)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn2(self.pw(self.act(self.bn(self.dw(x)))))


class LiteNet(nn.Module):
    """The patterns of a lukemelas-style EfficientNet-Lite (PyPI efficientnet-lite-pytorch): TF-"SAME" static
    padding (ZeroPad2d inside the convolutions), one ReLU6 instance shared by the stem and the head (the
    pooled map is its second call), and a ``view(bs, -1)`` before the head."""

    def __init__(self, image=64, classes=5):
        super().__init__()
        self._conv_stem = StaticSame(3, 8, 3, 2, image=image)
        self._bn0 = nn.BatchNorm2d(8)
        self._swish = nn.ReLU6()
        plan = [(8, 8, 1), (8, 12, 2), (12, 12, 1), (12, 16, 2), (16, 24, 2), (24, 24, 1), (24, 32, 2)]
        size, blocks = image // 2, []
        for cin, cout, s in plan:
            blocks.append(Block(cin, cout, s, size))
            size = -(-size // s)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(32, 40, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(40)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(40, classes)

    def forward(self, x):
        bs = x.size(0)
        x = self._swish(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).view(bs, -1)
        return self._fc(self._dropout(x))


def lite_net(image: int = 64, classes: int = 5) -> LiteNet:
    """A LiteNet in eval mode with non-trivial BatchNorm statistics (so the stream's GAP check has teeth)."""
    model = IMAGENET.declare(LiteNet(image, classes).eval())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model
