"""Differentiable optimizers: the public API of the old ``higher.optim``.

The update rules themselves live in plugins (``pip install higher-adam``, ...).
The documented class names, ``DifferentiableAdam`` and the rest, resolve through
the registry: available when the plugin providing them is installed, and a
:class:`~higher_core.errors.MissingOptimizerPluginError` naming the
``pip install`` otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from higher_core import _overrides
from higher_core._optimizer import ComplexParameters, DifferentiableOptimizer, GradCallback, Scope, State
from higher_core.compat import optimizer_available, torch_optimizer
from higher_core._registry import lookup, register_optim, resolve_for
from higher_core.errors import MissingOptimizerPluginError
from higher_core.patch import PatchedModule

if TYPE_CHECKING:  # the batched layer imports this module, never the other way
    from higher_core.batched import BatchedDifferentiableOptimizer

__all__ = [
    "ComplexParameters",
    "DifferentiableOptimizer",
    "GradCallback",
    "Scope",
    "State",
    "apply_trainable_opt_params",  # noqa: F822 (higher_core._trainable, on first use)
    "create_diff_optim",  # noqa: F822 (higher_core._trainable, on first use)
    "get_diff_optim",
    "get_trainable_opt_params",  # noqa: F822 (higher_core._trainable, on first use)
    "register_optim",
]

#: documented class names, resolved lazily through the plugins
_DOCUMENTED = (
    "ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon",
    "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
)


#: higher's helpers for building and learning optimizers, loaded on first use (higher_core._trainable)
_TRAINABLE = ("create_diff_optim", "get_trainable_opt_params", "apply_trainable_opt_params")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # the import system's probes (``__path__``): never a helper or an optimizer
        raise AttributeError(f"module 'higher_core.optim' has no attribute {name!r}")
    if name in _TRAINABLE:
        from higher_core import _trainable

        return getattr(_trainable, name)
    from higher_core._higher_compat import DEPRECATED_HELPERS, NEW_HOOKS  # the old-higher adapter, on demand

    if name in DEPRECATED_HELPERS:  # higher.optim's private helpers, for old ``_update`` subclasses
        warnings.warn(
            f"higher_core.optim.{name} is deprecated (a helper of higher's _update(grouped_grads) "
            f"subclasses); implement {NEW_HOOKS} with higher_core.functional (add_scaled, addcdiv, safe_sqrt)",
            DeprecationWarning, stacklevel=2,
        )
        return DEPRECATED_HELPERS[name]
    base = name[len("Differentiable"):] if name.startswith("Differentiable") else None
    if base in _DOCUMENTED and not optimizer_available(base):
        torch_optimizer(base)  # raises: "torch.optim.Muon needs torch >= 2.9; you have 2.6.0"
    torch_type = getattr(torch.optim, base, None) if base else None
    if not (isinstance(torch_type, type) and issubclass(torch_type, torch.optim.Optimizer)):
        raise AttributeError(f"module 'higher_core.optim' has no attribute {name!r}")
    found = lookup(torch_type)
    if found is None or found[1] is not torch_type:
        from higher_core._refusals import missing_optimizer_message  # the error path, loaded when taken

        raise MissingOptimizerPluginError(missing_optimizer_message(torch_type))
    return found[0]


def __dir__() -> list[str]:
    return sorted(set(__all__) | {f"Differentiable{n}" for n in _DOCUMENTED if hasattr(torch.optim, n)})


def get_diff_optim(
    opt: torch.optim.Optimizer,
    reference_params: Iterable[torch.Tensor],
    fmodel: PatchedModule | None = None,
    device: torch.device | str | None = None,
    override: _overrides.Override | None = None,
    track_higher_grads: bool | None = None,
    tasks: int | None = None,
    **kwargs: Any,
) -> DifferentiableOptimizer | BatchedDifferentiableOptimizer:
    """A differentiable version of an existing optimizer, continuing from its state.

    Args:
        opt: an optimizer of a type some installed plugin supports.
        reference_params: the parameters of the module ``opt`` tracks
            (``module.parameters()``), in the order the fast weights follow.
        fmodel: a patched version of that module; then ``step`` needs no ``params``.
        device: the device to cast the optimizer state to.
        override: hyperparameters as ``{name: [value]}`` (all groups) or one value per
            group; tensors receive gradients.
        track_higher_grads: if False, steps are taken without a graph (test mode);
            by default the fmodel's flag, or True without an fmodel.
        tasks: if given, a :class:`higher_core.batched.BatchedDifferentiableOptimizer`
            stepping ``tasks`` tasks' stacked fast weights (``[T, *shape]``) at once.
        **kwargs: passed on to the differentiable optimizer (e.g. ``grad_callback``).

    Raises:
        UnsupportedOptimizerError: no installed plugin supports ``type(opt)``; the
            message names the ``pip install`` that provides it.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> diffopt = higher_core.optim.get_diff_optim(opt, model.parameters())
        >>> fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
        >>> loss = (torch.ones(1, 2) @ fast[0].t() + fast[1]).pow(2).sum()
        >>> fast = diffopt.step(loss, params=fast)
    """
    diff_type = resolve_for(opt)
    if tasks is not None:  # batched tasks: higher_core/batched
        from higher_core.batched import BatchedDifferentiableOptimizer
        return BatchedDifferentiableOptimizer(
            diff_type, opt, reference_params, tasks, fmodel=fmodel, device=device, override=override,
            track_higher_grads=track_higher_grads, **kwargs)
    return diff_type(opt, reference_params, fmodel=fmodel, device=device, override=override,
                     track_higher_grads=track_higher_grads, **kwargs)
