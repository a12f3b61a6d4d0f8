"""Checks before an inner loop's results are written back into ordinary training.

``PatchedModule.copy_to`` (weights and buffers into the original module) and
``DifferentiableOptimizer.export_state`` (state into the ``torch.optim``
optimizer) refuse a target that is not the one they mirror, before anything is
written. Loaded on the first write-back, not with the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["check_copy_targets", "check_export_target"]

#: a parameter's (shape, dtype, device), as the patched module records it
Meta = tuple[torch.Size, torch.dtype, torch.device]


def check_copy_targets(targets: list[tuple[str, torch.Tensor]], names: list[str], meta: list[Meta],
                        sources: list[tuple[str, torch.Tensor]], target_buffers: dict[str, torch.Tensor]) -> None:
    """Refuse a ``copy_to`` target whose parameter names/shapes or buffers differ, before anything is written."""
    got = [(name, tuple(p.shape)) for name, p in targets]
    expected = [(name, tuple(shape)) for name, (shape, _, _) in zip(names, meta)]
    if got != expected:
        wrong = next(((a, b) for a, b in zip(got, expected) if a != b), None)
        detail = (f"parameter {wrong[0][0]!r} of shape {wrong[0][1]} where the patched module has "
                  f"{wrong[1][0]!r} of shape {wrong[1][1]}") if wrong else \
            f"{len(got)} parameters where the patched module has {len(expected)}"
        raise ValueError(f"copy_to(module=...): the module does not match the patched module ({detail}); "
                         "pass the module that was patched. Nothing was written.")
    for name, buf in sources:
        target = target_buffers.get(name)
        if target is None or target.shape != buf.shape:
            found = "missing" if target is None else f"of shape {tuple(target.shape)}"
            raise ValueError(f"copy_to(module=..., buffers=True): buffer {name!r} of shape {tuple(buf.shape)} "
                             f"is {found} in the module; pass buffers=False or the module that was patched. "
                             "Nothing was written.")


def check_export_target(opt: Any, reference_type: type, name: str, positions: Sequence[Sequence[int]],
                        shapes: Sequence[tuple[int, ...]]) -> None:
    """Refuse an ``export_state`` target that is not the optimizer this one mirrors (type, groups, shapes)."""
    if type(opt) is not reference_type:
        raise TypeError(
            f"export_state(opt): opt is a {type(opt).__name__} but this differentiable optimizer "
            f"mirrors {name}; pass the optimizer it was built from"
        )
    if [len(g["params"]) for g in opt.param_groups] != [len(p) for p in positions]:
        raise ValueError(
            "export_state(opt): the optimizer's param groups differ from the ones this differentiable "
            "optimizer was built from; pass that optimizer"
        )
    for ours, theirs in zip(positions, opt.param_groups):
        for i, param in zip(ours, theirs["params"]):
            if tuple(param.shape) != shapes[i]:
                raise ValueError(
                    f"export_state(opt): opt's parameter {i} has shape {tuple(param.shape)} but this "
                    f"optimizer's has shape {shapes[i]}; pass the optimizer it was built from. "
                    "Nothing was written"
                )
