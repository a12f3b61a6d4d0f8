"""Overridden hyperparameters checked by the reference optimizer's own constructor.

Loaded the first time an override is validated, not with the core: every plugin
gets ``torch.optim``'s validation of its values (a negative ``lr``, ``betas``
outside ``[0, 1)``) without writing it, and a value repeated at every step is
probed once.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["validate_with_reference"]


def _plain(value: Any, current: Any, extreme: str) -> Any:
    """A group value as the reference's constructor takes it; a per-element tensor as its ``extreme`` element."""
    if isinstance(value, tuple):
        return tuple(_plain(v, None, extreme) for v in value)
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() == 1:
            return value.item()
        if isinstance(current, tuple):  # a learned pair (betas as one 1-D tensor)
            return tuple(v.item() for v in value)
        return (value.amin() if extreme == "min" else value.amax()).item()
    return value


def _learned(value: Any) -> bool:
    """A tensor that requires grad (a hyperparameter being learned) or has no value (meta), or a tuple holding one."""
    if isinstance(value, tuple):
        return any(_learned(v) for v in value)
    return isinstance(value, torch.Tensor) and (value.requires_grad or value.device.type == "meta")


@functools.lru_cache(maxsize=64)
def _constructor_arguments(reference: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(reference.__init__).parameters) - {"self", "params"}
    except (TypeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=1024)
def _refusal(reference: type, kwargs: tuple[tuple[str, Any], ...]) -> str | None:
    """What ``reference([dummy], **kwargs)`` raises: a ValueError's message, ``"?"`` for another error."""
    dummy = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference([dummy], **dict(kwargs))
    except ValueError as error:
        return str(error)
    except Exception:  # noqa: BLE001 - a constructor that cannot be probed this way
        return "?"
    return None


def validate_with_reference(reference: type, groups: Sequence[Mapping[str, Any]],
                            base_groups: Sequence[Mapping[str, Any]], keys: Iterable[str],
                            optimizer_name: str) -> None:
    """Refuse overridden values the reference optimizer's own constructor refuses.

    Builds ``reference`` on a dummy parameter with each group's values (tensors
    read as numbers) for the constructor arguments that are group keys, so that
    every plugin gets ``torch.optim``'s validation (negative ``lr``, ``betas``
    outside ``[0, 1)``) without writing it. Values that require grad (learned
    hyperparameters, and the finite-difference probes of their gradients) are
    not checked; a tensor of one value per element is probed with its smallest
    and its largest element: the reference sees the group's own value there. A constructor
    that cannot be probed this way (it needs more than a parameter list, or
    refuses the un-overridden ``base_groups`` too) is not used. Verdicts are
    cached per type and values, so an override repeated at every step is
    probed once.
    """
    keys = set(keys)
    accepted = _constructor_arguments(reference)
    if not keys or not keys <= accepted:
        return

    def arguments(group: Mapping[str, Any], base: Mapping[str, Any], extreme: str) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((k, _plain(base[k] if _learned(v) else v, base[k], extreme))
                            for k, v in group.items() if k in accepted))

    for index, (group, base) in enumerate(zip(groups, base_groups)):
        try:  # a per-element value is probed with its smallest and its largest element
            probes = {arguments(group, base, extreme) for extreme in ("min", "max")}
            refusal = next((r for r in map(functools.partial(_refusal, reference), sorted(probes, key=repr))
                            if r is not None and r != "?"), None)
        except TypeError:  # an unhashable value: not probed
            return
        if refusal is None or _refusal(reference, arguments(base, base, "min")) is not None:
            continue
        raise ValueError(
            f"override of {', '.join(sorted(keys))} for param group {index}: {optimizer_name} refuses "
            f"these values: {refusal}"
        )
