"""A meta-gradient through an operation without a double backward: an error that names it and the fix.

torch says only "derivative for aten::<op> is not implemented" (or "the
derivative for '<op>' is not implemented.") when the backward of a second-order
gradient reaches the backward of an operation that has none. Inside
``innerloop_ctx`` that error becomes a
:class:`~higher_core.errors.MissingDoubleBackwardError` naming the operation
and what to do; :func:`explain_missing_double_backward` does the same around a
meta-backward taken elsewhere. Nothing of torch's is patched: the translation
happens where the error passes through our code.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from higher_core.errors import MissingDoubleBackwardError

__all__ = ["explain_missing_double_backward", "translate"]

_NOT_IMPLEMENTED = re.compile(r"derivative for '?(?:aten::)?([\w.]+)'? is not implemented")

_FIRST_ORDER = ("take first-order meta-gradients instead (innerloop_ctx(..., track_higher_grads=False): "
                "first-order MAML), or compute this part of the forward with operations that have one")
_ATTENTION = ("scaled_dot_product_attention ran with a fused kernel, which has no double backward. A patched "
              "module runs it with torch's math kernel while track_higher_grads is True (math_attention=True, "
              "the default); this call ran outside that: call the patched module itself (not the original model, "
              "nor a submodule of the patched one), keep math_attention=True, and with gradient checkpointing "
              "(which recomputes the forward inside the backward) wrap the inner loop in "
              "`with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):`; or build the model "
              "with eager attention (transformers: attn_implementation=\"eager\")")


def translate(error: BaseException) -> MissingDoubleBackwardError | None:
    """The error to raise instead of torch's ``error``, or ``None`` if it is not a missing double backward.

    Example:
        >>> str(translate(RuntimeError("the derivative for '_cdist_backward' is not implemented."))).split(";")[0]
        'the meta-gradient needs the derivative of _cdist_backward, which torch does not implement'
        >>> translate(ValueError("something else")) is None
        True
    """
    found = _NOT_IMPLEMENTED.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None or isinstance(error, MissingDoubleBackwardError):
        return None
    op = found.group(1)
    fix = _ATTENTION if "attention" in op else _FIRST_ORDER
    return MissingDoubleBackwardError(
        f"the meta-gradient needs the derivative of {op}, which torch does not implement; {op} is the backward "
        f"of an operation in the inner loop's forward, which so has no double backward: {fix}"
    )


@contextlib.contextmanager
def explain_missing_double_backward() -> Iterator[None]:
    """Raise :class:`~higher_core.errors.MissingDoubleBackwardError` for torch's "derivative ... not implemented".

    ``innerloop_ctx`` does this for what runs inside its ``with`` block; wrap a
    meta-backward taken after the block (or with :func:`higher_core.monkeypatch`)
    in it to get the same message. Any other error passes unchanged.

    Example:
        >>> import torch, higher_core
        >>> x, w = torch.randn(6, 2, 3), torch.randn(3, 5, requires_grad=True)
        >>> ctc = torch.nn.functional.ctc_loss((x @ w).log_softmax(-1), torch.tensor([[1, 2], [3, 1]]), [6, 6], [2, 2])
        >>> g, = torch.autograd.grad(ctc, w, create_graph=True)
        >>> with higher_core.explain_missing_double_backward():
        ...     g.sum().backward()
        Traceback (most recent call last):
        ...
        higher_core.errors.MissingDoubleBackwardError: the meta-gradient needs the derivative of _ctc_loss_backward, ...
    """
    try:
        yield
    except RuntimeError as error:
        translated = translate(error)
        if translated is None:
            raise
        raise translated from error
