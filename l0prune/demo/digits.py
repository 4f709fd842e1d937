"""Small trained networks on scikit-learn's digits: the built-in models for tests and benchmarks.

The data ships with scikit-learn (1797 8x8 images, 10 classes), so nothing is downloaded. Two
architectures, both seeded and trained in a few seconds on a CPU:

- MLP 64-256-128-10;
- CNN: two 3x3 convolutions (16 and 32 channels), 2x2 max-pool, then 512-64-10.

Training runs on one torch thread whatever the caller's setting: a float32 reduction sums in an
order that depends on the thread count, so one thread makes the trained weights the same on
every machine (given the seed), and every run starts from the same model.

Two recipes: *plain* (Adam, constant learning rate), and *regularized* (AdamW with weight decay
``0.1``, the learning rate decayed to zero on a cosine), which the command line's built-in model
and the model benchmark use. The plain recipe's model overfits the 1,078 training images: its
validation loss sits above what a damaged copy retrained for a few epochs reaches, so a loss
tolerance ``L(W') <= alpha L(W)`` there rewards damage more than accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DigitsData",
    "accuracy",
    "digits_cnn",
    "digits_mlp",
    "load_digits_data",
    "train",
    "trained_model",
]


@dataclass
class DigitsData:
    """Train / validation / test splits of the digits, images as ``(N, 1, 8, 8)`` in [0, 1]."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0):
        """A re-iterable ``DataLoader`` of ``(x, y)`` batches of one split."""
        g = torch.Generator().manual_seed(seed)
        return DataLoader(getattr(self, split), batch_size=batch_size, shuffle=shuffle, generator=g)


def load_digits_data(seed: int = 0) -> DigitsData:
    """The digits split 60 / 20 / 20 into train, validation and test by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return DigitsData(*(TensorDataset(x[p], y[p]) for p in parts))


def digits_mlp() -> nn.Module:
    """MLP 64-256-128-10 on flattened 8x8 images."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def digits_cnn() -> nn.Module:
    """CNN: conv3x3(16) - conv3x3(32) - maxpool2 - 512-64-10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread, then put the caller's setting back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(model: nn.Module, data: DigitsData, *, epochs: int = 30, lr: float = 3e-3,
          seed: int = 0, regularized: bool = False) -> nn.Module:
    """Train ``model`` on the training split with cross-entropy (in place), on one thread.

    Args:
        model: the model.
        data: the digits splits.
        epochs: passes over the training split (batches of 64, shuffled by ``seed``).
        lr: the (initial) learning rate.
        seed: seeds the shuffling and any random draw.
        regularized: AdamW with weight decay 0.1 and a cosine decay of the learning rate to
            zero over the epochs; ``False``: Adam at a constant ``lr``.

    Returns:
        ``model``, in eval mode.
    """
    with one_thread():
        torch.manual_seed(seed)
        if regularized:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) \
            if regularized else None
        model.train()
        for _ in range(epochs):
            for x, y in data.loader("train", batch_size=64, shuffle=True, seed=seed):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            if schedule is not None:
                schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches."""
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def trained_model(
    kind: str = "cnn", seed: int = 0, epochs: int = 30, *, regularized: bool = False
) -> tuple[nn.Module, DigitsData]:
    """A seeded ``"mlp"`` or ``"cnn"`` trained on the digits, and the data it was trained on.

    The same weights on every machine and thread count (see :func:`train`); ``regularized``
    picks the recipe.
    """
    factories = {"mlp": digits_mlp, "cnn": digits_cnn}
    if kind not in factories:
        raise ValueError(f"kind must be one of {sorted(factories)}, got {kind!r}")
    data = load_digits_data(seed)
    with one_thread():
        torch.manual_seed(seed)
        model = factories[kind]()
    return train(model, data, epochs=epochs, seed=seed, regularized=regularized), data
