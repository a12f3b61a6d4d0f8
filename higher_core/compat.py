"""Everything that changes with the installed torch, in one place.

higher-core supports every torch minor version from 2.4 to 2.14 and follows the
*installed* ``torch.optim``: where torch changed an optimizer, a plugin asks this
module which side of the change it is on, and every private torch name the core
relies on is read here, each with a fallback that is always correct (only
slower). ``tests/test_compat.py`` checks every entry against the installed torch,
so a torch release that renames or removes one fails one test, loudly.

Plugins use the public part: :data:`TORCH_VERSION`, :func:`torch_at_least`,
:func:`torch_optimizer` and :func:`accepts_option`.

Example:
    >>> import higher_core.compat as compat
    >>> compat.torch_at_least(2, 4)
    True
    >>> compat.torch_optimizer("SGD") is __import__("torch").optim.SGD
    True
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as _forward_ad
from torch.nn.modules import module as _module_globals

from higher_core.errors import OptimizerUnavailableError

__all__ = [
    "MIN_TORCH",
    "OPTIMIZER_SINCE",
    "TORCH_VERSION",
    "CONV_TYPES",
    "GLOBAL_MODULE_HOOKS",
    "accepts_option",
    "backward_keeps_graph",
    "node_sequence_number",
    "ddp_forward_halves",
    "dual_level_open",
    "math_attention",
    "sdp_backend_names",
    "flatten_dense_tensors",
    "functorch_transforms_active",
    "optimizer_available",
    "pytree",
    "rnn_flat_weight_names",
    "torch_at_least",
    "torch_optimizer",
]


def _parse(version: str) -> tuple[int, int, int]:
    """``"2.6.0+cu124"`` -> ``(2, 6, 0)``; a pre-release such as ``2.15.0a0`` counts as its release."""
    numbers = [int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3]]
    return (numbers + [0, 0, 0])[0], (numbers + [0, 0, 0])[1], (numbers + [0, 0, 0])[2]


#: the installed torch as ``(major, minor, patch)``
TORCH_VERSION: tuple[int, int, int] = _parse(torch.__version__)

#: the oldest torch higher-core supports and tests (README, "Supported torch versions")
MIN_TORCH: tuple[int, int] = (2, 4)

#: ``torch.optim`` optimizers newer than :data:`MIN_TORCH`: the first release that has each
OPTIMIZER_SINCE: dict[str, tuple[int, int]] = {"Adafactor": (2, 5), "Muon": (2, 9)}


def torch_at_least(major: int, minor: int, patch: int = 0) -> bool:
    """Whether the installed torch is ``major.minor.patch`` or newer.

    Example:
        >>> torch_at_least(2, 0)
        True
    """
    return TORCH_VERSION >= (major, minor, patch)


def _version_text(version: Sequence[int]) -> str:
    return ".".join(str(n) for n in version)


def optimizer_available(name: str) -> bool:
    """Whether ``torch.optim.<name>`` exists in the installed torch."""
    return isinstance(getattr(torch.optim, name, None), type)


def torch_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """``torch.optim.<name>``, or :class:`~higher_core.errors.OptimizerUnavailableError` saying which torch has it.

    A plugin for an optimizer newer than the oldest supported torch imports it
    through this function first: on an older torch the plugin then registers
    nothing, and ``higher-core plugins`` and the error a user gets both say why
    (``torch.optim.Muon needs torch >= 2.9; you have 2.6.0``), instead of the
    plugin failing to load.

    Example:
        >>> torch_optimizer("Adam").__name__
        'Adam'
    """
    found = getattr(torch.optim, name, None)
    if isinstance(found, type) and issubclass(found, torch.optim.Optimizer):
        return found
    since = OPTIMIZER_SINCE.get(name)
    needs = f"needs torch >= {_version_text(since)}" if since else "is not in this torch"
    raise OptimizerUnavailableError(
        f"torch.optim.{name} {needs}; you have {torch.__version__}. Upgrade torch to use it "
        "(the other optimizers keep working)."
    )


@functools.lru_cache(maxsize=None)
def accepts_option(optimizer_type: type, option: str) -> bool:
    """Whether the installed ``optimizer_type``'s constructor takes ``option``.

    For options torch added after :data:`MIN_TORCH` (``Adam``'s
    ``decoupled_weight_decay``, 2.7), so that a plugin and its conformance table
    follow the installed torch: an option it lacks is refused as torch refuses it.

    Example:
        >>> accepts_option(torch.optim.SGD, "momentum")
        True
    """
    return option in inspect.signature(optimizer_type.__init__).parameters


# -- private torch names, each with a fallback that is always correct ----------------------------------

def _flatten_fallback(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _private_flatten() -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    try:
        from torch._utils import _flatten_dense_tensors
    except ImportError:  # pragma: no cover - only on a torch that removed it
        return _flatten_fallback
    return _flatten_dense_tensors  # type: ignore[no-any-return]


#: ``torch._utils._flatten_dense_tensors`` (one copy into a new flat buffer, as DDP's buckets do)
flatten_dense_tensors: Callable[[Sequence[torch.Tensor]], torch.Tensor] = _private_flatten()

#: ``torch._C._are_functorch_transforms_active``; without it, assume a transform may be active
#: (the slower ``autograd.Function`` form, which is always correct)
functorch_transforms_active: Callable[[], bool] = getattr(
    torch._C, "_are_functorch_transforms_active", lambda: True)


def backward_keeps_graph() -> bool | None:
    """Whether the backward running now keeps its graph (``retain_graph``); ``None`` where torch does not say (2.4).

    Example:
        >>> backward_keeps_graph() in (True, False, None)
        True
    """
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)  # private, torch >= 2.5
    return None if probe is None else bool(probe())


def node_sequence_number(node: Any) -> int | None:
    """When autograd made ``node`` (later nodes: larger numbers); ``None`` where torch does not say."""
    probe = getattr(node, "_sequence_nr", None)  # private
    return None if probe is None else int(probe())


def dual_level_open() -> bool:
    """Whether forward-mode AD may be at work (``forward_ad._current_level >= 0``; True if unknown)."""
    return getattr(_forward_ad, "_current_level", 0) >= 0


def _global_module_hooks() -> tuple[dict[Any, Any], ...] | None:
    names = ("_global_forward_hooks", "_global_forward_pre_hooks",
             "_global_backward_hooks", "_global_backward_pre_hooks")
    found = tuple(getattr(_module_globals, name, None) for name in names)
    if any(not isinstance(hooks, dict) for hooks in found):
        return None  # pragma: no cover - only on a torch that renamed them
    return found  # type: ignore[return-value]


#: the global module hook registries of ``torch.nn.modules.module`` (the live dicts), or ``None``
#: where torch renamed them: callers must then assume a hook may be registered (the general path)
GLOBAL_MODULE_HOOKS: tuple[dict[Any, Any], ...] | None = _global_module_hooks()


def rnn_flat_weight_names(module: torch.nn.Module) -> list[str]:
    """The parameter names an RNN module lays out for cuDNN (``RNNBase._flat_weights_names``)."""
    names = getattr(module, "_flat_weights_names", None)
    if names is None:  # pragma: no cover - only on a torch that renamed it
        return [name for name, _ in module.named_parameters(recurse=False)]
    return list(names)


def ddp_forward_halves(ddp: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``DistributedDataParallel``'s ``(_pre_forward, _post_forward)``: its ``forward`` around the module.

    Raises:
        RuntimeError: this torch has renamed them; the message names the public fallback.
    """
    try:
        return ddp._pre_forward, ddp._post_forward
    except AttributeError as error:  # pragma: no cover - only on a torch that renamed them
        raise RuntimeError(
            f"this torch ({torch.__version__}) has no DistributedDataParallel._pre_forward/_post_forward; "
            "use higher_core.distributed.all_reduce_grads on the model's parameters instead of DDP"
        ) from error


# -- scaled_dot_product_attention's kernel ---------------------------------------------------------------

#: the backends ``sdpa_kernel`` switches on a torch without ``torch.nn.attention._backend_names``
_SDPA_KERNEL_BACKENDS = ("cudnn", "flash", "math", "mem_efficient")


def sdp_backend_names() -> list[str]:
    """The attention backends ``sdpa_kernel`` sets, each with ``torch._C._get_<name>_sdp_enabled``/``_set_sdp_use_<name>``.

    ``torch.nn.attention._backend_names`` where torch has it (2.13: ``"overrideable"``
    too); before, the four ``sdpa_kernel`` sets: ``["cudnn", "flash", "math", "mem_efficient"]``
    (torch 2.5 has an ``overrideable`` flag that its ``sdpa_kernel`` leaves alone, and so do we).
    """
    import torch.nn.attention as attention

    listed = getattr(attention, "_backend_names", None)
    if isinstance(listed, dict):
        return sorted(listed)
    return [name for name in _SDPA_KERNEL_BACKENDS
            if hasattr(torch._C, f"_get_{name}_sdp_enabled") and hasattr(torch._C, f"_set_sdp_use_{name}")]


def _sdp_flags() -> tuple[tuple[Callable[[], bool], Callable[[bool], None], bool], ...] | None:
    """``(getter, setter, is_math)`` of each attention backend flag, or ``None`` where torch renamed them."""
    names = sdp_backend_names()
    if "math" not in names or "flash" not in names or not all(  # pragma: no cover - a torch that renamed them
            hasattr(torch._C, f"_set_sdp_use_{name}") for name in names):
        return None
    return tuple((getattr(torch._C, f"_get_{name}_sdp_enabled"), getattr(torch._C, f"_set_sdp_use_{name}"),
                  name == "math") for name in names)


_SDP_FLAGS = _sdp_flags()


class _MathAttention:
    """``sdpa_kernel(SDPBackend.MATH)`` in about 3 us instead of 12: only the flags that differ are set."""

    __slots__ = ("_restore",)

    def __enter__(self) -> None:
        restore = []
        for get, set_, is_math in _SDP_FLAGS:  # type: ignore[union-attr]
            if get() != is_math:
                set_(is_math)
                restore.append((set_, not is_math))
        self._restore = restore

    def __exit__(self, *exc: object) -> None:
        for set_, value in self._restore:
            set_(value)


def _math_attention_fallback() -> Any:
    from torch.nn.attention import SDPBackend, sdpa_kernel  # (public since torch 2.3)
    return sdpa_kernel(SDPBackend.MATH)


def math_attention() -> Any:
    """A context in which ``scaled_dot_product_attention`` runs torch's math kernel, the one with a double backward.

    The same as ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` (the public
    API, torch >= 2.3, taken where the private flags below are renamed), at a
    quarter of its cost: it sets the ``torch._C._set_sdp_use_<backend>`` flags of
    :func:`sdp_backend_names` that differ, and restores them on exit. The flags are process-wide, as ``sdpa_kernel``'s are.

    Example:
        >>> q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        >>> with math_attention():
        ...     out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        >>> "ScaledDotProduct" in out.grad_fn.name()  # composite ops, not one fused kernel's backward
        False
    """
    return _MathAttention() if _SDP_FLAGS is not None else _math_attention_fallback()


def _pytree() -> Any:
    from torch.utils import _pytree as pytree  # private, but the one tree utility vmap itself uses

    return pytree


#: ``torch.utils._pytree``: ``tree_flatten``, ``tree_unflatten``, ``tree_map``, ``tree_leaves``
pytree: Any = _pytree()

#: the base class of torch's convolutions (``torch.nn.modules.conv._ConvNd``); without it, the public ones
CONV_TYPES: tuple[type, ...] = ((torch.nn.modules.conv._ConvNd,) if hasattr(torch.nn.modules.conv, "_ConvNd")
                                else (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                                      torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d))
