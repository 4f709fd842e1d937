"""A random-init pitch estimator with the layout of CREPE (Kim, Salamon, Li & Bello, "CREPE: A
Convolutional Representation for Pitch Estimation", ICASSP 2018), for the benchmarks that need
real convolution shapes.

A frame of 1024 samples goes through six ``Conv2d`` layers with ``(width, 1)`` kernels (512 taps
with stride 4, then 64 taps), each followed by ReLU, batch norm and max-pooling by 2, and a
linear layer to 360 pitch bins. With ``capacity`` ``c`` the layers have ``[32, 4, 4, 4, 8, 16]
* c`` channels: ``c = 4`` ("tiny", 0.49M parameters) unfolds its second convolution's inputs to
``128 x 64 = 8,192`` columns, ``c = 32`` ("full", 22M) to ``1,024 x 64 = 65,536``.

:func:`trained_pitch_net` trains one (seeded, one thread, cached) on synthetic tones: frames of
a few harmonics of a pitch between 50 and 1000 Hz at 16 kHz with noise, classified into CREPE's
360 bins of 20 cents from 32.7 Hz (C1); :func:`pitch_accuracy` is the fraction of frames whose
predicted bin is within 50 cents of the truth (MIR's raw pitch accuracy).
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CAPACITIES", "Tones", "frames", "pitch_accuracy", "pitch_net", "tones",
           "trained_pitch_net"]

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


#: CREPE's pitch bins: 360 of 20 cents from C1 (32.70 Hz).
_LOWEST, _CENTS = 32.70, 20.0


@dataclass
class Tones:
    """Frames and the bin of their pitch."""

    frames: torch.Tensor
    bins: torch.Tensor


def tones(count: int, *, seed: int = 0) -> Tones:
    """``count`` frames of 1024 samples at 16 kHz: harmonics 1-4 of a pitch drawn uniformly in
    log-frequency between 50 and 1000 Hz, each with a random amplitude and phase, plus noise at
    -20 dB; normalised to zero mean and unit variance as CREPE's input is.

    Example:
        >>> t = tones(3)
        >>> t.frames.shape, t.bins.shape
        (torch.Size([3, 1024]), torch.Size([3]))
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1024, dtype=torch.float32) / 16000
    f0 = 50 * 20 ** torch.rand(count, 1, generator=g)
    x = torch.zeros(count, 1024)
    for k in (1, 2, 3, 4):
        amplitude = torch.rand(count, 1, generator=g) / k
        phase = 2 * torch.pi * torch.rand(count, 1, generator=g)
        x = x + amplitude * torch.sin(2 * torch.pi * k * f0 * t + phase)
    x = x + 0.1 * x.std(1, keepdim=True) * torch.randn(count, 1024, generator=g)
    cents = 1200 * torch.log2(f0[:, 0] / _LOWEST)
    return Tones((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True),
                 (cents / _CENTS).round().long().clamp(0, 359))


def frames(count: int, *, seed: int = 0) -> torch.Tensor:
    """The frames of :func:`tones`.

    Example:
        >>> frames(3).shape
        torch.Size([3, 1024])
    """
    return tones(count, seed=seed).frames


@torch.no_grad()
def pitch_accuracy(model: nn.Module, data: Tones, batch: int = 256) -> float:
    """Fraction of frames whose predicted bin is within 50 cents (2.5 bins) of the truth."""
    model.eval()
    hits = 0
    for x, y in zip(data.frames.split(batch), data.bins.split(batch), strict=True):
        hits += int(((model(x).argmax(1) - y).abs() * _CENTS <= 50).sum())
    return hits / len(data.bins)


def trained_pitch_net(capacity: int | str = "tiny", *, epochs: int = 8, samples: int = 16384,
                      seed: int = 0) -> nn.Module:
    """:func:`pitch_net` trained on :func:`tones` (seeded, one thread; Adam, lr 1e-3, batches
    of 64), cached under the l0prune cache folder.

    Example:
        >>> model = trained_pitch_net("tiny", epochs=1, samples=64)  # doctest: +SKIP
    """
    from l0prune.demo.cache import cache_dir, publish_folder

    recipe = f"{inspect.getsource(pitch_net)}{inspect.getsource(tones)}{capacity}-{epochs}-"
    key = hashlib.sha256(f"{recipe}{samples}-{seed}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"pitch-{capacity}-{key}"
    model = pitch_net(capacity, seed=seed)
    if not (folder / "model.pt").is_file():
        publish_folder(folder, lambda tmp: torch.save(
            _train(pitch_net(capacity, seed=seed), samples, epochs, seed).state_dict(),
            tmp / "model.pt"))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def _train(model: nn.Module, samples: int, epochs: int, seed: int) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tones(samples, seed=seed + 1)
        g = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(samples, generator=g)
            for start in range(0, samples, 64):
                index = order[start:start + 64]
                loss = nn.functional.cross_entropy(model(data.frames[index]), data.bins[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
