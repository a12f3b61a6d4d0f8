"""The batched patched module: fast weights with a leading task dimension, one forward for all tasks.

``BatchedPatchedModule(module, tasks=T)`` holds every fast weight as a tensor of
shape ``[T, *param.shape]`` and every buffer as ``[T, *buffer.shape]``. A call
``fmodel(x)`` maps over the leading task dimension of every tensor argument, as
``torch.func.vmap`` over ``torch.func.functional_call`` does: task ``t`` runs the
module's own ``forward`` on ``x[t]`` with the fast weights ``w[t]`` and buffers
``b[t]`` (so a BatchNorm keeps one set of running statistics per task).

An MLP (``nn.Sequential`` of ``nn.Linear`` and element-wise activations, no
hook, no buffer) skips ``vmap``: it runs as batched matrix products, the ops
``vmap``'s rule for ``F.linear`` emits, without its per-call set-up
(:mod:`higher_core.batched._matmul`; about 8x less per call for the demo's MLP).
A module ``vmap`` cannot batch (an operator without a batching rule, a
data-dependent branch: an error ``vmap`` raises saying so) falls back, transparently and
for good, to a Python loop over the tasks with the same numbers (any other error,
out of memory included, propagates and changes no mode); :attr:`BatchedPatchedModule.batching` then
says ``"loop"`` and ``fallback_reason`` why. A module
with convolutions on the CPU starts in the loop, which measures faster there
than ``vmap``'s grouped convolutions (``benchmarks/batched_tasks.py``); the
optimizer step stays batched either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from higher_core._boundary import check_bool
from higher_core.batched._errors import BatchingError
from higher_core.compat import CONV_TYPES, pytree
from higher_core._module_copy import named_tensors, shallow_tree_copy
from higher_core.patch import first_weights, recorded, weights_at
from higher_core.batched import _matmul

__all__ = ["BatchedPatchedModule"]


_CONV_ON_CPU = ("convolutions on the CPU: vmap's grouped convolutions are slower than a loop over the "
                "tasks there (set fmodel.batching = 'vmap' to use it anyway)")


def _check_tasks(tasks: Any) -> int:
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks must be a positive int (the number of tasks in the meta-batch), got {tasks!r}")
    return tasks


#: what torch.func.vmap's messages say when it cannot batch an operator (its C++ and Python errors:
#: "vmap: It looks like you're attempting to use a Tensor in some data-dependent control flow",
#: "vmap: ... .item()", "Batching rule not implemented for aten::...", "vmap: We do not support
#: batching operators that can output dynamic shape", an autograd.Function without a vmap rule)
_VMAP_UNSUPPORTED = re.compile(r"\bvmap\b|batching rule", re.IGNORECASE)
_OUT_OF_MEMORY = re.compile(r"out of memory|not enough memory|can't allocate memory", re.IGNORECASE)


def _refuse_aliased_modules(module: nn.Module) -> None:
    """Refuse a module with parameters reachable by two paths (T5's ``shared`` is ``encoder.embed_tokens``).

    ``torch.func.functional_call``, which every batched forward goes through,
    leaves a swapped tensor behind in such a module, so later calls would read a
    stale weight: wrong meta-gradients, silently (torch 2.13). The unbatched
    patched module is exact there.
    """
    paths: dict[int, list[str]] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        if next(sub.parameters(recurse=False), None) is not None:
            paths.setdefault(id(sub), []).append(name or "(the module itself)")
    aliased = next((names for names in paths.values() if len(names) > 1), None)
    if aliased is not None:
        raise BatchingError(
            f"tasks= cannot run this module: its submodule {aliased[0]!r} is also {aliased[1]!r} (one module "
            "reachable by two paths), which torch.func.functional_call, under every batched forward, restores "
            "wrongly (stale weights, wrong meta-gradients); run one inner loop per task (no tasks=)"
        )


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or bool(_OUT_OF_MEMORY.search(str(exc)))


def unsupported_by_vmap(exc: BaseException) -> bool:
    """Whether ``exc`` is ``vmap`` saying it cannot batch an operator (then the loop runs the tasks).

    Never an out-of-memory error, nor any other error (a bug in the module,
    a wrong input): those propagate, and the execution mode stays as it is.
    """
    return (isinstance(exc, (RuntimeError, NotImplementedError)) and not _out_of_memory(exc)
            and bool(_VMAP_UNSUPPORTED.search(str(exc))))


def _stack_outputs(outputs: list[Any]) -> Any:
    """Per-task outputs (one pytree each) stacked along a new leading task dimension."""
    leaves, spec = pytree.tree_flatten(outputs[0])
    columns = [pytree.tree_flatten(out)[0] for out in outputs]
    stacked = [torch.stack([c[k] for c in columns]) if isinstance(leaf, torch.Tensor) else leaf
               for k, leaf in enumerate(leaves)]
    return pytree.tree_unflatten(stacked, spec)


class BatchedPatchedModule(nn.Module):
    """A stateless stand-in for ``module`` running ``tasks`` independent copies at once.

    Fast weights have shape ``[T, *param.shape]`` (in the order of
    ``module.parameters()``); buffers ``[T, *buffer.shape]``, each task's starting
    as a copy of the module's. ``fmodel(*args, params=None, **kwargs)`` requires
    every tensor argument to have a leading dimension of size ``T`` and returns
    outputs with one too. Dropout and other random operations draw independently
    per task (``vmap(randomness="different")``).

    Args:
        module: the module to batch.
        tasks: the number of tasks ``T``.
        device: a device to put the fast weights and buffers on.
        copy_initial_weights: if True, the initial fast weights are ``T`` detached
            copies of the parameters; if False, the parameters expanded over the
            tasks (``p.expand(T, *p.shape)``), so the meta-gradient on ``p`` is the
            sum of the per-task meta-gradients (MAML).
        track_higher_grads: if False, only the latest fast weights are kept (test mode).

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> fnet = higher_core.monkeypatch(net, tasks=5, copy_initial_weights=False)
        >>> fnet.fast_params[0].shape
        torch.Size([5, 8, 1])
        >>> fnet(torch.randn(5, 10, 1)).shape
        torch.Size([5, 10, 1])
    """

    def __init__(self, module: nn.Module, tasks: int, device: torch.device | str | None = None,
                 copy_initial_weights: bool = True, track_higher_grads: bool = True) -> None:
        super().__init__()
        tasks = _check_tasks(tasks)
        _refuse_aliased_modules(module)
        named, named_buffers = named_tensors(module)
        params = [p for _, p in named]
        d = self.__dict__
        d["tasks"] = tasks
        # A private copy, so that train()/eval() do not reach the original (plain attributes shared,
        # as for the unbatched patched module); every call swaps our tensors in.
        d["_module"] = copied = shallow_tree_copy(module)
        d["_param_names"] = [name for name, _ in named]
        d["_reference_params"] = params  # the module's own, in order: what the optimizer is matched against
        d["_param_shapes"] = [tuple(p.shape) for p in params]
        d["_buffer_names"] = [name for name, _ in named_buffers]
        d["_task_buffers"] = [b.detach().to(device=device, copy=True).unsqueeze(0).repeat(tasks, *[1] * b.dim())
                              for _, b in named_buffers]
        d["_fast_params"] = None
        d["fallback_reason"] = None
        # an MLP runs as batched matrix products, without vmap's per-call set-up (see _matmul)
        d["_plan"] = _matmul.plan(copied, {id(p): i for i, p in enumerate(params)})
        on_cpu = (torch.device(device) if device is not None else
                  params[0].device if params else torch.device("cpu")).type == "cpu"
        if d["_plan"] is None and on_cpu and any(isinstance(m, CONV_TYPES) for m in copied.modules()):
            d["fallback_reason"] = _CONV_ON_CPU
        d["training"] = module.training
        self.track_higher_grads = track_higher_grads
        initial = []
        for p in params:
            p = p if device is None else p.to(device)
            if copy_initial_weights:
                initial.append(p.detach().unsqueeze(0).repeat(tasks, *[1] * p.dim()).requires_grad_(p.requires_grad))
            else:
                initial.append(p.expand(tasks, *p.shape))
        self.update_params(initial)

    # -- the forward -----------------------------------------------------------------------
    def forward(self, *args: Any, params: Iterable[torch.Tensor] | None = None, **kwargs: Any) -> Any:
        if params is not None:
            params = list(params)
            latest = self._fast_params[-1] if self._fast_params else []
            if len(latest) != len(params) or any(a is not b for a, b in zip(latest, params)):
                self.update_params(params)
        leaves = args if not kwargs and all(isinstance(a, torch.Tensor) for a in args) else \
            pytree.tree_leaves((args, kwargs))
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and (leaf.dim() == 0 or leaf.shape[0] != self.tasks):
                raise ValueError(
                    f"a batched module with tasks={self.tasks} maps over the leading dimension of every tensor "
                    f"argument, but got one of shape {tuple(leaf.shape)}; stack the tasks' inputs along "
                    f"dim 0 (shape [{self.tasks}, ...])"
                )
        fast = self.fast_params
        if self.fallback_reason is None:
            if self._plan is not None and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                try:
                    out = _matmul.run(self._plan, fast, args[0])
                except RuntimeError as exc:  # (a wrong input shape): vmap raises the module's own error
                    if _out_of_memory(exc):
                        raise
                    out = None
                if out is not None:
                    return out
            buffers = [b.clone() for b in self._task_buffers]
            try:
                out = self._vmapped(fast, buffers, args, kwargs)
                self.__dict__["_task_buffers"] = buffers
                return out
            except (RuntimeError, NotImplementedError) as exc:
                if _out_of_memory(exc):
                    raise
                if not unsupported_by_vmap(exc):  # the module's own error: as its forward words it, mode kept
                    self._looped(fast, [b.clone() for b in self._task_buffers], args, kwargs)
                    raise  # (the loop ran: the error was vmap's alone)
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        buffers = [b.clone() for b in self._task_buffers]
        out = self._looped(fast, buffers, args, kwargs)  # raises the module's own error if it fails too
        self.__dict__["_task_buffers"] = buffers
        if self.fallback_reason is None:
            self.__dict__["fallback_reason"] = reason
        return out

    def _call(self, params: list[torch.Tensor], buffers: list[torch.Tensor], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        tensors = dict(zip(self._param_names, params))
        tensors.update(zip(self._buffer_names, buffers))
        return functional_call(self._module, tensors, args, kwargs, strict=False)

    def _vmapped(self, params: list[torch.Tensor], buffers: list[torch.Tensor], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        dims = pytree.tree_map(lambda v: 0 if isinstance(v, torch.Tensor) else None, (args, kwargs))
        return vmap(lambda p, b, a, k: self._call(p, b, a, k), in_dims=(0, 0, *dims),
                    randomness="different")(params, buffers, args, kwargs)

    def _looped(self, params: list[torch.Tensor], buffers: list[torch.Tensor], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        # unbind, not t-indexing: one backward op per tensor instead of T full-size scatters
        weights = [p.unbind(0) for p in params]
        leaves, spec = pytree.tree_flatten((args, kwargs))
        columns = [leaf.unbind(0) if isinstance(leaf, torch.Tensor) else None for leaf in leaves]
        outputs = []
        for t in range(self.tasks):
            task_args, task_kwargs = pytree.tree_unflatten(
                [leaf if column is None else column[t] for leaf, column in zip(leaves, columns)], spec)
            outputs.append(self._call([w[t] for w in weights], [b[t] for b in buffers], task_args, task_kwargs))
        return _stack_outputs(outputs)

    @property
    def batching(self) -> str:
        """How the forward runs the tasks, ``"vmap"`` (one batched pass) or ``"loop"``.

        In ``"vmap"`` mode an MLP runs as batched matrix products rather than
        under ``torch.func.vmap`` (same ops, same numbers; see the module
        docstring). It turns to ``"loop"`` by itself after a forward that ``vmap`` could not
        batch (``fallback_reason`` says why); set it to ``"loop"`` where the
        loop is faster (convolutions on the CPU, see README "Batched tasks"),
        or back to ``"vmap"``. The numbers are the same either way.
        """
        return "vmap" if self.fallback_reason is None else "loop"

    @batching.setter
    def batching(self, value: str) -> None:
        if value not in ("vmap", "loop"):
            raise ValueError(f"batching must be 'vmap' or 'loop', got {value!r}")
        self.__dict__["fallback_reason"] = None if value == "vmap" else "batching='loop' was set"

    # -- fast weights ------------------------------------------------------------------------
    def update_params(self, params: Iterable[torch.Tensor]) -> None:
        """Make ``params`` (each ``[T, *param.shape]``) the latest fast weights."""
        params = list(params)
        if len(params) != len(self._param_shapes):
            raise ValueError(
                f"expected {len(self._param_shapes)} fast weights (one per parameter of the original module, "
                f"in the order of module.parameters()), got {len(params)}"
            )
        for i, (p, shape) in enumerate(zip(params, self._param_shapes)):
            if not isinstance(p, torch.Tensor) or tuple(p.shape) != (self.tasks, *shape):
                got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(
                    f"fast weight {i} ({self._param_names[i]!r}) must have shape {(self.tasks, *shape)} "
                    f"(tasks first), got {got}"
                )
        self.__dict__["_fast_params"] = recorded(self._fast_params, params, self._track_higher_grads)

    @property
    def fast_params(self) -> list[torch.Tensor]:
        """The latest fast weights, each ``[T, *param.shape]``."""
        return self._fast_params[-1]

    @fast_params.setter
    def fast_params(self, value: Iterable[torch.Tensor]) -> None:
        self.update_params(value)

    @property
    def init_fast_params(self) -> list[torch.Tensor]:
        """The first fast weights (the initial weights of the unroll)."""
        return first_weights(self._fast_params, self._track_higher_grads)

    def parameters(self, recurse: bool = True, time: int | None = None) -> Iterator[torch.Tensor]:  # type: ignore[override]
        """The fast weights after step ``time`` (the latest when ``None``), each ``[T, *param.shape]``."""
        return iter(self.fast_params if time is None else weights_at(self._fast_params, time,
                                                                     self._track_higher_grads))

    def named_parameters(self, prefix: str = "", recurse: bool = True,  # type: ignore[override]
                         remove_duplicate: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The latest fast weights under the original module's parameter names."""
        for name, tensor in zip(self._param_names, self.fast_params):
            yield (f"{prefix}.{name}" if prefix else name), tensor

    def named_buffers(self, prefix: str = "", recurse: bool = True,  # type: ignore[override]
                      remove_duplicate: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """The per-task buffers, each ``[T, *buffer.shape]``, under the original module's names."""
        for name, tensor in zip(self._buffer_names, self._task_buffers):
            yield (f"{prefix}.{name}" if prefix else name), tensor

    def detach_(self) -> BatchedPatchedModule:
        """Cut the graph here: the latest fast weights become detached leaves; the history restarts."""
        latest = [p.detach().requires_grad_(p.requires_grad) for p in self.fast_params]
        self.__dict__["_fast_params"] = None
        self.update_params(latest)
        return self

    @torch.no_grad()
    def copy_to(self, module: nn.Module, task: int | None = None, buffers: bool = False) -> None:
        """Copy task ``task``'s latest fast weights (and buffers, with ``buffers=True``) into ``module``.

        There are ``T`` adapted models, so the task must be named.
        """
        if task is None or isinstance(task, bool) or not isinstance(task, int) or not -self.tasks <= task < self.tasks:
            raise ValueError(
                f"copy_to: a batched module holds {self.tasks} adapted models; pass task= (an int in "
                f"[0, {self.tasks})) to say which one to copy, got {task!r}"
            )
        targets = list(module.parameters())
        if [tuple(p.shape) for p in targets] != self._param_shapes:
            raise ValueError("copy_to: the module's parameters do not match the batched module's fast weights "
                             "(pass the module that was patched)")
        for target, fast in zip(targets, self.fast_params):
            target.copy_(fast[task])
        if buffers:
            for name, buf in zip(self._buffer_names, self._task_buffers):
                module.get_buffer(name).copy_(buf[task])

    @property
    def track_higher_grads(self) -> bool:
        """Whether the history of fast weights (the unrolled graph) is kept; False is test mode."""
        return self.__dict__["_track_higher_grads"]

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        self.__dict__["_track_higher_grads"] = check_bool(value, "BatchedPatchedModule.track_higher_grads")

    def train(self, mode: bool = True) -> BatchedPatchedModule:
        self.__dict__["training"] = mode
        self._module.train(mode)
        return self

    def extra_repr(self) -> str:
        return f"batched {type(self._module).__name__}, tasks={self.tasks}, {len(self._param_shapes)} fast weights"
