"""The conformance table: option combinations and bad inputs, per optimizer.

Modelled on ``torch.optim``'s ``OptimizerInfo``: a plugin declares, for each
optimizer it provides, the option combinations to check
(:class:`OptimizerInput`) and the inputs that must be refused
(:class:`ErrorOptimizerInput`, saying which side refuses them). The shared
suite reads the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from higher_core.compat import torch_at_least

__all__ = [
    "OptimizerInput",
    "ErrorOptimizerInput",
    "OptimizerInfo",
    "DEFAULT_SHAPES",
    "CHECKS",
    "common_error_inputs",
    "multi_element_lr_refusal",
]

DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((3, 2), (2,), (2, 2))
"""Parameter shapes of the test problem: all but the last form group 0, the last group 1."""

CHECKS = (
    "parity",
    "gradcheck",
    "hypergradients",
    "finite_meta_gradients",
    "continue_from_reference",
    "frozen_and_unused",
    "complex",
    "float32",
    "no_mutation",
    "export_state",
    "truncate",
    "group_statistics",
    "flat_weights",
    "vectorised",
    "batched",
)
"""The checks run for every :class:`OptimizerInput` row."""


@dataclass(frozen=True)
class OptimizerInput:
    """One option combination: constructor kwargs and the second group's own hyperparameters.

    ``hyperparameters``, if given, replaces the table's list of hyperparameters
    checked for hypergradients in this row: leave one out where it is not smooth
    (Prodigy's ``beta1=0``) or its finite difference cannot be trusted; ``()``
    checks none. ``skips`` maps a check name to the reason it does not apply to
    this row alone (a check the installed torch's own optimizer cannot run with
    these options, say); the table's ``OptimizerInfo.skips`` apply to every row.
    """

    kwargs: Mapping[str, Any]
    desc: str
    second_group: Mapping[str, Any] | None = None
    hyperparameters: Sequence[str] | None = None
    skips: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorOptimizerInput:
    """Constructor kwargs that must be refused with ``error_type`` matching ``error_regex``.

    ``raised_by`` says which side must refuse them: ``"reference"`` (the
    reference constructor refuses them; the kit checks that it does) or
    ``"differentiable"`` (the reference accepts them, an option this plugin
    cannot honour; the kit checks that the reference accepts them and that
    building the differentiable optimizer, or its first step, refuses them).
    """

    kwargs: Mapping[str, Any]
    error_type: type[Exception]
    error_regex: str
    desc: str
    raised_by: Literal["reference", "differentiable"] = "reference"

    def __post_init__(self) -> None:
        if self.raised_by not in ("reference", "differentiable"):
            raise ValueError(
                f"ErrorOptimizerInput({self.desc!r}): raised_by={self.raised_by!r}; use \"reference\" "
                "(the reference constructor refuses it) or \"differentiable\" (the plugin refuses it)"
            )


@dataclass(frozen=True)
class OptimizerInfo:
    """Everything the suite needs to check one differentiable optimizer.

    Args:
        reference: the optimizer class to match (``torch.optim.Adam``, or a
            third-party package's own class).
        inputs: option combinations; each runs every check in :data:`CHECKS`.
        error_inputs: bad inputs and the errors they must raise.
        hyperparameters: hyperparameters checked for hypergradients; defaults to
            the differentiable class's ``tensor_hyperparameters``. List them
            without one to leave it out of the probe (a row's own list wins).
        rtol, atol: parity tolerances (float64).
        rtol32, atol32: parity tolerances in float32 (the ``float32`` check). A
            rule with torch's operations in torch's order matches torch's
            single-tensor path bit for bit; the defaults leave room for torch's
            own foreach and fused kernels, which round differently (up to
            2.4e-7 relative in this repository's tables). A looser value should
            say in a comment what differs and the difference measured.
        shapes: parameter shapes of the test problem.
        skips: check name -> the reason it does not apply to this optimizer (printed
            by the suite).
        closure: the update re-evaluates the loss (LBFGS): ``step`` is given a
            closure ``params -> loss`` instead of a loss.
        steps: steps for the parity check.
        gradcheck_warmup: reference steps taken before the gradient checks unroll,
            so that they reach branches that only later steps take (RAdam's
            rectification).
        single_group: the reference supports one param group only (LBFGS); the
            problem's parameters then form one group.
        prepare: called with every reference optimizer the kit constructs, before
            its first step (``lambda opt: opt.train()`` for schedule-free optimizers).
        differentiable: the differentiable class the plugin registers for
            ``reference``; ``check_registered`` checks that lookups resolve to it.
    """

    reference: type[torch.optim.Optimizer]
    inputs: Sequence[OptimizerInput]
    error_inputs: Sequence[ErrorOptimizerInput] = ()
    hyperparameters: Sequence[str] | None = None
    rtol: float = 1e-10
    atol: float = 1e-12
    rtol32: float = 1e-5
    atol32: float = 1e-6
    shapes: Sequence[tuple[int, ...]] = DEFAULT_SHAPES
    skips: Mapping[str, str] = field(default_factory=dict)
    closure: bool = False
    steps: int = 10
    gradcheck_warmup: int = 0
    single_group: bool = False
    prepare: Callable[[torch.optim.Optimizer], Any] | None = None
    differentiable: type | None = None

    @property
    def name(self) -> str:
        return self.reference.__name__


def multi_element_lr_refusal() -> tuple[type[Exception], str]:
    """How the installed torch's optimizers refuse a tensor ``lr`` of more than one element.

    From torch 2.5 a ``ValueError`` says so; before, comparing the tensor with 0
    raises torch's ``RuntimeError`` about an ambiguous boolean.

    Returns:
        ``(exception type, regex of its message)``, for an :class:`ErrorOptimizerInput`.

    Example:
        >>> error, message = multi_element_lr_refusal()
        >>> error.__name__ in ("ValueError", "RuntimeError")
        True
    """
    if torch_at_least(2, 5):
        return ValueError, "Tensor lr must be 1-element"
    return RuntimeError, "Boolean value of Tensor with more than one value is ambiguous"


def common_error_inputs(lr: float = 0.01, *, betas: bool = True, eps: bool = True,
                        weight_decay: bool = True, tensor_lr: bool = True) -> list[ErrorOptimizerInput]:
    """The bad inputs every ``torch.optim`` optimizer of the Adam family refuses, with torch's messages.

    Each row is refused by the reference constructor (``raised_by="reference"``).

    Args:
        lr: the learning rate of the rows that test another argument.
        betas, eps, weight_decay, tensor_lr: include the rows for ``betas``
            (``beta1=1``, ``beta2<0``), a negative ``eps``, a negative
            ``weight_decay`` and a tensor ``lr`` of two elements.

    Returns:
        The rows, to put in a table's ``error_inputs`` (add the optimizer's own).

    Example:
        >>> [row.desc for row in common_error_inputs(betas=False, tensor_lr=False)]
        ['negative lr', 'negative eps', 'negative decay']
    """
    rows = [ErrorOptimizerInput({"lr": -lr}, ValueError, "Invalid learning rate", "negative lr")]
    if betas:
        rows += [
            ErrorOptimizerInput({"lr": lr, "betas": (1.0, 0.9)}, ValueError, "Invalid beta parameter at index 0",
                                "beta1=1"),
            ErrorOptimizerInput({"lr": lr, "betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1",
                                "beta2<0"),
        ]
    if eps:
        rows.append(ErrorOptimizerInput({"lr": lr, "eps": -1e-8}, ValueError, "Invalid epsilon", "negative eps"))
    if weight_decay:
        rows.append(ErrorOptimizerInput({"lr": lr, "weight_decay": -0.1}, ValueError, "Invalid weight_decay",
                                        "negative decay"))
    if tensor_lr:
        error, message = multi_element_lr_refusal()
        rows.append(ErrorOptimizerInput({"lr": torch.tensor([lr, 2 * lr])}, error, message,
                                        "tensor lr of 2 elements"))
    return rows
