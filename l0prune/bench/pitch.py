"""A random-init pitch estimator with the layout of CREPE (Kim, Salamon, Li & Bello, "CREPE: A
Convolutional Representation for Pitch Estimation", ICASSP 2018), for the benchmarks that need
real convolution shapes.

A frame of 1024 samples goes through six ``Conv2d`` layers with ``(width, 1)`` kernels (512 taps
with stride 4, then 64 taps), each followed by ReLU, batch norm and max-pooling by 2, and a
linear layer to 360 pitch bins. With ``capacity`` ``c`` the layers have ``[32, 4, 4, 4, 8, 16]
* c`` channels: ``c = 4`` ("tiny", 0.49M parameters) unfolds its second convolution's inputs to
``128 x 64 = 8,192`` columns, ``c = 32`` ("full", 22M) to ``1,024 x 64 = 65,536``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CAPACITIES", "frames", "pitch_net"]

#: The released model sizes and their capacity multipliers.
CAPACITIES = {"tiny": 4, "small": 8, "medium": 16, "large": 24, "full": 32}
_CHANNELS = (32, 4, 4, 4, 8, 16)
_WIDTHS = (512, 64, 64, 64, 64, 64)


def pitch_net(capacity: int | str = "tiny", *, seed: int = 0) -> nn.Module:
    """The network, random-init (seeded), in eval mode.

    Example:
        >>> model = pitch_net("tiny")
        >>> sum(p.numel() for p in model.parameters()) // 1000, model(frames(2)).shape
        (486, torch.Size([2, 360]))
    """
    c = CAPACITIES[capacity] if isinstance(capacity, str) else capacity
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = 1
    for i, (n, width) in enumerate(zip(_CHANNELS, _WIDTHS, strict=True)):
        out = n * c
        if i == 0:  # 'same' for stride 4: 508 zeros, half on each side
            layers.append(nn.Conv2d(channels, out, (width, 1), stride=(4, 1), padding=(254, 0)))
        else:  # 'same' for 64 taps: 31 zeros before, 32 after (as TensorFlow pads)
            layers += [nn.ZeroPad2d((0, 0, width // 2 - 1, width // 2)),
                       nn.Conv2d(channels, out, (width, 1))]
        layers += [nn.ReLU(), nn.BatchNorm2d(out), nn.MaxPool2d((2, 1))]
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * 4, 360)]
    return nn.Sequential(_Frames(), *layers).eval()


class _Frames(nn.Module):
    """``(batch, 1024)`` samples as ``(batch, 1, 1024, 1)`` images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 1, -1, 1)


def frames(count: int, *, seed: int = 0) -> torch.Tensor:
    """``count`` frames of 1024 samples: a few harmonics of a random pitch plus noise,
    normalised to zero mean and unit variance as CREPE's input is.

    Example:
        >>> frames(3).shape
        torch.Size([3, 1024])
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1024, dtype=torch.float32) / 16000
    f0 = 50 + 950 * torch.rand(count, 1, generator=g)
    x = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in (1, 2, 3))
    x = x + 0.1 * torch.randn(count, 1024, generator=g)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
