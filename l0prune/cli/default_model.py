"""The built-in default: the digits CNN of :mod:`l0prune.demo.digits`, trained on first use and
cached.

Training is seeded, on one thread and with the regularized recipe
(:func:`l0prune.demo.digits.train`), so every machine trains the same weights; the cached
``state_dict`` is keyed by the architecture (a hash of its text), the recipe, the seed and the
epochs. The cache folder is ``$L0PRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/l0prune``, else
``~/.cache/l0prune``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from l0prune.data.batches import to_device
from l0prune.demo.cache import cache_dir
from l0prune.demo.digits import accuracy, digits_cnn, load_digits_data, trained_model

from .task import Task

__all__ = ["EPOCHS", "QUICK_EPOCHS", "builtin_task", "cache_dir", "cached_cnn"]

#: Training epochs of the built-in model, and with ``--quick``.
EPOCHS, QUICK_EPOCHS = 30, 5


def _cache_path(seed: int, epochs: int) -> Path:
    architecture = hashlib.sha256(repr(digits_cnn()).encode()).hexdigest()[:12]
    return cache_dir() / f"digits-cnn-{architecture}-regularized-seed{seed}-epochs{epochs}.pt"


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (concurrent runs never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
        torch.save(state, file)
    os.replace(file.name, path)


def cached_cnn(seed: int, epochs: int, log: Callable[[str], None]) -> nn.Module:
    """The digits CNN trained ``epochs`` epochs with ``seed``, from the cache or trained now.

    Args:
        seed: training and data-split seed.
        epochs: training epochs.
        log: ``log(message)`` for what happens (training, where the cache is).

    Returns:
        The trained model in eval mode.
    """
    path = _cache_path(seed, epochs)
    model = digits_cnn()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except FileNotFoundError:
        log(f"training the built-in digits CNN ({epochs} epochs, seed {seed}, one thread); cached "
            f"for next time in {path.parent}")
    except Exception as err:  # a damaged or stale cache file: train again
        log(f"retraining the built-in digits CNN: cached {path} unreadable "
            f"({type(err).__name__})")
    model, _ = trained_model("cnn", seed=seed, epochs=epochs, regularized=True)
    try:
        _save(model.state_dict(), path)
    except OSError as err:
        log(f"could not cache the trained model in {path.parent}: {err}")
    return model


def builtin_task(seed: int, quick: bool, log: Callable[[str], None]) -> Task:
    """The digits CNN and its splits: calibration and finetuning on the training split,
    the loss on the validation split, accuracy on the test split (``log`` as for
    :func:`cached_cnn`)."""
    epochs = QUICK_EPOCHS if quick else EPOCHS
    model = cached_cnn(seed, epochs, log)
    data = load_digits_data(seed)
    test = list(data.loader("test"))

    def metrics(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        return {"test accuracy": accuracy(model.eval(), to_device(test, device))}

    return Task(
        description=f"built-in digits CNN (l0prune.demo.digits.digits_cnn, {epochs} epochs of "
                    f"AdamW with weight decay and a cosine schedule, seed {seed}; scikit-learn "
                    "digits split 60/20/20)",
        model=model,
        calibration=data.loader("train"),
        validation=data.loader("val"),
        finetune_data=data.loader("train", batch_size=64, shuffle=True, seed=seed),
        metrics=metrics,
    )
