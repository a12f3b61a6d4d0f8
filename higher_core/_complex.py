"""Stepping complex parameters on their real views, as ``torch.optim``'s element-wise optimizers do."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["on_real_views", "step_complex"]

Update = Callable[..., "tuple[list[torch.Tensor], list[dict[str, Any]]]"]


def _real(value: Any) -> Any:
    return torch.view_as_real(value) if isinstance(value, torch.Tensor) and value.is_complex() else value


def on_real_views(update: Update, group: Mapping[str, Any], params: list[torch.Tensor],
                  grads: list[torch.Tensor], states: list[dict[str, Any]]
                  ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``update`` applied to the ``(..., 2)`` real views of complex parameters, gradients and state.

    ``torch.optim`` steps a complex parameter as its real view; the operations it
    applies before taking the view (``maximize``, weight decay) are element-wise
    and linear, so applying them to the view gives the same numbers. State that
    was complex, and state first made in this step shaped like a complex
    parameter's view, is returned complex.
    """
    updated, new_states = update(
        group, [_real(p) for p in params], [_real(g) for g in grads],
        [{k: _real(v) for k, v in s.items()} for s in states],
    )
    restored_states = []
    for param, old, new in zip(params, states, new_states):
        complex_keys = {k for k, v in old.items() if isinstance(v, torch.Tensor) and v.is_complex()}
        if param.is_complex():
            real_shape = torch.view_as_real(param).shape
            complex_keys |= {k for k, v in new.items()
                             if k not in old and isinstance(v, torch.Tensor) and v.shape == real_shape}
        restored_states.append({k: torch.view_as_complex(v) if k in complex_keys else v for k, v in new.items()})
    restored = [torch.view_as_complex(u) if p.is_complex() else u for p, u in zip(params, updated)]
    return restored, restored_states


def step_complex(declared: str, update: Update, group: Mapping[str, Any], params: list[torch.Tensor],
                 grads: list[torch.Tensor], states: list[dict[str, Any]], rule: str,
                 optimizer_name: str) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``update`` on a group with complex parameters, as the rule's ``complex_parameters`` declares.

    ``"native"`` passes the complex tensors as they are, ``"real_view"`` their
    real views (:func:`on_real_views`); ``"refuse"`` raises the ``ValueError``
    that names the rule and the reference optimizer.
    """
    if declared == "native":
        return update(group, params, grads, states)
    if declared == "real_view":
        return on_real_views(update, group, params, grads, states)
    raise ValueError(
        f"{rule} does not support complex parameters (as {optimizer_name} does not; it declares "
        f"complex_parameters = {declared!r}); step real parameters, or use a rule that declares "
        "complex_parameters = 'real_view' or 'native'"
    )
