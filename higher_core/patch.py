"""Stateless patching of any ``nn.Module``.

:func:`monkeypatch` returns a :class:`PatchedModule`: a stand-in for the
original module whose parameters are *fast weights*, plain tensors that the
inner loop replaces out of place. It is built the way
``torch.func.functional_call`` works: the patched copy's ``_parameters``
entries are swapped for the fast weights (one dict write per tensor, no Python
class created per submodule), so the module's own ``forward``, its hooks and
its children run unchanged. The original module's parameters and buffers are
never modified: the patched copy has its own buffers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["PatchedModule", "monkeypatch", "make_functional", "buffer_sync", "_MonkeyPatchBase"]

_Slot = tuple[dict, str]


def _structural_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares its parameters instead of copying them.

    Buffers and other state are copied. Non-leaf tensors cached as attributes
    (e.g. the ``weight`` the legacy ``weight_norm`` recomputes every forward)
    are copied detached, since autograd cannot deep-copy them.
    """
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for p in sub._parameters.values():
            if p is not None:
                memo[id(p)] = p
        for value in sub.__dict__.values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach()
    return copy.deepcopy(module, memo)


def _parameter_slots(copy_: nn.Module, params: list[torch.Tensor]) -> list[list[_Slot]]:
    """For each parameter, every ``(module._parameters, name)`` that holds it (tied weights share one)."""
    position = {id(p): i for i, p in enumerate(params)}
    slots: list[list[_Slot]] = [[] for _ in params]
    seen: set[tuple[int, str]] = set()
    for sub in copy_.modules():
        for name, p in sub._parameters.items():
            key = (id(sub._parameters), name)
            if p is None or key in seen:
                continue
            seen.add(key)
            slots[position[id(p)]].append((sub._parameters, name))
    return slots


class PatchedModule(nn.Module):
    """A stateless stand-in for a module, driven by fast weights.

    Calls take the extra keyword-only argument ``params``; without it, the latest
    fast weights are used. Child modules, buffers and attributes of the original
    are reachable as attributes (``fmodel.bn.running_mean`` is the patched copy's
    buffer).

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> fnet = higher_core.patch.monkeypatch(net)
        >>> out = fnet(torch.randn(2, 3))
        >>> out2 = fnet(torch.randn(2, 3), params=[p * 2 for p in fnet.fast_params])
    """

    def __init__(self, module: nn.Module, device: torch.device | str | None = None,
                 track_higher_grads: bool = True) -> None:
        super().__init__()
        patched = _structural_copy(module)
        reference = list(module.parameters())
        if device is not None:
            for sub in patched.modules():
                for name, buf in sub._buffers.items():
                    if buf is not None:
                        sub._buffers[name] = buf.to(device)
        d = self.__dict__
        d["_patched"] = patched
        d["_slots"] = _parameter_slots(patched, reference)
        d["_param_shapes"] = [tuple(p.shape) for p in reference]
        d["_fast_params"] = None
        d["_track_higher_grads"] = bool(track_higher_grads)
        d["_device"] = device
        # The patched module *is* the copy for attribute access: share its containers.
        d["_modules"] = patched._modules
        d["_parameters"] = patched._parameters
        d["_buffers"] = patched._buffers
        self.training = patched.training

    # -- the forward -----------------------------------------------------------------
    def forward(self, *args: Any, params: Iterable[torch.Tensor] | None = None, **kwargs: Any) -> Any:
        if params is not None:
            params = list(params)
            latest = self._fast_params[-1] if self._fast_params else None
            if latest is None or len(latest) != len(params) or any(a is not b for a, b in zip(latest, params)):
                self.update_params(params)
        elif self._fast_params is None:
            raise ValueError(
                "this patched module has no fast weights yet: call it with params=[...] or "
                "use higher_core.patch.monkeypatch(), which sets initial ones"
            )
        return self._patched(*args, **kwargs)

    # -- fast weights -------------------------------------------------------------------
    def update_params(self, params: Iterable[torch.Tensor]) -> None:
        """Make ``params`` the latest fast weights (appended to the history while tracking)."""
        params = list(params)
        if len(params) != len(self._slots):
            raise ValueError(
                f"expected {len(self._slots)} fast weights (one per parameter of the original "
                f"module, in the order of module.parameters()), got {len(params)}"
            )
        for tensor, slots in zip(params, self._slots):
            for container, name in slots:
                container[name] = tensor
        if self._fast_params is None or not self._track_higher_grads:
            self.__dict__["_fast_params"] = [params]
        else:
            self._fast_params.append(params)

    @property
    def fast_params(self) -> list[torch.Tensor] | None:
        """The latest fast weights, or ``None`` before any were set."""
        return None if self._fast_params is None else self._fast_params[-1]

    @fast_params.setter
    def fast_params(self, value: Iterable[torch.Tensor]) -> None:
        self.update_params(value)

    @property
    def init_fast_params(self) -> list[torch.Tensor] | None:
        """The first fast weights (the initial weights of the unroll)."""
        if self._fast_params is None:
            return None
        if not self._track_higher_grads:
            raise ValueError("init_fast_params is only kept while track_higher_grads is True")
        return self._fast_params[0]

    def parameters(self, recurse: bool = True, time: int | None = None) -> Iterator[torch.Tensor]:  # type: ignore[override]
        """The fast weights after step ``time`` (the latest when ``None``).

        The history is kept while higher-order gradients are tracked; in test
        mode (``track_higher_grads=False``) only the latest weights exist.
        """
        if self._fast_params is None:
            raise ValueError("this patched module has no fast weights yet")
        if time is None:
            return iter(self._fast_params[-1])
        try:
            return iter(self._fast_params[time])
        except IndexError:
            kept = len(self._fast_params)
            raise ValueError(
                f"no fast weights for time={time}: {kept} set(s) are kept"
                + ("" if self._track_higher_grads else " (track_higher_grads=False keeps only the latest)")
            ) from None

    def detach_(self) -> PatchedModule:
        """Cut the graph here: the latest fast weights become detached leaves (truncated backprop).

        The history is reset to these weights, so ``parameters(time=0)`` is the cut
        point. Frozen weights stay frozen. See also
        :meth:`higher_core.optim.DifferentiableOptimizer.truncate`, which does this
        and detaches the optimizer state too.

        Example:
            >>> import torch, higher_core
            >>> fnet = higher_core.patch.monkeypatch(torch.nn.Linear(2, 1))
            >>> fnet.update_params([2 * p for p in fnet.fast_params])
            >>> fnet.detach_().fast_params[0].is_leaf
            True
        """
        if self._fast_params is None:
            raise ValueError("this patched module has no fast weights yet")
        latest = [p.detach().requires_grad_(p.requires_grad) for p in self._fast_params[-1]]
        self.__dict__["_fast_params"] = None
        self.update_params(latest)
        return self

    @torch.no_grad()
    def copy_to(self, module: nn.Module, buffers: bool = False) -> None:
        """Copy the latest fast weights (and, with ``buffers=True``, the buffers) into ``module``.

        ``module`` is the original module (or one with the same structure); its
        parameters are overwritten in place, outside autograd, so an adapted model
        can be kept or trained on as usual.

        Example:
            >>> import torch, higher_core
            >>> net = torch.nn.Linear(2, 1)
            >>> fnet = higher_core.patch.monkeypatch(net)
            >>> fnet.update_params([torch.zeros_like(p) for p in net.parameters()])
            >>> fnet.copy_to(net)
            >>> float(net.weight.detach().abs().sum())
            0.0
        """
        if self._fast_params is None:
            raise ValueError("this patched module has no fast weights yet")
        targets = list(module.parameters())
        if [tuple(p.shape) for p in targets] != self._param_shapes:
            raise ValueError(
                "copy_to: the module's parameters do not match the patched module's fast weights "
                "(pass the module that was patched)"
            )
        for target, fast in zip(targets, self._fast_params[-1]):
            target.copy_(fast)
        if buffers:
            for name, buf in self._patched.named_buffers():
                module.get_buffer(name).copy_(buf)

    @property
    def track_higher_grads(self) -> bool:
        """Whether the history of fast weights (and so the unrolled graph) is kept."""
        return self._track_higher_grads

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"track_higher_grads must be a bool, got {type(value).__name__}")
        self.__dict__["_track_higher_grads"] = value

    # -- behaving like the original ------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            patched = self.__dict__.get("_patched")
            if patched is None:
                raise
            return getattr(patched, name)

    # Containers (Sequential, ModuleList, ModuleDict) index and iterate like the original.
    def __getitem__(self, index: Any) -> Any:
        return self._patched[index]

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._patched)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._patched)

    def __contains__(self, item: Any) -> bool:
        return item in self._patched

    def train(self, mode: bool = True) -> PatchedModule:
        super().train(mode)
        self._patched.training = mode
        return self

    def extra_repr(self) -> str:
        return f"patched {type(self._patched).__name__}, {len(self._slots)} fast weights"


_MonkeyPatchBase = PatchedModule
"""The old ``higher`` name of the patched-module type."""


def _initial_fast_weights(module: nn.Module, device: torch.device | str | None,
                          copy_initial_weights: bool) -> list[torch.Tensor]:
    weights = []
    for p in module.parameters():
        if copy_initial_weights:
            weights.append(p.detach().to(device=device, copy=True).requires_grad_(p.requires_grad))
        else:
            weights.append(p if device is None else p.to(device))
    return weights


def make_functional(module: nn.Module,
                    encapsulator: Callable[[PatchedModule, nn.Module], None] | None = None) -> PatchedModule:
    """A stateless version of ``module`` with no fast weights yet.

    Call it with ``params=[...]``. ``encapsulator(fmodule, module)``, if given,
    runs once on the result (``monkeypatch`` uses it to set initial weights).

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Linear(2, 2)
        >>> fnet = higher_core.patch.make_functional(net)
        >>> y = fnet(torch.ones(1, 2), params=[p.detach().clone() for p in net.parameters()])
    """
    fmodule = PatchedModule(module)
    if encapsulator is not None:
        encapsulator(fmodule, module)
    return fmodule


def monkeypatch(module: nn.Module, device: torch.device | str | None = None,
                copy_initial_weights: bool = True, track_higher_grads: bool = True) -> PatchedModule:
    """A monkey-patched stateless version of ``module``, with initial fast weights.

    Args:
        module: any ``nn.Module`` whose forward works with ``torch.func.functional_call``.
        device: a device to cast the fast weights and buffers to.
        copy_initial_weights: if True, the initial fast weights are detached copies
            of the module's parameters (not on the gradient tape); if False, they are
            the parameters themselves, so meta-gradients reach the module (MAML).
        track_higher_grads: if False, only the latest fast weights are kept and the
            unroll is not differentiable (test mode; memory stays flat).

    Returns:
        A :class:`PatchedModule`. Frozen parameters (``requires_grad=False``) stay
        frozen in its fast weights.

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Linear(3, 1)
        >>> fnet = higher_core.patch.monkeypatch(net, copy_initial_weights=False)
        >>> fnet.fast_params[0] is net.weight
        True
    """
    fmodule = PatchedModule(module, device=device, track_higher_grads=track_higher_grads)
    fmodule.update_params(_initial_fast_weights(module, device, copy_initial_weights))
    return fmodule


def buffer_sync(module: nn.Module, fmodule: PatchedModule, device: torch.device | str | None = None) -> None:
    """One-off copy of ``module``'s buffers into ``fmodule`` (cast to ``device`` if given)."""
    patched = fmodule._patched if isinstance(fmodule, PatchedModule) else fmodule
    for name, buf in module.named_buffers():
        owner_path, _, leaf = name.rpartition(".")
        owner = patched.get_submodule(owner_path) if owner_path else patched
        owner._buffers[leaf] = buf.detach().to(device=device, copy=True)
