"""Stateless patching of any ``nn.Module``.

:func:`monkeypatch` returns a :class:`PatchedModule`: a stand-in for the
original module whose parameters are *fast weights*, plain tensors that the
inner loop replaces out of place. It works on a shallow copy of the module
tree (:mod:`higher_core._module_copy`: plain attributes shared with the
original, buffers copied, parameters not) from whose ``_parameters`` the weights are moved into
the owning submodule's ``__dict__``: plain attributes, which is what
``torch.func.functional_call``, the RNN weight cache, parametrizations and the
legacy ``weight_norm`` all read through ``getattr``. The module's own
``forward``, its hooks and its children then run unchanged, a fast weight can be
assigned by attribute (``fmodel.fc.weight = t``), and no Python class is
created per submodule. Installing new fast weights is one dict write per
tensor. The original module is never modified.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from higher_core._attention import attention_kernel, select_in_forward
from higher_core._checkpointing import check_no_checkpointing, checkpointing_layers
from higher_core._boundary import check_bool, check_device, check_fast_weights, check_module, device_of, unwrap_ddp
from higher_core._module_copy import deep_tree_copy, shallow_tree_copy
from higher_core.compat import rnn_flat_weight_names

if TYPE_CHECKING:  # the batched layer imports this module, never the other way
    from higher_core.batched import BatchedPatchedModule

__all__ = ["PatchedModule", "_MonkeyPatchBase", "buffer_sync", "make_functional", "monkeypatch"]

# What every fast weight must be: the shape, dtype and device of its parameter.
Meta = tuple[torch.Size, torch.dtype, torch.device]
# Where one fast weight lives: (submodule.__dict__, submodule._parameters, attribute name).
_Slot = tuple[dict, dict, str]
_NO_CUDNN = "_higher_core_no_cudnn"  # set on the patched copy's RNN modules while tracking
_CUDNN_WAS_ON = "_higher_core_cudnn_was_on"


def _parameters_to_attributes(copy_: nn.Module, params: list[torch.Tensor]) -> list[list[str]]:
    """Move every parameter of ``copy_`` out of ``_parameters`` into its module's ``__dict__``.

    Returns, for each of ``params``, the qualified names that hold it (tied
    weights have several; the first is the name ``named_parameters`` gives).
    """
    position = {id(p): i for i, p in enumerate(params)}
    paths: list[list[str]] = [[] for _ in params]
    for prefix, sub in copy_.named_modules():
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            paths[position[id(p)]].append(f"{prefix}.{name}" if prefix else name)
            del sub._parameters[name]
            sub.__dict__[name] = p
    return paths


def _bind_slots(copy_: nn.Module, paths: list[list[str]]) -> list[list[_Slot]]:
    slots = []
    owners: dict[str, nn.Module] = {"": copy_}  # a weight and its bias share their module: look it up once
    for names in paths:
        owned = []
        for path in names:
            owner, _, name = path.rpartition(".")
            sub = owners.get(owner)
            if sub is None:
                sub = owners[owner] = copy_.get_submodule(owner)
            owned.append((sub.__dict__, sub._parameters, name))
        slots.append(owned)
    return slots


def _rnn_cudnn_off(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a patched RNN: turn cuDNN off on CUDA while higher-order grads are tracked.

    cuDNN's RNN backward is not differentiable, so a double backward through it fails.
    """
    state = module.__dict__
    if (state.get(_NO_CUDNN) and torch.is_grad_enabled() and torch.backends.cudnn.enabled
            and getattr(module, rnn_flat_weight_names(module)[0]).is_cuda):
        torch.backends.cudnn.enabled = False
        state[_CUDNN_WAS_ON] = True


def _rnn_cudnn_restore(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook (also run when the forward raises): undo :func:`_rnn_cudnn_off`."""
    if module.__dict__.pop(_CUDNN_WAS_ON, False):
        torch.backends.cudnn.enabled = True


def recorded(history: list[list[torch.Tensor]] | None, params: list[torch.Tensor],
             tracking: bool) -> list[list[torch.Tensor]]:
    """A fast-weight history with ``params`` appended: all steps while ``tracking``, else the latest only."""
    if history is None or not tracking:
        return [params]
    history.append(params)
    return history


def weights_at(history: list[list[torch.Tensor]], time: int, tracking: bool) -> list[torch.Tensor]:
    """The fast weights after step ``time`` of ``history`` (patched modules, batched or not)."""
    try:
        return history[time]
    except IndexError:
        raise ValueError(f"no fast weights for time={time}: {len(history)} set(s) are kept"
                         + ("" if tracking else " (track_higher_grads=False keeps only the latest)")) from None


def first_weights(history: list[list[torch.Tensor]], tracking: bool) -> list[torch.Tensor]:
    if not tracking:
        raise ValueError("init_fast_params is only kept while track_higher_grads is True")
    return history[0]


def _rebuild(cls: type[PatchedModule], *parts: Any) -> PatchedModule:
    """Unpickle a :class:`PatchedModule` (see ``PatchedModule.__reduce_ex__``)."""
    return cls._from_parts(*parts)


class PatchedModule(nn.Module):
    """A stateless stand-in for a module, driven by fast weights.

    Calls take the extra keyword-only argument ``params``; without it, the latest
    fast weights are used. Children, buffers, methods and attributes of the
    original are reachable as attributes of a private copy (``fmodel.bn.running_mean``
    is the copy's buffer; ``fmodel.layer1(x)`` runs with the current fast weights);
    hooks fire; ``train()``/``eval()`` switch the copy only.

    A fast weight can be assigned by attribute (``fmodel.fc.weight = t``): it takes
    effect at once and becomes the latest fast weight, appended to the history,
    the next time :attr:`fast_params` is read (as ``diffopt.step`` does). A weight
    tied between submodules is one fast weight: assigning it in one place re-ties
    it everywhere at the next call.

    ``copy.deepcopy`` and ``pickle`` give an independent patched module whose fast
    weights are detached copies of the latest ones (same ``requires_grad``; the
    history starts again from them), since autograd cannot copy a graph.

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> fnet = higher_core.patch.monkeypatch(net)
        >>> out = fnet(torch.randn(2, 3))
        >>> out2 = fnet(torch.randn(2, 3), params=[p * 2 for p in fnet.fast_params])
        >>> fnet[2].bias = torch.zeros(1)
        >>> fnet.fast_params[3].tolist()
        [0.0]
    """

    def __init__(self, module: nn.Module, device: torch.device | str | None = None,
                 track_higher_grads: bool = True, math_attention: bool = True) -> None:
        module = check_module(module, type(self).__name__, "module")
        device = check_device(device, type(self).__name__)
        super().__init__()
        module = unwrap_ddp(module)  # a DistributedDataParallel: patch the module it wraps
        again = isinstance(module, PatchedModule)
        if again:  # patched again: its latest fast weights are the parameters
            reference, patched, paths = module._copy_for_patching(device)
        else:
            reference = list(module.parameters())
            patched = shallow_tree_copy(module, device)
            paths = _parameters_to_attributes(patched, reference)
        meta = [(p.shape, p.dtype, device_of(p.device, device)) for p in reference]
        self._setup(patched, paths, meta, track_higher_grads, device, math_attention)
        for rnn in self.__dict__["_rnns"] if not again else ():  # (a patched module's copies have them)
            rnn.register_forward_pre_hook(_rnn_cudnn_off)
            rnn.register_forward_hook(_rnn_cudnn_restore, always_call=True)
        self.__dict__["_reference_params"] = reference  # the module's own, in order (no second walk)

    def _setup(self, patched: nn.Module, paths: list[list[str]], meta: list[Meta],
               track_higher_grads: bool, device: torch.device | None, math_attention: bool = True) -> None:
        d = self.__dict__
        d["_patched"] = patched
        d["_slot_paths"] = paths
        d["_names"] = [names[0] for names in paths]
        d["_slots"] = _bind_slots(patched, paths)
        d["_tied"] = [i for i, names in enumerate(paths) if len(names) > 1]
        d["_rnns"] = [sub for sub in patched.modules() if isinstance(sub, nn.RNNBase)]
        d["_checkpointing"] = checkpointing_layers(patched)  # (transformers' layers)
        d["_param_meta"] = meta
        d["_fast_params"] = None
        d["_initial"] = None
        d["_device"] = device
        # The patched module *is* the copy for attribute access: share its containers.
        d["_modules"] = patched._modules
        d["_parameters"] = patched._parameters
        d["_buffers"] = patched._buffers
        self.track_higher_grads = check_bool(track_higher_grads, f"{type(self).__name__}(track_higher_grads=...)")
        self.math_attention = check_bool(math_attention, f"{type(self).__name__}(math_attention=...)")

    def _copy_for_patching(self, device: torch.device | None) -> tuple[list[torch.Tensor], nn.Module, list[list[str]]]:
        """A copy of this module's tree for patching it again: the latest fast weights, the copy, their names.

        The fast weights are put back where ``nn.Module`` keeps parameters while the
        tree is copied (so that the copy owns its caches of them, as for a module),
        then moved into the copy's attributes under the same names.
        """
        if self._fast_params is None:
            raise ValueError(
                "monkeypatch(module=...) got a patched module with no fast weights yet (from make_functional); "
                "call it with params=[...] first, or patch the original module"
            )
        reference = self._sync()
        with self._fast_weights_as_parameters():
            patched = shallow_tree_copy(self._patched, device)
        paths = [list(names) for names in self._slot_paths]
        for names in paths:
            for path in names:
                owner, _, name = path.rpartition(".")
                sub = patched.get_submodule(owner)
                sub.__dict__[name] = sub._parameters.pop(name)
        return reference, patched, paths

    @contextlib.contextmanager
    def _fast_weights_as_parameters(self) -> Iterator[None]:
        """Put the fast weights back where ``nn.Module`` looks for parameters, for the ``with`` block only."""
        for slots in self._slots:
            for attrs, params, name in slots:
                params[name] = attrs.pop(name)
        try:
            yield
        finally:
            for slots in self._slots:
                for attrs, params, name in slots:
                    attrs[name] = params.pop(name)

    @classmethod
    def _from_parts(cls, patched: nn.Module, paths: list[list[str]], meta: list[Meta],
                    fast: list[torch.Tensor] | None, track_higher_grads: bool,
                    device: torch.device | None, math_attention: bool = True) -> PatchedModule:
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(patched, paths, meta, track_higher_grads, device, math_attention)
        if fast is not None:
            self.update_params(fast)
        return self

    # -- the forward -----------------------------------------------------------------
    def forward(self, *args: Any, params: Iterable[torch.Tensor] | None = None, **kwargs: Any) -> Any:
        if params is not None:
            params = check_fast_weights(params, self._param_meta, self._names, "fmodel(..., params=)")
            latest = self.fast_params
            if latest is None or any(a is not b for a, b in zip(latest, params)):
                self._install(params, detach_initial=False)  # a caller's weights stay as given (hyper-networks)
        elif self._fast_params is None:
            raise ValueError(
                "this patched module has no fast weights yet: call it with params=[...] or "
                "use higher_core.patch.monkeypatch(), which sets initial ones"
            )
        elif self._tied:
            self._retie()
        if self._checkpointing and self._track_higher_grads and torch.is_grad_enabled():
            check_no_checkpointing(self._checkpointing)
        with attention_kernel(self._track_higher_grads, self._math_attention):
            return self._patched(*args, **kwargs)

    # -- fast weights -------------------------------------------------------------------
    def update_params(self, params: Iterable[torch.Tensor]) -> None:
        """Make ``params`` the latest fast weights (appended to the history while tracking).

        Each must have the shape, dtype and device of its parameter. In test mode
        (``track_higher_grads=False``) an initial fast weight carried over unchanged
        is detached, as ``higher`` detached every weight it stepped, so that nothing
        after the first update reaches the original module.
        """
        self._install(check_fast_weights(params, self._param_meta, self._names, "update_params"))

    def _install(self, params: list[torch.Tensor], detach_initial: bool = True) -> None:
        """:meth:`update_params` after the checks; ``forward(params=)`` installs without detaching anything.

        Test mode detaches in the optimizer's step and in :meth:`update_params`,
        never what a caller passes to ``forward(params=)``: a hyper-network's
        weights must keep their graph.
        """
        initial = self._initial
        if (detach_initial and initial is not None and self._fast_params is not None
                and not self._track_higher_grads):
            params = [p.detach().requires_grad_(p.requires_grad) if p is q else p
                      for p, q in zip(params, initial)]
            self.__dict__["_initial"] = None
        for tensor, slots in zip(params, self._slots):
            for attrs, _, name in slots:
                attrs[name] = tensor
        self.__dict__["_fast_params"] = recorded(self._fast_params, params, self._track_higher_grads)

    def _read_slots(self, index: int, latest: torch.Tensor) -> torch.Tensor:
        """The tensor the slots of fast weight ``index`` hold now (``latest`` unless one was assigned)."""
        assigned = []
        for attrs, params, name in self._slots[index]:
            if name not in attrs and params.get(name) is not None:
                attrs[name] = params.pop(name)  # an nn.Parameter was assigned: registered by nn.Module
            value = attrs.get(name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"the fast weight {self._slot_paths[index][0]!r} is now {type(value).__name__}; "
                    "assign a tensor"
                )
            if value is not latest and all(value is not a for a in assigned):
                assigned.append(value)
        if len(assigned) > 1:
            raise ValueError(
                f"the tied fast weights {self._slot_paths[index]} were assigned different tensors; "
                "assign one of them"
            )
        return assigned[0] if assigned else latest

    def _retie(self) -> None:
        latest = self._fast_params[-1]
        for i in self._tied:
            value = self._read_slots(i, latest[i])
            for attrs, _, name in self._slots[i]:
                attrs[name] = value

    def _sync(self) -> list[torch.Tensor]:
        """The latest fast weights, after adopting any assigned by attribute."""
        latest = self._fast_params[-1]
        for tensor, slots in zip(latest, self._slots):
            for attrs, _, name in slots:
                if attrs.get(name) is not tensor:
                    current = [self._read_slots(i, t) for i, t in enumerate(latest)]
                    if any(a is not b for a, b in zip(current, latest)):
                        self.update_params(current)
                    return self._fast_params[-1]
        return latest

    @property
    def fast_params(self) -> list[torch.Tensor] | None:
        """The latest fast weights, or ``None`` before any were set."""
        return None if self._fast_params is None else self._sync()

    @fast_params.setter
    def fast_params(self, value: Iterable[torch.Tensor]) -> None:
        self.update_params(value)

    @property
    def init_fast_params(self) -> list[torch.Tensor] | None:
        """The first fast weights (the initial weights of the unroll)."""
        return None if self._fast_params is None else first_weights(self._fast_params, self._track_higher_grads)

    def parameters(self, recurse: bool = True, time: int | None = None) -> Iterator[torch.Tensor]:  # type: ignore[override]
        """The fast weights after step ``time`` (the latest when ``None``).

        The history is kept while higher-order gradients are tracked; in test
        mode (``track_higher_grads=False``) only the latest weights exist.
        """
        if self._fast_params is None:
            raise ValueError("this patched module has no fast weights yet")
        latest = self._sync()
        return iter(latest if time is None else weights_at(self._fast_params, time, self._track_higher_grads))

    def named_parameters(self, prefix: str = "", recurse: bool = True,  # type: ignore[override]
                         remove_duplicate: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The latest fast weights under the original module's parameter names.

        With ``remove_duplicate=False`` a tied weight is listed under each of its
        names (as ``torch.func.functional_call`` needs). Nothing is listed before
        any fast weights are set.

        Example:
            >>> import torch, higher_core
            >>> fnet = higher_core.patch.monkeypatch(torch.nn.Linear(2, 1))
            >>> [name for name, _ in fnet.named_parameters()]
            ['weight', 'bias']
        """
        latest = self.fast_params
        if latest is None:
            return
        for tensor, names in zip(latest, self._slot_paths):
            for name in names[:1] if remove_duplicate else names:
                yield (f"{prefix}.{name}" if prefix else name), tensor

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The original module's ``state_dict``, with the latest fast weights as its parameters.

        Example:
            >>> import torch, higher_core
            >>> fnet = higher_core.patch.monkeypatch(torch.nn.BatchNorm1d(2))
            >>> list(fnet.state_dict())
            ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
        """
        latest = self.fast_params
        if latest is None:
            return self._patched.state_dict(*args, **kwargs)
        with self._fast_weights_as_parameters():
            return self._patched.state_dict(*args, **kwargs)

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
        latest = [p.detach().requires_grad_(p.requires_grad) for p in self.fast_params]
        self.__dict__["_fast_params"] = None
        self.__dict__["_initial"] = None
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
        module = check_module(module, "copy_to", "module")
        buffers = check_bool(buffers, "copy_to(buffers=...)")
        if self._fast_params is None:
            raise ValueError("this patched module has no fast weights yet")
        targets = list(module.named_parameters())
        sources = list(self._patched.named_buffers()) if buffers else []
        target_buffers = dict(module.named_buffers()) if buffers else {}
        from higher_core._write_back import check_copy_targets  # loaded with the first copy_to

        check_copy_targets(targets, self._names, self._param_meta, sources, target_buffers)
        for (_, target), fast in zip(targets, self.fast_params):
            target.copy_(fast)
        for name, buf in sources:
            target_buffers[name].copy_(buf)

    @property
    def training(self) -> bool:  # type: ignore[override]
        """Training mode, the private copy's own flag (one source of truth), as ``nn.Module.training``.

        Example:
            >>> import torch, higher_core
            >>> fnet = higher_core.patch.monkeypatch(torch.nn.Dropout(0.5))
            >>> fnet.training = False
            >>> fnet(torch.ones(3)).tolist()
            [1.0, 1.0, 1.0]
        """
        patched = self.__dict__.get("_patched")
        return True if patched is None else patched.training

    @training.setter
    def training(self, value: bool) -> None:
        patched = self.__dict__.get("_patched")
        if patched is not None:  # (nn.Module.__init__ sets it before there is a copy)
            patched.training = check_bool(value, "fmodel.training")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the ``.grad`` of fast weights that are leaves (as ``nn.Module.zero_grad``).

        The initial fast weights are never the original module's parameters, so
        gradients accumulated there (meta-gradients over episodes) are left alone.

        Example:
            >>> import torch, higher_core
            >>> net = torch.nn.Linear(2, 1)
            >>> net.weight.grad = torch.ones_like(net.weight)
            >>> higher_core.patch.monkeypatch(net, copy_initial_weights=False).zero_grad()
            >>> net.weight.grad.tolist()
            [[1.0, 1.0]]
        """
        for p in self.fast_params or ():
            if (p.is_leaf or p.retains_grad) and p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @property
    def track_higher_grads(self) -> bool:
        """Whether the history of fast weights (and so the unrolled graph) is kept."""
        return self._track_higher_grads

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        value = check_bool(value, "fmodel.track_higher_grads")
        self.__dict__["_track_higher_grads"] = value
        for rnn in self._rnns:
            rnn.__dict__[_NO_CUDNN] = value

    @property
    def math_attention(self) -> bool:
        """Whether ``scaled_dot_product_attention`` runs torch's math kernel while higher-order grads are tracked.

        True by default: the fused kernels (flash, memory-efficient) have no double
        backward, so a meta-gradient through them fails. Only while
        :attr:`track_higher_grads` is True and grad mode is on; test mode and
        ``torch.no_grad()`` keep the fused kernels. Set it False to keep the
        kernel torch picks (first-order use, or a model without attention).

        Example:
            >>> import torch, higher_core
            >>> fnet = higher_core.patch.monkeypatch(torch.nn.MultiheadAttention(4, 2, batch_first=True))
            >>> fnet.math_attention
            True
        """
        return self._math_attention

    @math_attention.setter
    def math_attention(self, value: bool) -> None:
        self.__dict__["_math_attention"] = check_bool(value, "fmodel.math_attention")

    # -- copies --------------------------------------------------------------------------
    def __deepcopy__(self, memo: dict[int, Any]) -> PatchedModule:
        fast = None
        if self._fast_params is not None:
            fast = []
            for p in self.fast_params:
                if id(p) not in memo:
                    memo[id(p)] = p.detach().clone().requires_grad_(p.requires_grad)
                fast.append(memo[id(p)])
        patched = deep_tree_copy(self._patched, memo)
        return self._from_parts(patched, copy.deepcopy(self._slot_paths), list(self._param_meta),
                                fast, self._track_higher_grads, self._device, self._math_attention)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        clone = copy.deepcopy(self)
        return _rebuild, (type(self), clone._patched, clone._slot_paths, clone._param_meta,
                          clone.fast_params, clone._track_higher_grads, clone._device, clone._math_attention)

    # -- behaving like the original ------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        patched = self.__dict__.get("_patched")
        if patched is not None:
            try:
                return getattr(patched, name)
            except AttributeError:
                pass
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Our own state and properties here; everything else (fmodel.weight = t) on the copy.
        if name in self.__dict__ or hasattr(type(self), name) or "_patched" not in self.__dict__:
            super().__setattr__(name, value)
        else:
            setattr(self._patched, name, value)

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

    def extra_repr(self) -> str:
        return f"patched {type(self._patched).__name__}, {len(self._slots)} fast weights"


_MonkeyPatchBase = PatchedModule
"""The old ``higher`` name of the patched-module type."""


def _initial_fast_weights(params: list[torch.Tensor], device: torch.device | str | None,
                          copy_initial_weights: bool) -> list[torch.Tensor]:
    weights = []
    for p in params:
        if copy_initial_weights:
            weights.append(p.detach().to(device=device, copy=True).requires_grad_(p.requires_grad))
        else:  # a non-leaf alias (as higher's clone, without the copy): gradients reach p
            moved = p if device is None else p.to(device)
            weights.append(moved.view_as(moved) if moved is p else moved)
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
    module = check_module(module, "make_functional", "module")
    if encapsulator is not None and not callable(encapsulator):
        raise TypeError(f"make_functional(encapsulator=...) must be None or a callable "
                        f"(fmodule, module) -> None, got {type(encapsulator).__name__}")
    fmodule = PatchedModule(module)
    if encapsulator is not None:
        encapsulator(fmodule, module)
    return fmodule


def monkeypatch(module: nn.Module, device: torch.device | str | None = None,
                copy_initial_weights: bool = True, track_higher_grads: bool = True,
                tasks: int | None = None, math_attention: bool = True) -> PatchedModule | BatchedPatchedModule:
    """A monkey-patched stateless version of ``module``, with initial fast weights.

    Args:
        module: any ``nn.Module`` whose forward works with ``torch.func.functional_call``.
        device: a device to cast the fast weights and buffers to.
        copy_initial_weights: if True, the initial fast weights are detached copies
            of the module's parameters (not on the gradient tape); if False, they are
            non-leaf aliases of the parameters (``p.view_as(p)``), so meta-gradients
            reach the module (MAML) while ``fmodel.zero_grad()`` and the inner steps'
            gradients (taken w.r.t. the aliases) leave the module's own alone.
        track_higher_grads: if False, only the latest fast weights are kept and the
            unroll is not differentiable (test mode; memory stays flat).
        tasks: if given, a :class:`higher_core.batched.BatchedPatchedModule` for a
            meta-batch of ``tasks`` tasks (fast weights ``[T, *shape]``).
        math_attention: while higher-order gradients are tracked, run
            ``scaled_dot_product_attention`` with torch's math kernel, the one with a
            double backward (see :attr:`PatchedModule.math_attention`).

    Returns:
        A :class:`PatchedModule` (with ``tasks``, a
        :class:`~higher_core.batched.BatchedPatchedModule`). Frozen parameters (``requires_grad=False``) stay
        frozen in its fast weights.

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Linear(3, 1)
        >>> fnet = higher_core.patch.monkeypatch(net, copy_initial_weights=False)
        >>> fnet.fast_params[0] is net.weight, fnet.fast_params[0].is_leaf
        (False, False)
    """
    module = check_module(module, "monkeypatch", "module")
    device = check_device(device, "monkeypatch")
    copy_initial_weights = check_bool(copy_initial_weights, "monkeypatch(copy_initial_weights=...)")
    track_higher_grads = check_bool(track_higher_grads, "monkeypatch(track_higher_grads=...)")
    math_attention = check_bool(math_attention, "monkeypatch(math_attention=...)")
    if tasks is not None:  # batched tasks: higher_core/batched
        from higher_core.batched import BatchedPatchedModule
        batched = BatchedPatchedModule(module, tasks, device=device, copy_initial_weights=copy_initial_weights,
                                       track_higher_grads=track_higher_grads)
        select_in_forward(batched, math_attention)
        return batched
    fmodule = PatchedModule(module, device=device, track_higher_grads=track_higher_grads,
                            math_attention=math_attention)
    initial = _initial_fast_weights(fmodule._reference_params, device, copy_initial_weights)
    fmodule.update_params(initial)
    fmodule.__dict__["_initial"] = initial
    return fmodule


def buffer_sync(module: nn.Module, fmodule: PatchedModule, device: torch.device | str | None = None) -> None:
    """One-off copy of ``module``'s buffers into ``fmodule`` (cast to ``device`` if given)."""
    module = check_module(module, "buffer_sync", "module")
    fmodule = check_module(fmodule, "buffer_sync", "fmodule")
    patched = fmodule._patched if isinstance(fmodule, PatchedModule) else fmodule
    for name, buf in module.named_buffers():
        owner_path, _, leaf = name.rpartition(".")
        owner = patched.get_submodule(owner_path) if owner_path else patched
        owner._buffers[leaf] = buf.detach().to(device=device, copy=True)
