"""Out-of-place L-BFGS: each step re-evaluates a closure over the fast weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch

from higher_core.compat import torch_at_least
from higher_core.functional import add_scaled_exact
from higher_core.optim import DifferentiableOptimizer, GradCallback, State
from higher_lbfgs._line_search import strong_wolfe

#: torch >= 2.10 gives the line search what is left of ``max_eval``; before, its own 25 evaluations
LINE_SEARCH_SHARES_MAX_EVAL = torch_at_least(2, 10)
#: the line search's budget before torch 2.10 (``torch.optim.lbfgs._strong_wolfe``'s ``max_ls``)
OLD_LINE_SEARCH_BUDGET = 25

Closure = Callable[[list[torch.Tensor]], torch.Tensor]
Number = Union[int, float, torch.Tensor]

#: the curvature condition torch requires before storing a pair (s, y)
_MIN_CURVATURE = 1e-10


def _real(x: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its real view with a trailing dimension of 2 (torch's LBFGS flattens those)."""
    return torch.view_as_real(x) if x.is_complex() else x


def _two_loop(
    flat_grad: torch.Tensor,
    old_dirs: list[torch.Tensor],
    old_stps: list[torch.Tensor],
    ro: list[torch.Tensor],
    h_diag: Number,
    al: list[Any],
) -> torch.Tensor:
    """The L-BFGS direction :math:`-H g` (two-loop recursion); fills ``al`` in place (a fresh list)."""
    q = flat_grad.neg()
    for i in reversed(range(len(old_dirs))):
        al[i] = old_stps[i].dot(q) * ro[i]
        q = add_scaled_exact(q, old_dirs[i], -al[i])
    r = torch.mul(q, h_diag)
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r = add_scaled_exact(r, old_stps[i], al[i] - be_i)
    return r


class DifferentiableLBFGS(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.LBFGS``, with the installed torch's numerics.

    .. math::
        d_k = -H_k g_k \text{ (two-loop recursion over the last } m \text{ pairs }
            s_i = t_i d_i,\ y_i = g_{i+1} - g_i,\ H_k^0 = \tfrac{s^\top y}{y^\top y} I), \qquad
        \theta_{k+1} = \theta_k + t_k d_k

    with :math:`t_k` the learning rate (:math:`\min(1, 1/\|g_1\|_1)\,\gamma` on the
    very first iteration) or the strong-Wolfe line search's step. One
    :meth:`step` runs up to ``max_iter`` iterations, like torch's, so it takes a
    ``closure(params) -> loss`` instead of a loss and calls it on each new
    iterate. Stopping tests, the curvature test :math:`s^\top y > 10^{-10}` and
    the line search's branches are decided on values, exactly as torch decides
    them; everything else keeps its graph, so the new weights are differentiable
    functions of the fast weights and of a tensor ``lr``: the gradients
    (``create_graph``), the memory :math:`(s_i, y_i, \rho_i)`, :math:`H^0`, the
    direction, and the step length (the first iteration's
    :math:`1/\|g_1\|_1`, and in the line search the losses, slopes and cubic
    interpolations that choose it). Unlike torch, parameters that do not
    require grad or that the loss does not reach are never moved, and the
    global state is kept under the first parameter that has a gradient.
    ``grad_callback`` is applied to every gradient the closure produces. Complex
    parameters are handled as torch does, as pairs of real numbers.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.LBFGS(model.parameters(), max_iter=4, line_search_fn="strong_wolfe")
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     new = diffopt.step(lambda p: (fmodel(x, params=p) - y).pow(2).mean())
        >>> diffopt.param_state[0]["n_iter"] <= 4
        True
    """

    tensor_hyperparameters = ("lr",)
    complex_parameters = "real_view"  # flattened as torch does, in step()
    scope = "global"

    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        if len(param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        group = param_groups[0]
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(
                f"line_search_fn must be None or 'strong_wolfe', got {group['line_search_fn']!r} "
                "(torch.optim.LBFGS refuses it at its first step)"
            )
        if group["line_search_fn"] is not None and group["max_eval"] < 1:
            raise ValueError(
                f"max_eval must be at least 1 with line_search_fn='strong_wolfe', got "
                f"{group['max_eval']} (torch.optim.LBFGS's line search fails with fewer evaluations)"
            )
        if group["history_size"] < 1:
            raise ValueError(
                f"history_size must be at least 1, got {group['history_size']} "
                "(torch.optim.LBFGS fails when it stores its first curvature pair)"
            )


    def export_state(self, opt: torch.optim.Optimizer) -> None:
        """Write the global state into ``opt`` under its first parameter, where ``torch.optim.LBFGS`` keeps it."""
        self.check_export(opt)
        owner = next((i for i in self.param_groups[0]["params"] if self.param_state.get(i)), None)
        if owner is not None:
            first = opt.param_groups[0]["params"][0]
            opt.state[first] = self.export_param_state(self.param_state[owner], first)

    def step(  # type: ignore[override]
        self,
        closure: Closure,
        params: Iterable[torch.Tensor] | None = None,
        override: Mapping[str, Any] | None = None,
        grad_callback: GradCallback | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        """Run one ``torch.optim.LBFGS`` step (up to ``max_iter`` iterations) differentiably.

        Args:
            closure: ``closure(params) -> loss``: the loss at the fast weights
                ``params`` (a list in the order of ``reference_params``). It is
                called once per function evaluation, on new iterates.
            params: the fast weights; defaults to the patched module's latest ones.
            override: hyperparameters for this step only (``lr`` may be a tensor).
            grad_callback: replaces the constructor's ``grad_callback`` for this step.

        Returns:
            The new fast weights, in the order of ``reference_params``.

        Raises:
            TypeError: ``closure`` is a loss tensor, not callable, or takes no
                argument (``torch.optim.LBFGS``'s convention); the message shows the
                expected ``closure(params) -> loss``.
        """
        if kwargs:
            raise TypeError(f"step() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        _check_closure(type(self).__name__, closure)
        params = self.fast_weights(params)
        group = self.groups_for_step(override)[0]
        new_params = _Run(self, group, closure, grad_callback).run(params)
        return self.finish_step(params, new_params)


_CONVENTION = (
    "it re-evaluates the loss at new iterates, so it takes closure(params) -> loss, the loss at the "
    "fast weights it is given: diffopt.step(lambda params: loss_fn(fmodel(x, params=params)))"
)


def _check_closure(name: str, closure: Any) -> None:
    """Refuse a loss, a non-callable, or torch's zero-argument closure, saying what the step expects."""
    if not callable(closure):
        raise TypeError(f"{name}.step(closure): got a {type(closure).__name__}, not a closure; {_CONVENTION}")
    try:
        signature = inspect.signature(closure)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(
            f"{name}.step(closure): the closure takes no argument (torch.optim.LBFGS's convention, "
            f"where it reads the model's weights); {_CONVENTION}"
        ) from None


class _Run:
    """One call of :meth:`DifferentiableLBFGS.step`: the closure, the group and the flat views."""

    def __init__(self, optimizer: DifferentiableLBFGS, group: Mapping[str, Any], closure: Closure,
                 callback: GradCallback | None) -> None:
        self.optimizer = optimizer
        self.group = group
        self.closure = closure
        self.callback = callback
        self.indices: list[int] = list(group["params"])
        self.active: set[int] = set()

    # -- flat views --------------------------------------------------------------------
    def evaluate(self, current: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        loss = self.closure(current)
        frozen = not any(p.requires_grad for p in current)  # gradients() says so, whatever the loss
        if not isinstance(loss, torch.Tensor) or not (loss.requires_grad or frozen):
            raise ValueError(
                "closure(params) returned a loss that does not require grad, so it was not computed "
                "from the fast weights it was given (was it computed under torch.no_grad(), or from "
                "the original module?)"
            )
        return loss, self.optimizer.gradients(loss, current, self.callback)

    def flatten(self, grads: list[torch.Tensor | None], current: list[torch.Tensor]) -> torch.Tensor:
        """The gradients as one real vector (zeros where there is none; complex ones as real pairs)."""
        views = []
        for i in self.indices:
            grad = grads[i]
            views.append(_real(current[i].new_zeros(current[i].numel()) if grad is None else grad).reshape(-1))
        return torch.cat(views, 0)

    def flat_evaluate(self, current: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grads = self.evaluate(current)
        return loss, self.flatten(grads, current)

    def moved(self, base: list[torch.Tensor], t: Number, d: torch.Tensor) -> list[torch.Tensor]:
        """``base + t d`` for the parameters that have a gradient; the others stay as they are."""
        new = list(base)
        offset = 0
        for i in self.indices:
            real = _real(base[i])
            numel = real.numel()
            if i in self.active:
                moved = add_scaled_exact(real, d[offset:offset + numel].view_as(real), t)
                new[i] = torch.view_as_complex(moved) if base[i].is_complex() else moved
            offset += numel
        return new

    # -- the step ----------------------------------------------------------------------
    def run(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        state_store = self.optimizer.param_state
        loss, grads = self.evaluate(params)
        self.active = {i for i in self.indices if grads[i] is not None}
        if not self.active:
            return params
        owner = next((i for i in self.indices if state_store.get(i)), None)
        state = dict(state_store[owner]) if owner is not None else {}
        new_params, new_state = self.iterate(params, loss, self.flatten(grads, params), state)
        if owner is not None:
            del state_store[owner]
        state_store[min(self.active, key=self.indices.index)] = new_state
        return new_params

    def iterate(
        self, x: list[torch.Tensor], loss: torch.Tensor, flat_grad: torch.Tensor, state: State
    ) -> tuple[list[torch.Tensor], State]:
        group = self.group
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size, line_search_fn = group["history_size"], group["line_search_fn"]

        func_evals = state.get("func_evals", 0) + 1
        total_iter = state.get("n_iter", 0)
        current_evals = 1
        if flat_grad.abs().max() <= tolerance_grad:
            return x, {**state, "func_evals": func_evals, "n_iter": total_iter}

        d, t = state.get("d"), state.get("t")
        old_dirs = list(state.get("old_dirs") or [])
        old_stps = list(state.get("old_stps") or [])
        ro = list(state.get("ro") or [])
        h_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")
        al = list(state["al"]) if "al" in state else None
        loss_value = loss.item()

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            total_iter += 1

            # direction
            if total_iter == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro, h_diag = [], [], [], 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > _MIN_CURVATURE:
                    if len(old_dirs) == history_size:
                        del old_dirs[0], old_stps[0], ro[0]
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                if al is None:
                    al = [None] * history_size
                d = _two_loop(flat_grad, old_dirs, old_stps, ro, h_diag, al)
            prev_flat_grad, prev_loss = flat_grad, loss_value

            # step length
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if total_iter == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            step_evals = 0
            if line_search_fn is not None:
                def along(step: Number, start: list[torch.Tensor] = x,
                          direction: torch.Tensor = d) -> tuple[torch.Tensor, torch.Tensor]:
                    return self.flat_evaluate(self.moved(start, step, direction))

                budget = max_eval - current_evals if LINE_SEARCH_SHARES_MAX_EVAL else OLD_LINE_SEARCH_BUDGET
                loss, flat_grad, t, step_evals = strong_wolfe(along, t, d, loss, flat_grad, gtd, max_ls=budget)
                x = self.moved(x, t, d)
                loss_value = loss.item()
                converged = bool(flat_grad.abs().max() <= tolerance_grad)
            else:
                x = self.moved(x, t, d)
                converged = False
                if n_iter != max_iter:
                    loss, flat_grad = self.flat_evaluate(x)
                    loss_value = loss.item()
                    converged = bool(flat_grad.abs().max() <= tolerance_grad)
                    step_evals = 1
            current_evals += step_evals
            func_evals += step_evals

            # stopping tests
            if n_iter == max_iter or current_evals >= max_eval or converged:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss_value - prev_loss) < tolerance_change:
                break

        new_state: State = {
            **state,
            "func_evals": func_evals,
            "n_iter": total_iter,
            "d": d,
            "t": t,
            "old_dirs": old_dirs,
            "old_stps": old_stps,
            "ro": ro,
            "H_diag": h_diag,
            "prev_flat_grad": prev_flat_grad,
            "prev_loss": prev_loss,
        }
        if al is not None:
            new_state["al"] = al
        return x, new_state
