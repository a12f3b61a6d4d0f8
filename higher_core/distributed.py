"""Meta-training across processes with ``torch.distributed``: each process runs its share of the tasks.

Data parallelism over tasks: every process (one per GPU, launched by ``torchrun``)
unrolls the inner loops of its own tasks, and the meta-gradients are averaged
across processes before the meta-optimizer steps, so that every process holds the
same meta-parameters afterwards. Two ways, one for each style of user code:

* the model wrapped in ``torch.nn.parallel.DistributedDataParallel`` (DDP) and
  passed to :func:`higher_core.innerloop_ctx` as it is: the patched module runs
  ``ddp.module``, and :func:`backward` makes the meta-backward go through DDP's
  reducer, which averages the gradients of the model's parameters;
* no wrapper: call ``loss.backward()`` as usual, then :func:`all_reduce_grads`
  on the meta-parameters (a bucketed all-reduce).

Learned hyperparameters (a learned lr passed through ``override=``) are not DDP
parameters: average their gradients with :func:`all_reduce_grads` in both ways.

Each process scales its meta-loss by ``1 / (its number of tasks)``; with equal
shares the average over processes is then the mean over the global meta-batch.

A collective waits at most :data:`TIMEOUT` for the other processes
(:func:`init_process_group` sets it); a process that raises ends the job with its
error under ``torchrun`` or ``torch.multiprocessing.spawn``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from higher_core._boundary import unwrap_ddp
from higher_core.compat import ddp_forward_halves

__all__ = ["TIMEOUT", "all_reduce_grads", "backward", "init_process_group", "unwrap"]

#: how long a collective waits for the other processes before it raises
TIMEOUT = datetime.timedelta(seconds=120)

_OPS = ("mean", "sum")


def init_process_group(backend: str | None = None, timeout: datetime.timedelta = TIMEOUT,
                       **kwargs: Any) -> None:
    """``torch.distributed.init_process_group`` with a finite timeout and a backend for the device.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` from the
    environment (``torchrun`` sets them) unless ``kwargs`` say otherwise.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout: how long a collective waits for the others before raising (default
            :data:`TIMEOUT`, 120 s), so a process whose peer died does not hang.
        **kwargs: passed on (``rank``, ``world_size``, ``init_method``, ``store``).
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timeout, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wraps (``model`` itself for any other module).

    :func:`higher_core.patch.monkeypatch` patches this module: copying the DDP
    wrapper would build a second reducer.

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Linear(2, 1)
        >>> higher_core.distributed.unwrap(net) is net
        True
    """
    return unwrap_ddp(model)


def _arm_reducer(ddp: DistributedDataParallel, loss: torch.Tensor) -> torch.Tensor:
    """Do what ``DistributedDataParallel.forward`` does around its module, with ``loss`` as the output.

    PRIVATE torch API (torch 2.x): ``DDP.forward`` is ``_pre_forward``, the module,
    ``_post_forward``; the latter calls ``reducer.prepare_for_backward``, without
    which DDP's gradient hooks do nothing. The patched module never calls
    ``DDP.forward``, so we call the two halves around the meta-loss, as if DDP's
    module were the identity. ``tests/test_distributed.py`` checks that these
    methods exist and that gradients are averaged through them.
    """
    pre, post = ddp_forward_halves(ddp)  # higher_core.compat: the private names, read in one place
    pre()
    return post(loss)


def backward(loss: torch.Tensor, model: nn.Module) -> None:
    """``loss.backward()``, with DDP's all-reduce of the gradients when ``model`` is a DDP wrapper.

    Call it once per meta-iteration, for the last backward: gradients that earlier
    plain ``loss.backward()`` calls accumulated (one per task) are averaged with it,
    as under ``ddp.no_sync()``. For any other module it is ``loss.backward()``.

    Args:
        loss: this process's (last) meta-loss; scale it by ``1 / (this process's tasks)``.
        model: the ``DistributedDataParallel`` passed to ``innerloop_ctx``.

    Example:
        >>> import torch, higher_core
        >>> net = torch.nn.Linear(2, 1)
        >>> higher_core.distributed.backward(net(torch.ones(1, 2)).sum(), net)
        >>> net.bias.grad
        tensor([1.])
    """
    if isinstance(model, DistributedDataParallel):
        if not torch.is_grad_enabled():
            raise RuntimeError("higher_core.distributed.backward needs grad mode (it is off: torch.no_grad?)")
        loss = _arm_reducer(model, loss)
    loss.backward()


def _buckets(tensors: list[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive runs of ``tensors`` of one dtype and device, each under ``limit`` bytes (or one tensor)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = buckets[-1][-1] if buckets else None
        if last is None or (last.dtype, last.device) != (t.dtype, t.device) or size + nbytes > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return buckets


def all_reduce_grads(params: Iterable[torch.Tensor], group: Any = None, op: str = "mean",
                     bucket_size_mb: float = 25) -> None:
    """Average (or sum) the ``.grad`` of ``params`` across the processes of ``group``, in place.

    The gradients are flattened into buckets of at most ``bucket_size_mb`` (one
    dtype and device each), each bucket is one ``torch.distributed.all_reduce``,
    and the result is divided by the group's size for ``op="mean"``.

    Every process must pass the same parameters in the same order. Parameters
    that do not require grad are skipped. A ``.grad`` that is ``None`` on a
    process counts as zeros there (so every process runs the same collectives);
    afterwards every parameter that requires grad has a ``.grad``.

    Args:
        params: the meta-parameters and learned hyperparameters, e.g.
            ``[*model.parameters(), lr]``.
        group: the process group (default: the world).
        op: ``"mean"`` (data parallelism) or ``"sum"``.
        bucket_size_mb: the largest bucket, in MiB (as DDP's ``bucket_cap_mb``).

    Example:
        >>> import torch, torch.distributed as dist, higher_core
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> lr = torch.tensor(0.1, requires_grad=True)
        >>> (3 * lr).backward()
        >>> higher_core.distributed.all_reduce_grads([lr])
        >>> lr.grad
        tensor(3.)
        >>> dist.destroy_process_group()
    """
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    if not bucket_size_mb > 0:
        raise ValueError(f"bucket_size_mb must be positive, got {bucket_size_mb!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "all_reduce_grads needs a process group: call higher_core.distributed.init_process_group() "
            "(under torchrun) first"
        )
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            raise ValueError("all_reduce_grads supports dense gradients only; got a sparse .grad")
    world = dist.get_world_size(group)
    for bucket in _buckets([p.grad for p in params], int(bucket_size_mb * 2**20)):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if op == "mean":
            flat /= world
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(part.view_as(g))
