"""Exceptions and warnings raised by higher-core.

Every error says what was wrong and what to do about it. The classes keep the
built-in exception types the old ``higher`` raised (``ValueError``), so code that
caught those keeps working.
"""

from __future__ import annotations

__all__ = [
    "MissingDoubleBackwardError",
    "UnsupportedOptimizerError",
    "MissingOptimizerPluginError",
    "OptimizerUnavailableError",
    "PluginConflictError",
    "PluginLoadError",
    "PluginLoadWarning",
    "SubclassResolutionWarning",
]


class UnsupportedOptimizerError(ValueError):
    """No differentiable optimizer is registered for a ``torch.optim`` type.

    The message names the type and, for a ``torch.optim`` built-in, the
    ``pip install higher-<name>`` command that provides it.
    """


class MissingOptimizerPluginError(UnsupportedOptimizerError, AttributeError):
    """A documented ``higher_core.optim.Differentiable*`` name whose plugin is not installed.

    It is also an :class:`AttributeError`, so ``hasattr(higher_core.optim,
    "DifferentiableAdam")`` is ``False`` when ``higher-adam`` is missing.
    """


class OptimizerUnavailableError(UnsupportedOptimizerError, AttributeError):
    """The installed torch has no such ``torch.optim`` optimizer (``Muon`` before 2.9).

    The message names the torch release that added it. A plugin for it registers
    nothing on this torch, and is listed as unavailable, not as broken: strict
    mode does not fail on it. It is also an :class:`AttributeError`, so
    ``hasattr(higher_core.optim, "DifferentiableMuon")`` is ``False`` there.
    """


class PluginConflictError(RuntimeError):
    """Two plugins claim the same optimizer type; the message names both distributions."""


class PluginLoadError(ImportError):
    """Plugins failed to load while ``HIGHER_CORE_STRICT_PLUGINS`` is on.

    Raised after every other plugin was loaded; the message lists every failure.
    """


class PluginLoadWarning(UserWarning):
    """A plugin failed to load, or a plugin environment variable has a value or name that matches nothing.

    Every other plugin keeps working; the message names the distribution or the variable.
    """


class SubclassResolutionWarning(UserWarning):
    """An optimizer subclass was resolved to the differentiable version of a base class."""


class MissingDoubleBackwardError(RuntimeError):
    """A meta-gradient reached an operation whose backward has no derivative in torch (no double backward).

    Raised instead of torch's "derivative for aten::<op> is not implemented" (kept
    as ``__cause__``) inside ``innerloop_ctx`` and
    :func:`higher_core.explain_missing_double_backward`; the message names the
    operation and the fix (the math attention kernel, first-order meta-gradients).
    It is a :class:`RuntimeError`, as torch's error was.
    """
