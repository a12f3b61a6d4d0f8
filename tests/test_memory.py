"""Inner loops do not leak: once the user drops them, the patched module and its graph are freed.

Run with the garbage collector disabled, so that anything kept alive only by a
reference cycle would show up as growth.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import higher_core
from higher_core.patch import PatchedModule


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The garbage collector off (and one intra-op thread: these tiny ops only contend for more)."""
    enabled, threads = gc.isenabled(), torch.get_num_threads()
    gc.collect()
    gc.disable()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if enabled:
            gc.enable()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live(kind: type) -> int:
    return sum(issubclass(type(obj), kind) for obj in gc.get_objects())


def _inner_loop(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> tuple[weakref.ref, ...]:
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(fmodel(x).pow(2).mean())
        fmodel(x).pow(2).mean().backward()
    return weakref.ref(fmodel), weakref.ref(diffopt), weakref.ref(fmodel.fast_params[0])


@pytest.mark.parametrize("opt_type", [torch.optim.SGD, torch.optim.Adam], ids=["sgd", "adam"])
def test_patched_module_and_graph_die_without_the_garbage_collector(no_gc, opt_type):
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    rnn = nn.Sequential(nn.Linear(3, 3), nn.Unflatten(0, (2, 3)), nn.LSTM(3, 4, batch_first=True, num_layers=2))
    x = torch.randn(6, 3)
    for net, head in ((model, lambda out: out), (rnn, lambda out: out[0])):
        wrapped = _Head(net, head)
        refs = _inner_loop(wrapped, opt_type(wrapped.parameters(), lr=0.1), x)
        assert all(ref() is None for ref in refs), "kept alive by a reference cycle"


class _Head(nn.Module):
    def __init__(self, body: nn.Module, head) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident set size from /proc")
def test_a_thousand_inner_loops_leave_memory_flat(no_gc):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64),
                          nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 16)
    for loop in range(1, 1001):
        refs = _inner_loop(model, opt, x)
        assert refs[0]() is None
        if loop == 100:
            rss, tensors, patched = _rss_bytes(), _live(torch.Tensor), _live(PatchedModule)
    growth = _rss_bytes() - rss
    print(f"\nRSS growth from inner loop 100 to 1000 (gc disabled): {growth / 2**20:.2f} MiB")
    assert _live(torch.Tensor) == tensors and _live(PatchedModule) == patched == 0
    # One leaked unroll of this model is about 0.3 MiB: 900 of them would be ~260 MiB.
    assert growth < 16 * 2**20
