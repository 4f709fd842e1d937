"""The layer problem: ``min_W' f(W') = tr((W'-W) H (W'-W)^T) + lam ||W'-W||_F^2`` over a budget.

``W`` is a layer's dense weight (out x in), ``H = X^T X / N`` the second moment of its inputs
(in x in, symmetric PSD; ``None`` means the identity, the plain Frobenius problem; a vector
means a diagonal ``H``, the inputs' squared norms, which is all a score like Wanda's needs and
costs ``in`` numbers instead of ``in^2``) and ``lam`` a ridge that keeps ``H + lam I`` well
conditioned. This module is the "datafit" every solver shares:
value, gradient, the scale-free relative error, the refit on a support, and the diagonally scaled
form (:mod:`solvers.scaling`) with its eigendecomposition and Lipschitz constant.

What depends only on ``(W, H, lam)`` is computed once per layer and shared by every problem that
:meth:`LayerProblem.with_budget` makes from it, so every method and every budget of an allocation
or a search reuses one ``H + lam I``, one scaled problem and one eigendecomposition.

Inputs are checked here, once; solvers trust a ``LayerProblem``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .budgets import Budget, Unstructured
from .refit import damped_cholesky
from .scaling import Scaled, scale

__all__ = ["PSD_TOLERANCE", "LayerProblem", "as_tensor", "default_ridge"]


#: ``H`` counts as positive semidefinite when ``H + PSD_TOLERANCE * max|H| I`` has a Cholesky
#: factor, i.e. ``lambda_min(H) > -PSD_TOLERANCE * max|H|``: room for the round-off of a second
#: moment summed in float32, far below what a wrong sign or a non-covariance gives.
PSD_TOLERANCE = 1e-4


def as_tensor(value, name: str, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """``value`` (a real numpy array or torch tensor) as a floating torch tensor, detached."""
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        raise ValueError(
            f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}"
        )
    if tensor.is_complex():
        raise ValueError(f"{name} must be real, got a {tensor.dtype} tensor")
    if dtype is None:
        dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    return tensor.to(dtype=dtype, device=device)


def _half_precision(value) -> torch.dtype | None:
    """``value``'s dtype when it is a half-precision float (fp16 / bf16), else ``None``."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return torch.float16
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.dtype
    return None


def _check_psd(H: torch.Tensor, scale: float) -> None:
    """Raise unless ``H`` (symmetric, ``scale = max|H|``) is PSD within :data:`PSD_TOLERANCE`.

    One Cholesky of ``H + tol * scale * I`` in float64 (a third of a matrix product); the
    smallest eigenvalue is computed only for the message.
    """
    if scale == 0:  # H = 0: PSD
        return
    H64 = H.double()
    shift = PSD_TOLERANCE * scale
    eye = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    if int(torch.linalg.cholesky_ex(H64 + shift * eye).info) == 0:
        return
    smallest = float(torch.linalg.eigvalsh(H64)[0])
    raise ValueError(
        f"H must be positive semidefinite (a second moment X^T X / N), got smallest "
        f"eigenvalue {smallest:.4g} with max |H| = {scale:.4g} (tolerance "
        f"-{PSD_TOLERANCE:g} x max |H|)"
    )


def default_ridge(H: torch.Tensor | None) -> float:
    """``0.01 * mean(diag H)`` (SparseGPT's damping; 0 for the identity or an empty ``H``; a
    vector ``H`` is its diagonal)."""
    if H is None or not H.shape[0]:
        return 0.0
    return 0.01 * float((H if H.ndim == 1 else H.diagonal()).mean())


class _shared:
    """A cached property kept in the problem's shared cache: computed once, then seen by every
    problem :meth:`LayerProblem.with_budget` makes (they hold the same ``_cache`` dict)."""

    def __init__(self, fn):
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, problem, owner=None):
        if problem is None:
            return self
        cache = problem._cache
        if self.name not in cache:
            cache[self.name] = self.fn(problem)
        return cache[self.name]


def _ridge(lam, H: torch.Tensor | None) -> float:
    """``lam`` as a float (see :func:`_nonnegative`); ``None``: the default."""
    return default_ridge(H) if lam is None else _nonnegative(lam, "lam")


def _nonnegative(value, name: str) -> float:
    """``value`` as a float >= 0 (a Python, numpy or 0-d torch number), or a ``ValueError``
    naming ``name``."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _diagonal(d: torch.Tensor, n_in: int) -> torch.Tensor:
    """A diagonal ``H`` given as its vector, checked: ``n_in`` finite numbers, none below
    ``-PSD_TOLERANCE`` times the largest (round-off), clamped at 0."""
    if d.shape[0] != n_in:
        raise ValueError(f"H as a vector (a diagonal H) must have W's {n_in} entries, got "
                         f"{d.shape[0]}")
    _check_finite(d, "H")
    scale = float(d.abs().max()) if n_in else 0.0
    if n_in and float(d.min()) < -PSD_TOLERANCE * scale:
        raise ValueError(f"H as a vector (a diagonal H) must be >= 0, got {float(d.min()):.4g}")
    return d.clamp_min(0)


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or Inf entries")


class LayerProblem:
    """One layer's pruning problem.

    Args:
        W: dense weight, out x in (numpy or torch; a Conv weight flattened to out x in*kh*kw).
        H: input second moment, in x in, symmetric positive semidefinite (within
            :data:`PSD_TOLERANCE` of its scale); ``None`` for the identity; a vector of
            ``in`` non-negative numbers for a diagonal ``H`` (formed as a matrix only if a
            method asks for :attr:`H` or :attr:`damped`).
        lam: ridge weight, a number (Python, numpy or 0-d tensor); ``None`` means
            ``0.01 * mean(diag H)`` (0 when ``H`` is ``None``).
        budget: a :class:`~solvers.budgets.Budget`; or give ``sparsity`` / ``k`` for an
            unstructured one.
        sparsity: fraction of weights removed, in [0, 1) (unstructured).
        k: number of weights kept (unstructured).
        dtype: computation dtype (``torch.float64`` for small exact work); default: ``W``'s
            dtype if float32 / float64, else float32. Solutions of an fp16 / bf16 ``W`` come
            back in that dtype (:attr:`output_dtype`).
        check_psd: check that ``H`` is PSD (one Cholesky); ``False`` for a second moment the
            caller summed as ``X^T X`` itself (PSD by construction; l0prune's statistics).

    Computation runs in torch on ``W``'s device.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, solve
        >>> W = torch.randn(8, 16); X = torch.randn(64, 16)
        >>> problem = LayerProblem(W, X.T @ X / 64, sparsity=0.5)
        >>> solve(problem, method="magnitude").mask.sum().item()
        64
    """

    def __init__(
        self,
        W,
        H=None,
        lam: float | None = None,
        budget: Budget | None = None,
        *,
        sparsity: float | None = None,
        k: int | None = None,
        dtype: torch.dtype | None = None,
        check_psd: bool = True,
    ):
        half = _half_precision(W)
        W = as_tensor(W, "W", dtype)
        #: The dtype solutions come back in: ``W``'s own when it is fp16 / bf16 (computed in
        #: float32), else the computation dtype.
        self.output_dtype = half if half is not None and dtype is None else W.dtype
        if W.ndim != 2:
            raise ValueError(f"W must be a 2-D matrix (out x in), got shape {tuple(W.shape)}")
        _check_finite(W, "W")
        self.W = W
        self.shape = (W.shape[0], W.shape[1])
        n_in = W.shape[1]

        self._diagonal = None
        if H is not None and getattr(H, "ndim", 0) == 1:
            self._diagonal = _diagonal(as_tensor(H, "H", W.dtype, W.device), n_in)
            H = None
        if H is not None:
            H = as_tensor(H, "H", W.dtype, W.device)
            if H.ndim != 2 or H.shape[0] != H.shape[1]:
                raise ValueError(f"H must be a square matrix, got shape {tuple(H.shape)}")
            if H.shape[0] != n_in:
                raise ValueError(
                    f"H must be {n_in} x {n_in} to match W's {n_in} inputs, "
                    f"got shape {tuple(H.shape)}"
                )
            _check_finite(H, "H")
            asym = float((H - H.T).abs().max()) if n_in else 0.0
            scale = float(H.abs().max()) if n_in else 0.0
            if asym > 1e-5 * scale + 1e-12:
                raise ValueError(f"H must be symmetric, got max |H - H^T| = {asym:.3g}")
            H = (H + H.T) / 2
            if check_psd:
                _check_psd(H, scale)
        self.H = H
        self.lam = _ridge(lam, H if self._diagonal is None else self._diagonal)

        if budget is not None and (sparsity is not None or k is not None):
            raise ValueError(
                f"give either budget= or sparsity=/k=, not both (got budget={budget!r}, "
                f"sparsity={sparsity!r}, k={k!r})"
            )
        if budget is None:
            budget = Unstructured(sparsity=sparsity, k=k)
        if not isinstance(budget, Budget):
            raise ValueError(f"budget must be a solvers Budget, got {budget!r}")
        if budget.sized:
            budget.check(self.shape)
        self.budget = budget
        # (dense W, H, G, energy) for a problem from_moments with dense_cross, else None
        self.reference: tuple | None = None
        self._cache: dict = {}

    @classmethod
    def from_inputs(cls, W, X, lam: float | None = None, budget: Budget | None = None, **kw):
        """The problem with ``H = X^T X / N`` from raw inputs ``X`` (tokens x in)."""
        W_t = as_tensor(W, "W", kw.get("dtype"))
        X = as_tensor(X, "X", W_t.dtype, W_t.device)
        if X.ndim < 2 or X.shape[-1] != W_t.shape[-1]:
            raise ValueError(
                f"X must have W's {W_t.shape[-1]} inputs in its last dimension, "
                f"got shape {tuple(X.shape)}"
            )
        X = X.reshape(-1, X.shape[-1])
        if X.shape[0] == 0:
            raise ValueError("X must hold at least one row, got 0")
        return cls(W, X.T @ X / X.shape[0], lam, budget, **kw)

    @classmethod
    def from_moments(
        cls, W, H, dense_cross=None, dense_energy=None, budget: Budget | None = None, **kw
    ) -> LayerProblem:
        """The problem of a layer whose inputs ``X`` differ from the dense model's ``X_0``.

        Sequential pruning fits each layer to reproduce the dense model's output
        ``Y_0 = X_0 W^T`` from the inputs it sees with the layers before it already pruned:
        ``min ||X W'^T - Y_0||^2 / N + lam ||W' - W||^2``. With ``H = X^T X / N``,
        ``G = Y_0^T X / N`` (``= W C^T`` for ``C = X^T X_0 / N``) and ``A = H + lam I`` that is
        the layer problem ``tr((W' - W~) A (W' - W~)^T)`` plus a constant, for the target
        ``W~ = (G + lam W) A^-1`` (solved in float64 by Cholesky; ``W~ = W`` when ``X = X_0``),
        so a layer
        corrects the error of the layers before it. ``G`` is ``out x in``: the statistics never
        need the ``in x in`` moments of ``X_0``.

        Args:
            W: the dense weight, out x in.
            H: ``X^T X / N``, in x in.
            dense_cross: ``G = Y_0^T X / N``, out x in; ``None`` for ``X = X_0`` (the problem
                ``(W, H)``).
            dense_energy: ``||Y_0||^2 / N`` (a number), the dense output's energy, needed with
                ``dense_cross`` for :meth:`output_error`.
            budget: as for the constructor; ``**kw`` takes its other keywords (``lam``
                defaults to :func:`default_ridge` of ``H``).

        Returns:
            The :class:`LayerProblem` with target ``W~``; :meth:`output_error` measures against
            the dense output ``Y_0``.

        Example:
            >>> import torch
            >>> from solvers import LayerProblem, solve
            >>> X0 = torch.randn(64, 8, dtype=torch.float64); X = X0 + 0.1 * torch.randn(64, 8)
            >>> W = torch.randn(4, 8, dtype=torch.float64); Y0 = X0 @ W.T
            >>> p = LayerProblem.from_moments(W, X.T @ X / 64, Y0.T @ X / 64,
            ...                               float((Y0 ** 2).sum()) / 64, sparsity=0.5)
            >>> change, energy = p.output_error(solve(p, "obs").weight)
            >>> 0 < change < energy
            True
        """
        if dense_cross is None:
            return cls(W, H, budget=budget, **kw)
        if dense_energy is None:
            raise ValueError("dense_energy (||X_0 W^T||^2 / N) must be given with dense_cross")
        W_t = as_tensor(W, "W", kw.get("dtype"))
        H64 = as_tensor(H, "H", torch.float64, W_t.device)
        G64 = as_tensor(dense_cross, "dense_cross", torch.float64, W_t.device)
        if G64.shape != W_t.shape:
            raise ValueError(
                f"dense_cross must have W's shape {tuple(W_t.shape)} (out x in), got "
                f"{tuple(G64.shape)}"
            )
        _check_finite(G64, "dense_cross")
        energy = _nonnegative(dense_energy, "dense_energy")
        lam = kw.pop("lam", None)
        lam = default_ridge(H64) if lam is None else lam
        target = W_t.double()
        if lam > 0:
            A = H64 + lam * torch.eye(H64.shape[0], dtype=H64.dtype, device=H64.device)
            target = torch.cholesky_solve((G64 + lam * target).T, damped_cholesky(A)).T
        problem = cls(target.to(W_t.dtype), H64, lam=lam, budget=budget, **kw)
        problem.reference = (W_t, H64, G64, energy)
        return problem

    def with_budget(self, budget: Budget) -> LayerProblem:
        """The same ``(W, H, lam)`` under another budget (shares the cached factorisations)."""
        clone = object.__new__(LayerProblem)
        clone.__dict__.update(self.__dict__)
        if budget.sized:
            budget.check(self.shape)
        clone.budget = budget
        return clone

    # --- the datafit ------------------------------------------------------------------------
    @property
    def H(self) -> torch.Tensor | None:
        """``H`` as a matrix (``None`` for the identity); a diagonal ``H`` given as a vector is
        formed here, once, for a method that needs the matrix."""
        if self._diagonal is not None:
            if "H" not in self._cache:
                self._cache["H"] = torch.diag(self._diagonal)
            return self._cache["H"]
        return self._H

    @H.setter
    def H(self, value: torch.Tensor | None) -> None:
        self._H = value

    @property
    def identity(self) -> bool:
        """Whether ``H`` is the identity (the plain Frobenius problem)."""
        return self._H is None and self._diagonal is None

    @property
    def diagonal(self) -> bool:
        """Whether ``H`` is diagonal by construction (given as a vector)."""
        return self._diagonal is not None

    @property
    def H_diagonal(self) -> torch.Tensor:
        """``diag(H)`` (ones for the identity), without forming a diagonal ``H``."""
        if self._diagonal is not None:
            return self._diagonal
        if self._H is None:
            return torch.ones(self.shape[1], dtype=self.W.dtype, device=self.W.device)
        return self._H.diagonal()

    @_shared
    def damped(self) -> torch.Tensor:
        """``H + lam I``, the matrix the objective uses."""
        n = self.shape[1]
        eye = torch.eye(n, dtype=self.W.dtype, device=self.W.device)
        return eye * (1.0 + self.lam) if self.identity else self.H + self.lam * eye

    @_shared
    def damped_diagonal(self) -> torch.Tensor:
        """``diag(H) + lam``, without forming ``H + lam I``."""
        return self.H_diagonal + self.lam

    @_shared
    def scaled(self) -> Scaled:
        """The diagonally scaled problem (:mod:`solvers.scaling`), with its eigendecomposition
        and Lipschitz constant computed on first use."""
        return scale(self)

    def objective(self, weight: torch.Tensor) -> float:
        """``f(W') = tr((W'-W)(H + lam I)(W'-W)^T)``, ``>= 0`` (a singular ``H`` can give a
        round-off value just below 0, reported as 0)."""
        D = weight - self.W
        if self.identity or self.diagonal:
            return float((D * D * self.damped_diagonal).sum())
        return max(float(((D @ self.damped) * D).sum()), 0.0)

    def gradient(self, weight: torch.Tensor) -> torch.Tensor:
        """``grad f(W') = 2 (W' - W)(H + lam I)``."""
        if self.identity or self.diagonal:
            return 2.0 * (weight - self.W) * self.damped_diagonal
        return 2.0 * (weight - self.W) @ self.damped

    @_shared
    def output_energy(self) -> float:
        """``tr(W H W^T)``: the dense layer's output energy, the relative error's denominator."""
        if self.identity or self.diagonal:
            return float((self.W * self.W * self.H_diagonal).sum())
        return max(float(((self.W @ self.H) * self.W).sum()), 0.0)

    def relative_error(self, weight: torch.Tensor) -> float:
        """``tr((W'-W) H (W'-W)^T) / tr(W H W^T)``: the layer's relative output change,
        ``>= 0`` (round-off below 0 on a singular ``H`` is reported as 0)."""
        D = weight - self.W
        if self.identity or self.diagonal:
            num = float((D * D * self.H_diagonal).sum())
        else:
            num = max(float(((D @ self.H) * D).sum()), 0.0)
        den = self.output_energy
        return num / den if den > 0 else (0.0 if num <= 0 else math.inf)

    def output_error(self, weight: torch.Tensor) -> tuple[float, float]:
        """``(||X W'^T - Y_0||^2, ||Y_0||^2) / N``: the change of the layer's output against the
        dense model's ``Y_0 = X_0 W^T``, and that output's energy (float64):
        ``tr(W' H W'^T) - 2 <W', G> + ||Y_0||^2 / N``.

        For a problem from :meth:`from_moments` with ``dense_cross``; otherwise ``X = X_0`` and
        this is the relative error's numerator and denominator, ``tr((W'-W) H (W'-W)^T)`` and
        ``tr(W H W^T)``.
        """
        if self.reference is None:
            W, P = self.W.double(), weight.double()
            D = P - W
            if self.identity or self.diagonal:
                d = self.H_diagonal.double()
                return float((D * D * d).sum()), float((W * W * d).sum())
            H = self.H.double()
            return max(float(((D @ H) * D).sum()), 0.0), float(((W @ H) * W).sum())
        _, H, G, energy = self.reference
        P = weight.double()
        change = float(((P @ H) * P).sum()) - 2 * float((P * G).sum()) + energy
        return max(change, 0.0), energy

    def refit(self, mask: torch.Tensor, **options) -> torch.Tensor:
        """Optimal weights on the support ``mask``; see :func:`solvers.refit.refit`."""
        from .refit import refit

        return refit(self, mask, **options)

    def __repr__(self) -> str:
        h = ("I" if self.identity else f"diag({self.shape[1]})" if self.diagonal
             else f"{self.shape[1]}x{self.shape[1]}")
        return (
            f"LayerProblem(W={self.shape[0]}x{self.shape[1]}, H={h}, lam={self.lam:.3g}, "
            f"budget={self.budget!r})"
        )
