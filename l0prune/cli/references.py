"""``MODULE:NAME`` references to a user's code: their model factory, data loaders and loss.

``MODULE`` is an importable module (the current folder comes first on the path, as with
``python -m``) or a ``.py`` file; ``NAME`` an attribute of it. Anything that goes wrong while
importing or calling the user's code becomes one :class:`~l0prune.cli.errors.UsageError` line
naming the flag.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from torch import nn

from .errors import UsageError

__all__ = ["load_batches", "load_callable", "load_model"]


def _module(name: str, label: str) -> ModuleType:
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise UsageError(f"{label}: no such file {name}")
        loaded = sys.modules.get(path.stem)
        if loaded is not None and getattr(loaded, "__file__", None) == str(path):
            return loaded  # --model and --calibration from one file: run it once
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(name)


def _resolve(reference: str, label: str):
    module_name, _, name = reference.rpartition(":")
    where = f"{label} {reference}"
    try:
        module = _module(module_name, where)
    except UsageError:
        raise
    except ModuleNotFoundError as err:
        raise UsageError(f"{where}: cannot import {module_name} ({err})") from None
    except Exception as err:  # the user's module failed while importing
        raise UsageError(
            f"{where}: importing {module_name} failed: {type(err).__name__}: {err}"
        ) from None
    if not hasattr(module, name):
        raise UsageError(f"{where}: {module_name} has no attribute {name!r}")
    return getattr(module, name)


def _call(fn, reference: str, label: str):
    try:
        return fn()
    except Exception as err:
        raise UsageError(
            f"{label} {reference}: calling it failed: {type(err).__name__}: {err}"
        ) from None


def load_model(reference: str, label: str = "--model") -> nn.Module:
    """The model: a ``nn.Module`` object, or what a function or class called with no arguments
    returns."""
    value = _resolve(reference, label)
    if not isinstance(value, nn.Module) and callable(value):
        value = _call(value, reference, label)
    if not isinstance(value, nn.Module):
        raise UsageError(
            f"{label} {reference} gives a {type(value).__name__}, not a torch nn.Module"
        )
    return value


def load_batches(reference: str, label: str) -> Iterable:
    """Batches: a re-iterable object (a ``DataLoader``, a list), or what a function returns."""
    value = _resolve(reference, label)
    if callable(value) and not isinstance(value, Iterable):
        value = _call(value, reference, label)
    return value


def load_callable(reference: str, label: str):
    """A function, such as ``loss_fn(outputs, batch) -> scalar``."""
    value = _resolve(reference, label)
    if not callable(value):
        raise UsageError(f"{label} {reference} is a {type(value).__name__}, not a function")
    return value
