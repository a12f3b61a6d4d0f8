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

import importlib
from typing import Any

from higher_core import errors, functional, optim, patch
from higher_core._context import innerloop_ctx
from higher_core._plugin_hooks import plugin_hooks
from higher_core._registry import register_optim, unregister_optim
from higher_core.hookspecs import hookimpl
from higher_core.optim import get_diff_optim
from higher_core.patch import monkeypatch

#: the optional layers on top of the core, imported on first use (``higher_core.batched``, ...)
_LAYERS = ("batched", "distributed", "implicit", "testing", "unrolling", "utils")
#: public functions whose modules are loaded on first use: the plugin host (at the first optimizer
#: lookup), the missing-double-backward explainer, higher's create_diff_optim, checkpointed unrolls
_LAZY = {"plugin_host": "higher_core._plugins", "register_plugin": "higher_core._plugins",
         "unregister_plugin": "higher_core._plugins", "create_diff_optim": "higher_core._trainable",
         "explain_missing_double_backward": "higher_core._double_backward",
         "unroll": "higher_core.unrolling", "offload": "higher_core.unrolling"}


def __getattr__(name: str) -> Any:
    if name in _LAYERS:  # a layer is imported only when it is used
        return importlib.import_module(f"higher_core.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'higher_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAYERS, *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_diff_optim",  # noqa: F822 (loaded on first use)
    "errors",
    "explain_missing_double_backward",  # noqa: F822 (loaded on first use)
    "functional",
    "get_diff_optim",
    "hookimpl",
    "implicit",  # noqa: F822 (a lazy layer: __getattr__)
    "innerloop_ctx",
    "monkeypatch",
    "offload",  # noqa: F822 (loaded on first use)
    "optim",
    "patch",
    "plugin_hooks",
    "plugin_host",  # noqa: F822 (the plugin host, loaded on first use)
    "register_optim",
    "register_plugin",  # noqa: F822 (the plugin host, loaded on first use)
    "unregister_optim",
    "unregister_plugin",  # noqa: F822 (the plugin host, loaded on first use)
    "unroll",  # noqa: F822 (loaded on first use)
    "unrolling",  # noqa: F822 (a lazy layer: __getattr__)
    "utils",  # noqa: F822 (higher's utils, loaded on first use)
]
