"""What a differentiable optimizer class declares, read once when the class is defined.

A rule is written one way per kind of rule (the plugin contract, docs/contract.md):

- an element-wise or per-tensor rule implements ``update_one`` (one tensor); it may add ``update``
  as the *vectorised form* of the same rule (``torch._foreach_*``), which the conformance kit checks
  against ``update_one`` (the ``vectorised`` check);
- a rule that couples tensors or groups implements ``update_groups`` (Prodigy);
- a rule that re-evaluates the loss overrides ``step``, taking a closure (LBFGS).

The older ways still run, each with a ``DeprecationWarning`` that names its replacement: an
``update`` without ``update_one``, higher's ``_update(grouped_grads)``, ``complex_as_real`` and
``_update_complex``.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["check_subclass"]

HOOKS = ("update_one", "update", "update_groups", "step")


def check_subclass(cls: Any, base: type) -> None:
    """Warn about deprecated declarations of ``cls`` (a subclass of ``base``) and set ``cls._legacy_update``."""
    if "complex_as_real" in cls.__dict__:
        warnings.warn(
            f"{cls.__qualname__}.complex_as_real is deprecated; set "
            "complex_parameters = 'real_view' (or 'refuse') instead",
            DeprecationWarning, stacklevel=3,
        )
        if "complex_parameters" not in cls.__dict__:
            cls.complex_parameters = "real_view" if cls.__dict__["complex_as_real"] else "refuse"
    if "_update_complex" in cls.__dict__:
        warnings.warn(
            f"{cls.__qualname__} defines _update_complex, which the base class no longer calls: "
            f"complex parameters are stepped as complex_parameters declares "
            f"({cls.complex_parameters!r}); remove _update_complex and declare complex_parameters = "
            "'native' (the rule takes complex tensors as they are) or 'real_view'",
            DeprecationWarning, stacklevel=3,
        )
    own = cls.__mro__[:cls.__mro__.index(base)]
    defined = {hook for k in own for hook in HOOKS if hook in k.__dict__}
    cls._legacy_update = any("_update" in k.__dict__ for k in own) and not defined
    if cls._legacy_update and "_update" in cls.__dict__:
        from higher_core import _higher_compat  # the old-higher adapter

        warnings.warn(
            f"{cls.__qualname__} overrides higher's _update(grouped_grads), which is deprecated; "
            f"implement {_higher_compat.NEW_HOOKS} instead", DeprecationWarning, stacklevel=3,
        )
    if "update" in cls.__dict__ and "update_one" not in defined:
        warnings.warn(
            f"{cls.__qualname__} implements update() without update_one(): write the rule for one tensor "
            "as update_one(group, param, grad, state) -> (param, state); an update() beside it is its "
            "vectorised form, which the conformance kit checks against it (a rule that couples tensors "
            "implements update_groups instead)", DeprecationWarning, stacklevel=3,
        )
