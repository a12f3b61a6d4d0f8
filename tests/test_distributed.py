"""Meta-training on 2 processes (gloo, CPU) equals one process running the same global meta-batch."""

from __future__ import annotations

import datetime
import gc
import inspect
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.functional import mse_loss
from torch.nn.parallel import DistributedDataParallel

import higher_core
from higher_core import distributed as hdist
from higher_core.distributed import _buckets

WORLD = 2
TASKS = 4  # the global meta-batch
ITERATIONS = 3
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args, deadline: float = 240) -> None:
    """Run ``fn(rank, port, *args)`` on WORLD processes; raises the first failing rank's error.

    Spawned, not forked: a fork of a pytest worker that an earlier test left with threads (an OpenMP
    pool, inductor's compile workers) deadlocked a child on torch 2.4 (about 2 s more per call). A
    child that does not finish within ``deadline`` seconds is killed and the test fails, instead of
    hanging the suite.
    """
    kept = list(sys.path)
    sys.path.insert(0, str(ROOT))  # a spawned child imports fn's module (tests.test_distributed) from here
    try:
        context = mp.start_processes(fn, args=(_free_port(), *args), nprocs=WORLD, join=False,
                                     start_method="spawn")
    finally:
        sys.path[:] = kept
    end = time.monotonic() + deadline
    while not context.join(timeout=1):  # raises the first failing rank's error
        if time.monotonic() > end:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {WORLD} processes did not finish within {deadline} s; killed")


def _init(rank: int, port: int, seconds: float = 60) -> None:
    torch.set_num_threads(1)
    hdist.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds),
                             init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)


def _meta_batch(iteration: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(100 + iteration)
    x = torch.randn(TASKS, 10, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True) + torch.randn(TASKS, 1, 1, generator=g, dtype=torch.float64))
    return x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _meta_train(model: nn.Module, mine: range, mode: str) -> dict[str, list[torch.Tensor]]:
    """MAML with a learned inner lr; ``mode``: "one" (one process), "helper" or "ddp"."""
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    meta_opt = torch.optim.Adam([*model.parameters(), lr], lr=0.01)
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    local_lr_grads, lr_grads = [], []
    for iteration in range(ITERATIONS):
        xs, ys, xq, yq = (t[mine.start:mine.stop] for t in _meta_batch(iteration))
        meta_opt.zero_grad()
        for i in range(len(mine)):
            with higher_core.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                           override={"lr": [lr]}) as (fnet, diffopt):
                for _ in range(2):
                    diffopt.step(mse_loss(fnet(xs[i]), ys[i]))
                loss = mse_loss(fnet(xq[i]), yq[i]) / len(mine)
            if i + 1 < len(mine) or mode != "ddp":
                loss.backward()
            else:
                hdist.backward(loss, model)
        local_lr_grads.append(lr.grad.clone())
        if mode == "helper":
            hdist.all_reduce_grads([*model.parameters(), lr], bucket_size_mb=1e-4)  # several buckets
        elif mode == "ddp":
            hdist.all_reduce_grads([lr])  # not a DDP parameter
        lr_grads.append(lr.grad.clone())
        meta_opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "lr_grad": lr_grads,
            "local_lr_grad": local_lr_grads}


def _worker(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    mine = range(rank * TASKS // WORLD, (rank + 1) * TASKS // WORLD)
    ddp = DistributedDataParallel(_net())
    assert isinstance(higher_core.patch.monkeypatch(ddp)[0], nn.Linear), "monkeypatch must patch ddp.module"
    results = {"helper": _meta_train(_net(), mine, "helper"), "ddp": _meta_train(ddp, mine, "ddp"),
               "ddp_find_unused": _meta_train(DistributedDataParallel(_net(), find_unused_parameters=True),
                                              mine, "ddp")}
    torch.save(results, f"{out}/rank{rank}.pt")
    # DDP's reducer first, then the group: freed the other way, the reducer holds the group's last
    # reference and destroys it with the GIL held (torch < 2.8 does not release it there) while a gloo
    # thread waits for the GIL to free a finished all-reduce's tensor, and the process never exits
    # (hung CI on torch 2.4.1; pytorch/pytorch#154976)
    del ddp
    gc.collect()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    _spawn(_worker, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process_result():
    return _meta_train(_net(), range(TASKS), "one")


@pytest.mark.parametrize("mode", ["helper", "ddp", "ddp_find_unused"])
def test_two_processes_equal_one(mode, two_process_results, one_process_result):
    for rank, result in enumerate(two_process_results):
        got = result[mode]
        for p, q in zip(got["params"], one_process_result["params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=f"rank {rank} ({mode})")
        for g, h in zip(got["lr_grad"], one_process_result["lr_grad"], strict=True):
            torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12, msg=f"learned lr, rank {rank} ({mode})")
        # not vacuous: before averaging, each rank's lr gradient is that of its half of the tasks
        assert not torch.allclose(got["local_lr_grad"][0], one_process_result["lr_grad"][0], rtol=1e-3)
    # and the meta-training moved the weights
    assert not torch.allclose(one_process_result["params"][0], _net()[0].weight.detach())


def _failing_worker(rank: int, port: int) -> None:
    _init(rank, port)
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    # rank 1's error first: otherwise this rank's own ("connection closed by peer", once rank 1 has
    # exited) can reach the launcher first (seen once on torch 2.12)
    time.sleep(1.0)
    hdist.all_reduce_grads([p])  # waits for rank 1, which never comes


def test_failing_rank_ends_the_job_with_its_error():
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails on purpose"):
        _spawn(_failing_worker)
    assert time.monotonic() - start < 50


def _stalled_worker(rank: int, port: int) -> None:
    _init(rank, port, seconds=2)
    if rank == 1:
        time.sleep(60)  # alive but absent: rank 0's collective must time out
    p = torch.zeros(3, requires_grad=True)
    hdist.all_reduce_grads([p])


def test_collective_times_out_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match=r"(?i)timed? ?out"):
        _spawn(_stalled_worker)
    assert time.monotonic() - start < 40


def test_demo_checksum_torchrun_equals_one_process():
    common = ["examples/maml_sine.py", "--iterations", "3", "--seed", "0", "--dtype", "float64",
              "--test-tasks", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    checksums = []
    for command in ([*torchrun, *common, "--distributed"], [sys.executable, *common]):
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        last = run.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"checksum -?\d+\.\d+(e-?\d+)?", last), last
        checksums.append(float(last.split()[1]))
    assert checksums[0] == pytest.approx(checksums[1], rel=1e-9)


# -- in this process --------------------------------------------------------------------


def test_ddp_private_api_is_there():
    """``_arm_reducer`` relies on DDP.forward = _pre_forward, module, _post_forward (torch 2.x)."""
    forward = inspect.getsource(DistributedDataParallel.forward)
    assert "_pre_forward" in forward and "_post_forward" in forward, "DDP.forward changed: update _arm_reducer"
    assert "prepare_for_backward" in inspect.getsource(DistributedDataParallel._post_forward)


def test_buckets_split_by_size_dtype_and_device():
    a, b, c = torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.float64)
    assert [len(x) for x in _buckets([a, b, c], limit=32)] == [2, 1]
    assert [len(x) for x in _buckets([a, b, c], limit=16)] == [1, 1, 1]
    assert [len(x) for x in _buckets([torch.zeros(100)], limit=16)] == [1]


@pytest.mark.parametrize("kwargs, message", [
    ({"op": "max"}, r"op must be one of \('mean', 'sum'\)"),
    ({"bucket_size_mb": 0}, "bucket_size_mb must be positive"),
    ({}, r"needs a process group: call higher_core.distributed.init_process_group\(\)"),
])
def test_all_reduce_grads_bad_input(kwargs, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        hdist.all_reduce_grads([torch.zeros(1, requires_grad=True)], **kwargs)
