"""Attention's kernel in a patched forward, and the error for an op with no double backward (torch only).

While higher-order gradients are tracked, a patched forward runs
``scaled_dot_product_attention`` with torch's math kernel (the fused ones have
no double backward); in test mode, under ``torch.no_grad()`` or with
``math_attention=False`` it keeps torch's choice. A meta-backward through an
op with no double backward raises :class:`MissingDoubleBackwardError` naming it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import higher_core
from higher_core.errors import MissingDoubleBackwardError


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True).double()


def _flash_seen(fmodel: nn.Module) -> list[bool]:
    """Whether the fused (flash) kernel was allowed during each forward of ``fmodel``'s attention."""
    seen: list[bool] = []
    fmodel.self_attn.register_forward_pre_hook(lambda m, a: seen.append(torch.backends.cuda.flash_sdp_enabled()))
    return seen


X = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


# under vmap a fused kernel has no batching rule (torch 2.13's flash, 2.4's math): torch warns it runs per task
@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("tasks", [None, 2], ids=["patched", "batched"])
def test_math_kernel_only_while_higher_order_grads_are_tracked(tasks):
    net = _encoder()
    x = X if tasks is None else torch.stack([X, X])
    for track, grad, enabled, math in [(True, True, True, True), (False, True, True, False),
                                       (True, False, True, False), (True, True, False, False)]:
        fmodel = higher_core.monkeypatch(net, track_higher_grads=track, tasks=tasks, math_attention=enabled)
        seen = _flash_seen(fmodel if tasks is None else fmodel._module)
        with torch.set_grad_enabled(grad):
            fmodel(x)
        assert seen and all(flash is not math for flash in seen), (track, grad, enabled)
        assert torch.backends.cuda.flash_sdp_enabled()  # restored after the forward


def test_the_kernel_is_restored_when_the_forward_raises():
    fmodel = higher_core.monkeypatch(_encoder())
    with pytest.raises(AssertionError, match="embedding dimension"):
        fmodel(torch.randn(2, 5, 3, dtype=torch.float64))  # a wrong width (nn.MultiheadAttention asserts)
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_math_attention_is_a_checked_flag_kept_by_copies():
    fmodel = higher_core.monkeypatch(_encoder(), math_attention=False)
    assert fmodel.math_attention is False and copy.deepcopy(fmodel).math_attention is False
    fmodel.math_attention = True
    assert fmodel.math_attention
    with pytest.raises((TypeError, ValueError), match="math_attention"):
        fmodel.math_attention = "yes"
    with pytest.raises((TypeError, ValueError), match="math_attention"):
        higher_core.monkeypatch(_encoder(), math_attention=1)


def _meta_gradient(net: nn.Module, **options) -> list[torch.Tensor]:
    params = list(net.parameters())
    with higher_core.innerloop_ctx(net, torch.optim.SGD(params, lr=0.1), copy_initial_weights=False,
                                   **options) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(fmodel(X).pow(2).mean())
        return list(torch.autograd.grad(fmodel(X).pow(2).mean(), params))


def test_a_transformer_layer_has_second_order_meta_gradients_by_default():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    got = _meta_gradient(_encoder())
    with sdpa_kernel(SDPBackend.MATH):  # what a user had to write by hand
        expected = _meta_gradient(_encoder(), math_attention=False)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=0)
    with pytest.raises(MissingDoubleBackwardError, match=r"_scaled_dot_product_\w+_backward.*math kernel"):
        _meta_gradient(_encoder(), math_attention=False)


class _CTC(nn.Module):
    """A CTC loss of a linear map: its backward, _ctc_loss_backward, has no derivative (torch 2.4 to 2.14;
    cdist(p=1), the op used before, has one from torch 2.14)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = (x @ self.weight).log_softmax(-1)  # x: [time 6, batch 2, 3]
        return nn.functional.ctc_loss(log_probs, torch.tensor([[1, 2], [3, 1]]), [6, 6], [2, 2])


def test_an_op_without_double_backward_is_named_with_the_fix():
    net, x = _CTC(), torch.randn(6, 2, 3, dtype=torch.float64)
    missing = r"derivative of _ctc_loss_backward.*track_higher_grads=False"
    with pytest.raises(MissingDoubleBackwardError, match=missing) as caught:
        with higher_core.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1),
                                       copy_initial_weights=False) as (fmodel, diffopt):
            diffopt.step(fmodel(x).sum())
            fmodel(x).sum().backward()
    assert isinstance(caught.value, RuntimeError) and "is not implemented" in str(caught.value.__cause__)
    # the fix it names: first-order meta-gradients
    with higher_core.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1), track_higher_grads=False) \
            as (fmodel, diffopt):
        diffopt.step(fmodel(x).sum())
        fmodel(x).sum().backward()


def test_the_helper_translates_a_meta_backward_outside_the_block_and_passes_other_errors():
    net, x = _CTC(), torch.randn(6, 2, 3, dtype=torch.float64)
    fmodel = higher_core.monkeypatch(net, copy_initial_weights=False)
    g, = torch.autograd.grad(fmodel(x).sum(), fmodel.fast_params, create_graph=True)
    with pytest.raises(MissingDoubleBackwardError, match="_ctc_loss_backward"):
        with higher_core.explain_missing_double_backward():
            (fmodel(x, params=[fmodel.fast_params[0] - g]).sum()).backward()
    with pytest.raises(RuntimeError, match="^an unrelated error$"):
        with higher_core.explain_missing_double_backward():
            raise RuntimeError("an unrelated error")


def test_autocast_bfloat16_meta_gradients_are_finite_and_close_to_float32():
    """Mixed precision around the inner loop and the query loss (README "Transformers": the tolerance)."""
    def meta_gradient(autocast: bool) -> torch.Tensor:
        torch.manual_seed(0)
        net = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        params = list(net.parameters())
        x = X.float()
        with higher_core.innerloop_ctx(net, torch.optim.SGD(params, lr=0.1), copy_initial_weights=False) \
                as (fmodel, diffopt):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                for _ in range(2):
                    diffopt.step(fmodel(x).float().pow(2).mean())
                loss = fmodel(x).float().pow(2).mean()
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    full, mixed = meta_gradient(False), meta_gradient(True)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert (mixed - full).norm() / full.norm() < 0.05
