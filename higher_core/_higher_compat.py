"""The old ``higher`` optimizer layout, for code written against it (deprecated paths only).

* :class:`GroupedState`: ``diffopt.state`` as ``higher`` kept it, one mapping per
  param group keyed by the parameter's position within the group, over the
  one store :attr:`DifferentiableOptimizer.param_state` (keyed by global position).
* :func:`legacy_update_groups`: runs a subclass's ``_update(grouped_grads)`` the
  way ``higher`` called it (``param_groups[i]['params']`` holding the current fast
  tensors, new ones written back into them).
* ``higher.optim``'s private helpers that such subclasses imported (``_add``,
  ``_addcdiv``, ``_addcmul``, ``_get_mask_closure``, ``_maybe_mask`` and the type
  aliases), served by :mod:`higher_core.optim` with a ``DeprecationWarning``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

if TYPE_CHECKING:
    from higher_core._optimizer import DifferentiableOptimizer

__all__ = ["DEPRECATED_HELPERS", "NEW_HOOKS", "GroupedState", "legacy_update_groups"]

NEW_HOOKS = "update_one(group, param, grad, state) -> (param, state)"

_PARAM_STATE_HINT = (
    "diffopt.state is the old higher layout, a list with one mapping per param group "
    "(state[group][position in group]); the state keyed by global position is diffopt.param_state"
)


class _GroupState(MutableMapping):
    """One param group's per-parameter state, keyed by position within the group (``higher``'s ``defaultdict(dict)``)."""

    def __init__(self, store: dict[int, dict[str, Any]], positions: Sequence[int]) -> None:
        self._store, self._positions = store, positions

    def _global(self, key: Any) -> int:
        if not isinstance(key, int) or isinstance(key, bool) or not -len(self._positions) <= key < len(self._positions):
            raise KeyError(f"{key!r}: keys are positions within the param group, 0..{len(self._positions) - 1}. "
                           f"{_PARAM_STATE_HINT}")
        return self._positions[key]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        return self._store.setdefault(self._global(key), {})  # created on first use, as higher's defaultdict

    def __setitem__(self, key: Any, value: dict[str, Any]) -> None:
        self._store[self._global(key)] = value

    def __delitem__(self, key: Any) -> None:
        del self._store[self._global(key)]

    def __iter__(self) -> Iterator[int]:
        return (k for k, i in enumerate(self._positions) if i in self._store)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class GroupedState(Sequence):
    """``higher``'s ``diffopt.state``: ``state[group][position in group]`` is a parameter's state dict.

    A view: reading and writing go to :attr:`DifferentiableOptimizer.param_state`.
    Iterating gives one mapping per param group, so ``chain(*(g.values() for g
    in diffopt.state))`` lists every parameter's state as it did in ``higher``.
    """

    def __init__(self, store: dict[int, dict[str, Any]], positions: Sequence[Sequence[int]]) -> None:
        self._groups = [_GroupState(store, p) for p in positions]

    def __getitem__(self, index: Any) -> Any:
        return self._groups[index]

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, int):
            raise TypeError(f"`{value} in diffopt.state`: {_PARAM_STATE_HINT}")
        return any(value is g for g in self._groups)

    def __getattr__(self, name: str) -> Any:
        if name in ("get", "keys", "values", "items", "update", "pop", "setdefault"):
            raise AttributeError(f"diffopt.state has no {name}(): {_PARAM_STATE_HINT}")
        raise AttributeError(name)

    def __repr__(self) -> str:
        return repr(list(self._groups))


def legacy_update_groups(opt: DifferentiableOptimizer, groups: list[dict[str, Any]], params: list[torch.Tensor],
                         grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """One step through a ``higher``-style ``_update(grouped_grads)``: fast tensors in, new ones read back."""
    grouped_grads = [[grads[i] for i in group["params"]] for group in groups]
    legacy = [{**group, "params": [params[i] for i in group["params"]]} for group in groups]
    saved = opt.param_groups
    opt.param_groups = legacy
    try:
        opt._update(grouped_grads)  # type: ignore[attr-defined]
    finally:
        opt.param_groups = saved
    new_params = list(params)
    for group, written in zip(groups, legacy):
        for i, p in zip(group["params"], written["params"]):
            new_params[i] = p
    return new_params


# -- higher.optim's private helpers (deprecated) ------------------------------------------------------
_GroupedGradsType = list[list[torch.Tensor]]
_StateType = list[dict[int, Any]]
_GradClosureType = Callable[[torch.Tensor], torch.Tensor]
_OverrideType = dict[str, list[Any]]
_GradCallbackType = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def _add(tensor: torch.Tensor, a1: Union[float, torch.Tensor], a2: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor + a1`` or, with ``a2``, ``tensor + a1 * a2`` (the old ``Tensor.add(value, other)``), out of place."""
    return tensor + a1 if a2 is None else tensor + a1 * a2


def _addcdiv(tensor: torch.Tensor, a1: Any, a2: torch.Tensor, a3: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor + a1 / a2`` or, with ``a3``, ``tensor + a1 * (a2 / a3)``, out of place."""
    return tensor + a1 / a2 if a3 is None else tensor + a1 * (a2 / a3)


def _addcmul(tensor: torch.Tensor, a1: Any, a2: torch.Tensor, a3: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor + a1 * a2`` or, with ``a3``, ``tensor + a1 * (a2 * a3)``, out of place."""
    return tensor + a1 * a2 if a3 is None else tensor + a1 * (a2 * a3)


def _get_mask_closure(mask: torch.Tensor) -> _GradClosureType:
    """A gradient hook that zeroes the gradient where ``mask`` is true, and masks its own gradient likewise."""
    def closure(grad: torch.Tensor) -> torch.Tensor:
        grad = torch.where(mask, torch.zeros_like(grad), grad)
        if grad.requires_grad:
            grad.register_hook(_get_mask_closure(mask))
        return grad
    return closure


def _maybe_mask(tensor: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the gradient flowing into ``tensor`` where ``mask`` is true (if it requires grad)."""
    if tensor.requires_grad:
        tensor.register_hook(_get_mask_closure(mask))


DEPRECATED_HELPERS: dict[str, Any] = {
    name: globals()[name] for name in (
        "_add", "_addcdiv", "_addcmul", "_get_mask_closure", "_maybe_mask", "_GroupedGradsType",
        "_StateType", "_GradClosureType", "_OverrideType", "_GradCallbackType",
    )
}
