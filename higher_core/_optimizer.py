"""The base class of every differentiable optimizer.

A differentiable optimizer mirrors a live ``torch.optim`` optimizer: it copies
its param groups (hyperparameters only; the model's parameters are referred to
by position, never copied) and its existing per-parameter state, then updates
fast weights out of place, so that autograd sees every step.

A plugin implements one method, :meth:`DifferentiableOptimizer.update`, in the
style of optax's ``update``: it receives one param group's hyperparameters, the
parameters that have a gradient, their gradients and their states, and returns
new parameters and new states without mutating anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from higher_core._overrides import Override, normalize_override

if TYPE_CHECKING:
    from higher_core.patch import PatchedModule

__all__ = ["DifferentiableOptimizer", "GradCallback", "State"]

#: one parameter's optimizer state: ``torch.optim``'s keys (``step``, ``exp_avg``, ...) to values
State = dict[str, Any]
#: called with the gradients of a step; returns the gradients to use (e.g. clipped)
GradCallback = Callable[[list[torch.Tensor | None]], Iterable[torch.Tensor | None]]


def _to_device(value: Any, device: torch.device | str | None) -> Any:
    """A detached copy of a state value on ``device``; lists and tuples of tensors too."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _detached(value: Any) -> Any:
    """A state value cut from the graph; lists and tuples of tensors too."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.requires_grad else value
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


def _elsewhere(value: Any, device: torch.device) -> bool:
    """A tensor on another device than ``device`` (a CPU scalar mixes with any device, as in torch)."""
    return (isinstance(value, torch.Tensor) and value.device != device
            and not (value.dim() == 0 and value.device.type == "cpu"))


class DifferentiableOptimizer:
    """A differentiable version of a ``torch.optim`` optimizer.

    Built from an existing optimizer, it takes the same param groups and
    continues from its state (a pre-trained Adam's moments continue exactly).
    :meth:`step` computes gradients of a loss with respect to the fast weights,
    with ``create_graph=True`` while higher-order gradients are tracked, and
    returns the new fast weights.

    Args:
        other: an existing optimizer instance.
        reference_params: the parameters of the original model, in the order the
            fast weights follow (``model.parameters()``).
        fmodel: a patched module (see :func:`higher_core.patch.monkeypatch`); its
            fast weights are used and updated when ``step`` is given no ``params``.
        device: the device to cast state tensors to.
        override: hyperparameters to use instead of the optimizer's, ``{name:
            [value]}`` for every param group or ``{name: [v0, v1, ...]}`` one per
            group; tensor values receive gradients.
        grad_callback: a function applied to the list of gradients (in the order
            of ``reference_params``; ``None`` where a parameter has no gradient)
            before every step, e.g. for clipping.
        track_higher_grads: if False, the step is taken without a graph (test mode).

    Subclasses set :attr:`tensor_hyperparameters` and implement :meth:`update_one`
    (one parameter) or :meth:`update` (a whole group, e.g. with ``torch._foreach_*``
    kernels), and :meth:`init_state` when the optimizer keeps state.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> fmodel = higher_core.patch.monkeypatch(model)
        >>> diffopt = higher_core.optim.get_diff_optim(opt, model.parameters(), fmodel=fmodel)
        >>> new_weights = diffopt.step(fmodel(torch.ones(3, 2)).pow(2).sum())
    """

    #: hyperparameters that may be given as tensors requiring grad
    tensor_hyperparameters: ClassVar[tuple[str, ...]] = ("lr",)
    #: update complex parameters on their real views (``torch.view_as_real``), as
    #: ``torch.optim``'s element-wise optimizers do; if False they are refused
    complex_as_real: ClassVar[bool] = False

    def __init__(
        self,
        other: torch.optim.Optimizer,
        reference_params: Iterable[torch.Tensor],
        fmodel: PatchedModule | None = None,
        device: torch.device | str | None = None,
        override: Override | None = None,
        grad_callback: GradCallback | None = None,
        track_higher_grads: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}"
            )
        reference = list(reference_params)
        position = {id(p): i for i, p in enumerate(reference)}
        self.param_groups: list[dict[str, Any]] = []
        for group in other.param_groups:
            indices = []
            for p in group["params"]:
                if id(p) not in position:
                    raise ValueError(
                        f"{type(other).__name__} tracks a parameter of shape {tuple(p.shape)} that is "
                        "not in reference_params; pass the parameters of the module the optimizer "
                        "was built for (model.parameters())"
                    )
                indices.append(position[id(p)])
            copied = {k: v for k, v in group.items() if k != "params"}
            copied["params"] = indices
            self.param_groups.append(copied)
        self.check_param_groups(self.param_groups)
        self._num_params = len(reference)
        self._fmodel = fmodel
        self._device = device
        self._grad_callback = grad_callback
        self._track_higher_grads = track_higher_grads
        self._optimizer_name = self._reference_name(other)
        self._override = normalize_override(override, self.param_groups, self._optimizer_name)
        #: the reference optimizer's constructor defaults
        self.defaults: dict[str, Any] = dict(other.defaults)
        self.state: dict[int, State] = {}
        for i, p in enumerate(reference):
            existing = other.state.get(p)
            if existing:
                imported = self.import_state(existing, device)
                if imported is not None:
                    self.state[i] = imported

    # -- hooks for subclasses ------------------------------------------------------------
    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        """Refuse options this differentiable optimizer cannot honour (raise ValueError)."""

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        """The state of a parameter before its first step (``torch.optim``'s lazy init)."""
        return {}

    def update(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        """One step for one param group, out of place.

        Args:
            group: the group's hyperparameters, overrides applied (values may be tensors).
            params: the parameters of the group that have a gradient this step.
            grads: their gradients.
            states: their states (do not mutate; return new ones).

        Returns:
            The new parameters and the new states, in the same order.

        The default applies :meth:`update_one` to each parameter in turn; a
        multi-tensor (``torch._foreach_*``) rule overrides this method instead.
        """
        new_params, new_states = [], []
        for param, grad, state in zip(params, grads, states):
            new_param, new_state = self.update_one(group, param, grad, state)
            new_params.append(new_param)
            new_states.append(new_state)
        return new_params, new_states

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """One step for one parameter, out of place: ``(new_param, new_state)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement update() or update_one()")

    def import_state(self, state: Mapping[str, Any], device: torch.device | str | None) -> State | None:
        """Copy one parameter's ``torch.optim`` state: tensors detached and cloned, ``step`` as a number.

        Return ``None`` to treat the parameter as not yet stepped (for state that a
        reference creates in its constructor; :meth:`init_state` then makes it at
        the first step).
        """
        imported: State = {}
        for key, value in state.items():
            if key == "step" and isinstance(value, torch.Tensor) and value.numel() == 1:
                imported[key] = value.item()
            else:
                imported[key] = _to_device(value, device)
        return imported

    # -- the step ------------------------------------------------------------------------
    @staticmethod
    def _reference_name(other: torch.optim.Optimizer) -> str:
        t = type(other)
        return f"torch.optim.{t.__name__}" if getattr(torch.optim, t.__name__, None) is t else t.__qualname__

    def _groups_for_step(self, override: Override | None) -> list[dict[str, Any]]:
        merged = dict(self._override)
        if override:
            merged.update(normalize_override(override, self.param_groups, self._optimizer_name))
        if not merged:
            return self.param_groups
        groups = []
        for index, group in enumerate(self.param_groups):
            copy = dict(group)
            for key, values in merged.items():
                copy[key] = values[index]
            groups.append(copy)
        if override:
            self.check_param_groups(groups)
        return groups

    def step(
        self,
        loss: torch.Tensor,
        params: Iterable[torch.Tensor] | None = None,
        override: Override | None = None,
        grad_callback: GradCallback | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        """Take one differentiable step and return the new fast weights.

        Args:
            loss: a scalar computed from the fast weights.
            params: the fast weights to update, in the order of ``reference_params``;
                defaults to the patched module's latest ones.
            override: hyperparameters for this step only; they take precedence over
                the ones given at construction.
            grad_callback: replaces the constructor's ``grad_callback`` for this step.

        Returns:
            The new fast weights, in the order of ``reference_params``. Parameters
            that do not require grad, or that the loss does not reach, are returned
            unchanged. With an ``fmodel``, its fast weights are updated too.
        """
        if kwargs:
            raise TypeError(f"step() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        params = self._fast_weights(params)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise ValueError(
                "step(loss): the loss does not require grad, so it was not computed from the fast "
                "weights (was it computed under torch.no_grad(), or from the original module?)"
            )
        groups = self._groups_for_step(override)
        grads = self._gradients(loss, params, grad_callback or self._grad_callback)
        return self._finish_step(params, self.update_groups(groups, params, grads))

    def update_groups(
        self, groups: list[dict[str, Any]], params: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """One step for every param group: :meth:`update` on each group's parameters that have a gradient.

        Override it for an optimizer whose statistics span groups (Prodigy's
        global step size). Returns the new fast weights, in the order of
        ``reference_params``; parameters without a gradient are returned as given.
        """
        new_params = list(params)
        for number, group in enumerate(groups):
            indices = [i for i in group["params"] if grads[i] is not None]
            if not indices:
                continue
            self._check_devices(number, group, indices, params)
            states = [self.state[i] if i in self.state else self.init_state(params[i], group) for i in indices]
            group_params = [params[i] for i in indices]
            group_grads: list[torch.Tensor] = [grads[i] for i in indices]  # type: ignore[misc]
            if any(p.is_complex() for p in group_params):
                updated, new_states = self._update_complex(group, group_params, group_grads, states)
            else:
                updated, new_states = self.update(group, group_params, group_grads, states)
            for i, p, s in zip(indices, updated, new_states):
                new_params[i] = p
                self.state[i] = s
        return new_params

    # -- pieces of a step, for subclasses whose step differs (LBFGS's closure) ----------------
    def _fast_weights(self, params: Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
        """The fast weights a step starts from: ``params``, or the patched module's latest."""
        if params is None:
            if self._fmodel is None:
                raise ValueError(
                    "step() needs params= (the fast weights) because this optimizer was created "
                    "without fmodel"
                )
            params = self._fmodel.fast_params
        params = list(params)
        if len(params) != self._num_params:
            raise ValueError(
                f"step() got {len(params)} parameters but the optimizer was built for "
                f"{self._num_params}; pass every fast weight, in the order of reference_params"
            )
        return params

    def _finish_step(self, params: list[torch.Tensor], new_params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Cut the graph in test mode, hand the new weights to the patched module, return them."""
        if not self._track_higher_grads:
            new_params = [
                p.detach().requires_grad_(old.requires_grad) if p is not old else p
                for p, old in zip(new_params, params)
            ]
            self.detach_state()
        if self._fmodel is not None:
            self._fmodel.update_params(new_params)
        return new_params

    def _check_devices(self, number: int, group: Mapping[str, Any], indices: list[int],
                       params: list[torch.Tensor]) -> None:
        """Refuse a hyperparameter (override) or state tensor on another device than its fast weights."""
        for device in {params[i].device for i in indices}:
            for key, value in group.items():
                for tensor in value if isinstance(value, tuple) else (value,):
                    if _elsewhere(tensor, device):
                        raise ValueError(
                            f"{self._optimizer_name}: hyperparameter {key!r} of param group {number} is a "
                            f"tensor on {tensor.device} but the fast weights are on {device}; move it there "
                            f"(.to({str(device)!r}), or get_trainable_opt_params(opt, device={str(device)!r}))"
                        )
        for i in indices:
            device = params[i].device
            for key, value in self.state.get(i, {}).items():
                if _elsewhere(value, device):
                    raise ValueError(
                        f"{self._optimizer_name}: optimizer state {key!r} of parameter {i} is on {value.device} "
                        f"but its fast weight is on {device}; pass device={str(device)!r} to innerloop_ctx or "
                        "get_diff_optim (it moves the optimizer state), or keep the model and the optimizer "
                        "on one device"
                    )

    def _update_complex(
        self, group: Mapping[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor], states: list[State]
    ) -> tuple[list[torch.Tensor], list[State]]:
        """:meth:`update` on the real views of complex parameters, gradients and state.

        ``torch.optim`` steps a complex parameter as its ``(..., 2)`` real view; the
        operations it applies before taking the view (``maximize``, weight decay)
        are element-wise and linear, so applying them to the view gives the same
        numbers.
        """
        if not self.complex_as_real:
            raise ValueError(
                f"{type(self).__name__} does not support complex parameters (as {self._optimizer_name} does not)"
            )

        def real(value: Any) -> Any:
            return torch.view_as_real(value) if isinstance(value, torch.Tensor) and value.is_complex() else value

        updated, new_states = self.update(
            group, [real(p) for p in params], [real(g) for g in grads],
            [{k: real(v) for k, v in s.items()} for s in states],
        )
        restored_states = []
        for param, old, new in zip(params, states, new_states):
            # state that was complex, and state first made in this step shaped like the parameter
            complex_keys = {k for k, v in old.items() if isinstance(v, torch.Tensor) and v.is_complex()}
            if param.is_complex():
                real_shape = torch.view_as_real(param).shape
                complex_keys |= {k for k, v in new.items()
                                 if k not in old and isinstance(v, torch.Tensor) and v.shape == real_shape}
            restored_states.append(
                {k: torch.view_as_complex(v) if k in complex_keys else v for k, v in new.items()}
            )
        restored = [torch.view_as_complex(u) if p.is_complex() else u for p, u in zip(params, updated)]
        return restored, restored_states

    def _gradients(
        self, loss: torch.Tensor, params: list[torch.Tensor], callback: GradCallback | None
    ) -> list[torch.Tensor | None]:
        targets = [i for i, p in enumerate(params) if p.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(params)
        if targets:
            computed = torch.autograd.grad(
                loss,
                [params[i] for i in targets],
                create_graph=self._track_higher_grads,
                allow_unused=True,
            )
            for i, g in zip(targets, computed):
                grads[i] = g
        if callback is not None:
            grads = list(callback(grads))
            if len(grads) != len(params):
                raise ValueError(
                    f"grad_callback returned {len(grads)} gradients for {len(params)} parameters"
                )
        return grads

    def detach_state(self) -> None:
        """Detach every state tensor from the graph (used in test mode and for truncation)."""
        for state in self.state.values():
            for key, value in state.items():
                state[key] = _detached(value)

    def truncate(self) -> None:
        """Cut the unrolled graph here (truncated back-propagation through the inner loop).

        Detaches the optimizer state and, with an ``fmodel``, its fast weights, so a
        long unroll can be split into windows: gradients of later losses stop at
        this step.

        Example:
            >>> import torch, higher_core
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            ...     for step in range(6):
            ...         _ = diffopt.step(fmodel(torch.ones(1, 2)).pow(2).sum())
            ...         if step % 3 == 2:
            ...             diffopt.truncate()
        """
        self.detach_state()
        if self._fmodel is not None and self._fmodel.fast_params is not None:
            self._fmodel.detach_()

    def export_state(self, opt: torch.optim.Optimizer) -> None:
        """Write this optimizer's state into ``opt`` (the optimizer it was built from).

        State tensors are copied detached onto each parameter's device, ``step``
        as a tensor as ``torch.optim`` keeps it, so that ordinary training can
        continue from the end of an inner loop. Pair it with
        :meth:`higher_core.patch.PatchedModule.copy_to` for the weights.

        Example:
            >>> import torch, higher_core
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
            >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            ...     _ = diffopt.step(fmodel(torch.ones(1, 2)).sum())
            ...     fmodel.copy_to(model)
            ...     diffopt.export_state(opt)
            >>> float(opt.state[model.weight]["step"])
            1.0
        """
        if [len(g["params"]) for g in opt.param_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(
                "export_state: the optimizer's param groups differ from the ones this differentiable "
                "optimizer was built from; pass that optimizer"
            )
        for ours, theirs in zip(self.param_groups, opt.param_groups):
            for index, param in zip(ours["params"], theirs["params"]):
                if index in self.state:
                    opt.state[param] = self.export_param_state(self.state[index], param)

    def export_param_state(self, state: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
        """One parameter's state as ``torch.optim`` keeps it (the inverse of :meth:`import_state`)."""
        scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        exported: dict[str, Any] = {}
        for key, value in state.items():
            if key == "step" and not isinstance(value, torch.Tensor):
                exported[key] = torch.tensor(float(value), dtype=scalar_dtype)
            else:
                exported[key] = _to_device(value, param.device)
        return exported

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.param_groups)} param group(s), {self._num_params} parameters)"
