"""Layer problems for the solver benchmark: ``name -> (W, H)``, float32, ``H = X^T X / N``.

Three sources:

- the seeded digits MLP and CNN (:mod:`l0prune.demo.digits`): every ``Linear`` and ``Conv2d``, ``H``
  from its inputs on the first training images (patches for a convolution, the weight flattened
  to ``out x in*kh*kw``), taken by :func:`l0prune.model.statistics.second_moments`;
- synthetic layers whose inputs look like a trained network's activations: a power-law
  spectrum mixed by a random rotation (correlated columns), a component shared by every column
  (activations with a non-zero mean) and a few outlier features ten times larger than the rest,
  as large language models show (Dettmers et al., "LLM.int8()", 2022). ``W`` is Gaussian with
  ``nn.Linear``'s ``1/sqrt(in)`` scale; the relative error does not depend on it;
- BERT-class layers: the attention, intermediate and output weights of a randomly initialised
  BERT-class encoder block (hidden size 384, intermediate 1536, as in MiniLM), each with ``H`` of
  activation-like inputs as above.
"""

from __future__ import annotations

import torch

from l0prune.demo.digits import trained_model
from l0prune.model.statistics import second_moments

__all__ = ["benchmark_layers", "digits_layers", "synthetic_layer"]

#: ``(out, in)`` of the synthetic layers of the full and the quick benchmark.
SYNTHETIC_SIZES = [(256, 128), (768, 256), (1536, 384)]
QUICK_SIZES = [(64, 32), (128, 64)]


def digits_layers(
    kind: str = "mlp", *, samples: int = 1000, epochs: int = 30, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The layers l0prune prunes by default in the trained digits ``kind`` model, with their ``H``.

    The output head is left out, as :func:`l0prune.prune` leaves it dense: its inputs are
    the last hidden units, many of them dead after ReLU, so its ``f`` is mostly the ridge and its
    relative error (ridge excluded) says little about a solver.

    Args:
        kind: ``"mlp"`` or ``"cnn"`` (see :func:`l0prune.demo.digits.trained_model`).
        samples: training images the second moments are taken on (at most 1078).
        epochs: training epochs.
        seed: seed of the data split and the training.

    Returns:
        ``{"<kind>.<layer name>": (W, H)}`` in the order the layers run.

    Example:
        >>> layers = digits_layers("mlp", samples=100, epochs=1)
        >>> {name: tuple(W.shape) for name, (W, H) in layers.items()}
        {'mlp.1': (256, 64), 'mlp.3': (128, 256)}
    """
    model, data = trained_model(kind, seed=seed, epochs=epochs)
    images = data.train.tensors[0]
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= len(images):
        raise ValueError(
            f"samples must be an integer in [1, {len(images)}] (the training images), "
            f"got {samples!r}"
        )
    calibration = list(images[:samples].split(250))
    H = second_moments(model, calibration)
    modules = dict(model.named_modules())
    return {
        f"{kind}.{name}": (
            modules[name].weight.detach().reshape(modules[name].weight.shape[0], -1).clone(),
            h.float(),
        )
        for name, h in H.items()
    }


def synthetic_layer(
    out: int, inp: int, *, seed: int = 0, decay: float = 1.0, outliers: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``out x inp`` layer and the second moment of activation-like inputs.

    ``X = Z diag(s) Q^T + 0.5 z 1^T`` over ``N = 4 inp`` samples, ``s_i = (1 + i)^-decay``,
    ``Q`` a random rotation, ``Z`` and ``z`` standard normal; then ``outliers`` random columns of
    ``X`` are multiplied by 10.

    Args:
        out: output size.
        inp: input size.
        seed: the seed of every draw.
        decay: exponent of the power-law spectrum.
        outliers: number of outlier features.

    Returns:
        ``(W, H)`` in float32.
    """
    for name, value in (("out", out), ("inp", inp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(outliers, int) and 0 <= outliers <= inp):
        raise ValueError(f"outliers must be an integer in [0, inp={inp}], got {outliers!r}")
    g = torch.Generator().manual_seed(seed)
    H = _activation_moment(inp, g, decay, outliers)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64) / inp**0.5
    return W.float(), H


def _activation_moment(inp: int, g: torch.Generator, decay: float, outliers: int) -> torch.Tensor:
    """``X^T X / N`` (float32) of the activation-like inputs of :func:`synthetic_layer`."""
    f64 = torch.float64
    n = 4 * inp
    rotation = torch.linalg.qr(torch.randn(inp, inp, generator=g, dtype=f64))[0]
    spectrum = (1.0 + torch.arange(inp, dtype=f64)) ** -decay
    X = (torch.randn(n, inp, generator=g, dtype=f64) * spectrum) @ rotation.T
    X += 0.5 * torch.randn(n, 1, generator=g, dtype=f64)
    X[:, torch.randperm(inp, generator=g)[:outliers]] *= 10.0
    return (X.T @ X / n).float()


#: Spectrum exponent of the BERT-class layers' inputs: eigenvalues of ``H`` fall as ``i^-0.6``,
#: which puts OBS's relative error at 0.6 % / 9 % at 50 / 90 % sparsity and 1.3-1.9x ADMM's, the
#: range reported for real transformer layers (ALPS, Meng et al. 2024).
BERT_DECAY = 0.3

#: BERT-class layers: name in the encoder block -> its weight's attribute path.
BERT_LAYERS = {
    "attention.query": "attention.self.query",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}


def bert_layers(*, hidden: int = 384, intermediate: int = 1536, seed: int = 0
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Layers of a randomly initialised BERT-class encoder block, with activation-like ``H``.

    The weights are those ``transformers.BertConfig`` initialises (normal, std 0.02); ``H`` is
    :func:`synthetic_layer`'s second moment of inputs with a power-law spectrum (exponent
    :data:`BERT_DECAY`), a shared component and outlier features.

    Args:
        hidden: the hidden size (384: ``attention.query`` is 384 x 384).
        intermediate: the feed-forward size (1536: ``intermediate`` is 1536 x 384, ``output``
            384 x 1536).
        seed: the seed of the initialisation and of the inputs.

    Returns:
        ``{"bert.<layer>": (W, H)}`` in float32.

    Example:
        >>> {n: tuple(W.shape) for n, (W, H) in bert_layers(hidden=8, intermediate=16).items()}
        {'bert.attention.query': (8, 8), 'bert.intermediate': (16, 8), 'bert.output': (8, 16)}
    """
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, intermediate_size=intermediate,
                        num_attention_heads=max(1, hidden // 64), num_hidden_layers=1)
    block = BertLayer(config)
    modules = dict(block.named_modules())
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=config.initializer_range)
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, path in BERT_LAYERS.items():
        W = modules[path].weight.detach().clone()
        layers[f"bert.{name}"] = (W, _activation_moment(W.shape[1], g, BERT_DECAY, 4))
    return layers


def benchmark_layers(quick: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The solver benchmark's layers.

    Full: the digits MLP and CNN layers (1000 images, 30 epochs), synthetic 256x128,
    768x256 and 1536x384 layers and the BERT-class layers of :func:`bert_layers`. Quick (for
    tests): the MLP trained for 2 epochs, 200 images, and synthetic 64x32 and 128x64 layers.
    """
    if quick:
        layers = digits_layers("mlp", samples=200, epochs=2)
    else:
        layers = {**digits_layers("mlp"), **digits_layers("cnn")}
    for seed, (out, inp) in enumerate(QUICK_SIZES if quick else SYNTHETIC_SIZES):
        layers[f"synthetic.{out}x{inp}"] = synthetic_layer(out, inp, seed=seed)
    if not quick:
        layers.update(bert_layers())
    return layers
