"""Gradient checkpointing and second-order meta-gradients: refused, with the fix.

Checkpointing recomputes a layer's forward inside the backward, reading the
layer's weights *then*. A patched module's fast weights are attributes of its
copy that every inner step replaces, so the recomputation in the meta-backward
reads the latest fast weights instead of those of the step being
differentiated: the meta-gradients would be silently wrong (first-order ones are
exact: each step's backward runs before the next step). A ``transformers``
model marks checkpointing with a ``gradient_checkpointing`` flag on its layers;
while higher-order gradients are tracked, a patched forward with one of them on
(in training mode, where transformers checkpoints) raises. ``torch.utils.checkpoint``
called by a model's own forward cannot be seen: README "Transformers" says so.
"""

from __future__ import annotations

from torch import nn

__all__ = ["check_no_checkpointing", "checkpointing_layers"]


def checkpointing_layers(module: nn.Module) -> list[nn.Module]:
    """The submodules of ``module`` that carry a transformers ``gradient_checkpointing`` flag (on or off)."""
    return [sub for sub in module.modules() if "gradient_checkpointing" in sub.__dict__]


def check_no_checkpointing(layers: list[nn.Module]) -> None:
    """Raise if gradient checkpointing is on in one of ``layers`` (training mode), naming the fix.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> layer.gradient_checkpointing = True
        >>> check_no_checkpointing([layer])
        Traceback (most recent call last):
        ...
        ValueError: gradient checkpointing is on in Linear; ...
    """
    for layer in layers:
        if layer.__dict__.get("gradient_checkpointing") is True and layer.training:
            raise ValueError(
                f"gradient checkpointing is on in {type(layer).__name__}; it recomputes the forward inside the "
                "meta-backward with the latest fast weights, not those of the step, so second-order "
                "meta-gradients would be wrong. Call model.gradient_checkpointing_disable() before the inner "
                "loop, or take first-order meta-gradients (track_higher_grads=False), where it is exact"
            )
