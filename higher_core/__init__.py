"""higher-core: gradients through unrolled optimization loops, with optimizers as plugins.

A drop-in successor to ``higher``: ``import higher_core as higher``.

Example:
    >>> import torch, higher_core as higher
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(8, 4), torch.randn(8, 1)
    >>> with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
    ...     _ = diffopt.step(torch.nn.functional.mse_loss(fmodel(x), y))
    ...     torch.nn.functional.mse_loss(fmodel(x), y).backward()
"""

from __future__ import annotations

from higher_core import errors, functional, optim, patch, utils
from higher_core._context import innerloop_ctx
from higher_core._plugin_hooks import plugin_hooks
from higher_core._plugins import hookimpl, plugin_host, register_plugin, unregister_plugin
from higher_core._registry import register_optim, unregister_optim
from higher_core.optim import create_diff_optim, get_diff_optim
from higher_core.patch import monkeypatch

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_diff_optim",
    "errors",
    "functional",
    "get_diff_optim",
    "hookimpl",
    "innerloop_ctx",
    "monkeypatch",
    "optim",
    "patch",
    "plugin_hooks",
    "plugin_host",
    "register_optim",
    "register_plugin",
    "unregister_optim",
    "unregister_plugin",
    "utils",
]
