r"""Evolution-strategies estimates of a meta-gradient: antithetic ES and persistent ES (PES).

Both need only evaluations of the meta-loss, never its gradient: they work for
long horizons (no graph is kept) and for losses that are not differentiable
(accuracies, losses after a non-differentiable step). Both are unbiased
estimates of the gradient of a Gaussian-smoothed meta-loss, which tends to the
exact meta-gradient as ``sigma`` goes to 0; each antithetic pair gives one
independent estimate, so the spread of the pairs gives the standard error.

- :func:`es_gradient`: antithetic ES over the whole horizon (Salimans et al. 2017).
- :class:`PersistentES`: PES (Vicol, Metz and Sohl-Dickstein 2021): the horizon
  unrolled in windows, each pair of particles keeping its own inner state, with
  fresh noise every window and each particle's noise accumulated, so that the
  sum of the window estimates is an unbiased estimate of the meta-gradient over
  the full horizon. ``persistent=False`` resets the accumulation every window
  (truncated ES): cheaper in variance, but biased like truncated backprop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ESEstimate", "PersistentES", "es_gradient"]

@dataclass(frozen=True)
class ESEstimate:
    """A gradient estimate from antithetic pairs: one flat estimate per pair, and their mean.

    Attributes:
        samples: ``(pairs, d)``: each pair's estimate of the flattened gradient.
        shapes: the shapes of the parameters, to unflatten.
    """

    samples: torch.Tensor
    shapes: tuple[torch.Size, ...]

    @property
    def flat(self) -> torch.Tensor:
        """The mean of the pairs' estimates, as one flat vector."""
        return self.samples.mean(0)

    @property
    def stderr(self) -> torch.Tensor:
        """The standard error of :attr:`flat`, per coordinate: the pairs' standard deviation over sqrt(pairs)."""
        return self.samples.std(0) / self.samples.shape[0] ** 0.5

    @property
    def gradient(self) -> list[torch.Tensor]:
        """The estimate, one tensor per parameter."""
        return [chunk.reshape(shape) for chunk, shape in
                zip(self.flat.split([s.numel() for s in self.shapes]), self.shapes)]

    def __add__(self, other: ESEstimate) -> ESEstimate:
        """The estimate of a sum of losses (windows of one horizon): the same pairs' estimates added."""
        if self.samples.shape != other.samples.shape:
            raise ValueError(f"ESEstimate: cannot add estimates of shapes {tuple(self.samples.shape)} and "
                             f"{tuple(other.samples.shape)} (add the windows of one PersistentES)")
        return ESEstimate(self.samples + other.samples, self.shapes)

    def compare(self, exact: Sequence[torch.Tensor]) -> dict[str, float]:
        r"""How far the estimate is from ``exact``, and how far it is expected to be.

        Returns:
            ``cosine`` (cosine similarity), ``relative_error``
            (:math:`\|\hat g - g\| / \|g\|`), ``expected_relative_error`` (from the
            standard errors: :math:`\sqrt{\sum_k \mathrm{se}_k^2} / \|g\|`) and
            ``mean_z2``, the mean of the squared z-scores
            :math:`((\hat g_k - g_k) / \mathrm{se}_k)^2` (about 1 for an unbiased
            estimate, larger with a bias).
        """
        g = torch.cat([e.detach().reshape(-1) for e in exact]).to(self.samples.dtype)
        est, se = self.flat, self.stderr
        norm = g.norm()
        z = (est - g) / se.clamp_min(torch.finfo(se.dtype).tiny)
        return {"cosine": float(torch.nn.functional.cosine_similarity(est, g, dim=0)),
                "relative_error": float((est - g).norm() / norm),
                "expected_relative_error": float(se.norm() / norm),
                "mean_z2": float(z.pow(2).mean())}


def _check(sigma: float, pairs: int) -> None:
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
        raise ValueError(f"sigma (the perturbation scale) must be a positive number, got {sigma!r}")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"pairs must be an int >= 2 (the standard error needs two), got {pairs!r}")


def _flat(params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Size, ...]]:
    if not params:
        raise ValueError("no parameters to perturb: pass the meta-parameters (list(lstm.parameters()))")
    return torch.cat([p.detach().reshape(-1) for p in params]), tuple(p.shape for p in params)


def _unflat(flat: torch.Tensor, shapes: tuple[torch.Size, ...]) -> list[torch.Tensor]:
    return [c.reshape(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes)]


def _scalar(value: Any, where: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where} must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    return float(value)


def es_gradient(loss: Callable[[list[torch.Tensor]], Any], params: Sequence[torch.Tensor], sigma: float,
                pairs: int, generator: torch.Generator | None = None) -> ESEstimate:
    r"""Antithetic ES: the gradient of ``loss`` at ``params`` from ``2 * pairs`` evaluations.

    .. math::
        \hat g = \frac{1}{N} \sum_{i=1}^{N} \epsilon_i\,
            \frac{L(\phi + \sigma\epsilon_i) - L(\phi - \sigma\epsilon_i)}{2\sigma},
        \qquad \epsilon_i \sim \mathcal N(0, I)

    an unbiased estimate of :math:`\nabla_\phi\, \mathbb E_\epsilon[L(\phi + \sigma\epsilon)]`
    (for a smooth :math:`L`, the exact gradient up to :math:`O(\sigma^2)`).
    ``loss`` is evaluated under ``torch.no_grad()``; it may be anything that
    returns a number (an accuracy, a loss after a non-differentiable step).

    Args:
        loss: maps the perturbed parameters (a list shaped like ``params``) to a scalar.
        params: the parameters :math:`\phi` (not modified).
        sigma: the perturbation scale.
        pairs: the number :math:`N` of antithetic pairs.
        generator: for the noise (seed it for a reproducible estimate).

    Example:
        >>> phi = [torch.tensor([1.0, 2.0], dtype=torch.float64)]
        >>> est = es_gradient(lambda p: (p[0] ** 2).sum(), phi, sigma=1e-3, pairs=2000,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> est.compare([2 * phi[0]])["relative_error"] < 0.1
        True
    """
    _check(sigma, pairs)
    phi, shapes = _flat(params)
    samples = []
    with torch.no_grad():
        for _ in range(pairs):
            eps = torch.randn(phi.shape, generator=generator, dtype=phi.dtype).to(phi.device)
            up = _scalar(loss(_unflat(phi + sigma * eps, shapes)), "loss")
            down = _scalar(loss(_unflat(phi - sigma * eps, shapes)), "loss")
            samples.append(eps * ((up - down) / (2 * sigma)))
    return ESEstimate(torch.stack(samples), shapes)


class PersistentES:
    r"""Persistent evolution strategies: an unbiased meta-gradient over a horizon unrolled in windows.

    ``pairs`` antithetic pairs of particles each keep their own inner state
    (``init_state()`` at the start, then whatever ``window`` returns). At window
    :math:`k`, pair :math:`i` draws :math:`\epsilon_i^k \sim \mathcal N(0, I)`, the
    positive particle runs the window with :math:`\phi + \sigma\epsilon_i^k` and
    the negative one with :math:`\phi - \sigma\epsilon_i^k`, and

    .. math::
        \xi_i \mathrel{+}= \epsilon_i^k, \qquad
        \hat g^k = \frac{1}{N} \sum_i \xi_i\,\frac{L^k(+) - L^k(-)}{2\sigma}

    The accumulated :math:`\xi_i` credits window :math:`k`'s loss to the
    perturbations of every earlier window that shaped the particle's state, so
    :math:`\sum_k \hat g^k` is an unbiased estimate of the gradient of the
    smoothed total loss :math:`\mathbb E[\sum_k L^k]` over the whole horizon
    (Vicol et al. 2021, with antithetic pairs), where truncated estimates
    (``persistent=False``: :math:`\xi_i = \epsilon_i^k`) miss the effect of a
    window's parameters on later windows. ``window`` runs under ``torch.no_grad()``.

    Args:
        params: the meta-parameters :math:`\phi` (read at every :meth:`step`, so
            they may change between windows, as in online meta-training).
        init_state: a fresh inner state (say, initial weights and optimizer state).
        window: ``(perturbed params, state) -> (loss of the window, new state)``.
        sigma: the perturbation scale.
        pairs: the number :math:`N` of antithetic pairs.
        generator: for the noise.
        persistent: accumulate the noise over windows (PES); ``False`` gives truncated ES.

    Example:
        >>> phi = [torch.tensor([0.5], dtype=torch.float64)]
        >>> def window(p, x):          # x <- x * p twice; the window's loss is the final x
        ...     x = x * p[0] * p[0]
        ...     return x.sum(), x
        >>> pes = PersistentES(phi, lambda: torch.ones(1, dtype=torch.float64), window, sigma=1e-3,
        ...                    pairs=500, generator=torch.Generator().manual_seed(0))
        >>> total = pes.step() + pes.step()   # L = p^2 + p^4, dL/dp = 2p + 4p^3 = 1.5
        >>> total.compare([torch.tensor([1.5])])["relative_error"] < 0.1
        True
    """

    def __init__(self, params: Sequence[torch.Tensor], init_state: Callable[[], Any],
                 window: Callable[[list[torch.Tensor], Any], tuple[Any, Any]], sigma: float, pairs: int,
                 generator: torch.Generator | None = None, persistent: bool = True) -> None:
        _check(sigma, pairs)
        _flat(params)
        self.params, self.init_state, self.window = list(params), init_state, window
        self.sigma, self.pairs, self.generator, self.persistent = float(sigma), pairs, generator, persistent
        self.reset()

    def reset(self) -> None:
        """Start every particle again from ``init_state()`` with no accumulated noise (a new horizon)."""
        self.states: list[list[Any]] = [[self.init_state(), self.init_state()] for _ in range(self.pairs)]
        self.accumulated: torch.Tensor | None = None

    def step(self) -> ESEstimate:
        """Advance every particle by one window; the estimate of this window's loss's gradient."""
        phi, shapes = _flat(self.params)
        sigma = self.sigma
        eps = torch.randn((self.pairs, phi.numel()), generator=self.generator, dtype=phi.dtype).to(phi.device)
        if self.persistent and self.accumulated is not None:
            self.accumulated = self.accumulated + eps
        else:
            self.accumulated = eps
        samples = []
        with torch.no_grad():
            for i, (up_state, down_state) in enumerate(self.states):
                up, up_state = self.window(_unflat(phi + sigma * eps[i], shapes), up_state)
                down, down_state = self.window(_unflat(phi - sigma * eps[i], shapes), down_state)
                self.states[i] = [up_state, down_state]
                difference = _scalar(up, "window") - _scalar(down, "window")
                samples.append(self.accumulated[i] * (difference / (2 * sigma)))
        return ESEstimate(torch.stack(samples), shapes)
