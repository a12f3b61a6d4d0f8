"""The base class of every differentiable optimizer, and the contract a plugin codes against.

A differentiable optimizer mirrors a live ``torch.optim`` optimizer: it copies
its param groups (hyperparameters only; the model's parameters are referred to
by position, never copied) and its existing per-parameter state, then updates
fast weights out of place, so that autograd sees every step.

The contract (every name public; nothing else of the base class may be used):

* **Declarations** (class attributes): :attr:`~DifferentiableOptimizer.tensor_hyperparameters`
  (the hyperparameters that may be overridden, and learned),
  :attr:`~DifferentiableOptimizer.complex_parameters` (``"refuse"``, ``"real_view"``
  or ``"native"``) and :attr:`~DifferentiableOptimizer.scope` (``"element"``,
  ``"tensor"`` or ``"global"``).
* **The rule** (override one): :meth:`~DifferentiableOptimizer.update_one` (one
  parameter), :meth:`~DifferentiableOptimizer.update` (a param group, e.g. with
  ``torch._foreach_*``), or :meth:`~DifferentiableOptimizer.update_groups` (every
  group at once, for statistics across groups such as Prodigy's).
* **State hooks** (override as needed): :meth:`~DifferentiableOptimizer.init_state`,
  :meth:`~DifferentiableOptimizer.import_state`,
  :meth:`~DifferentiableOptimizer.export_param_state`, and for running state per
  param group :meth:`~DifferentiableOptimizer.import_group_state`,
  :meth:`~DifferentiableOptimizer.update_group_state`,
  :meth:`~DifferentiableOptimizer.export_group_state`.
* **Options**: :meth:`~DifferentiableOptimizer.check_param_groups` refuses what
  the rule cannot honour; :meth:`~DifferentiableOptimizer.import_options` reads
  the options a reference keeps on its instance, not in its param groups
  (AdaBelief's ``rectify``), into :attr:`~DifferentiableOptimizer.options`.
* **Helpers** (call them from an overridden :meth:`~DifferentiableOptimizer.step`,
  as a closure optimizer such as LBFGS does): :meth:`~DifferentiableOptimizer.fast_weights`,
  :meth:`~DifferentiableOptimizer.groups_for_step`,
  :meth:`~DifferentiableOptimizer.gradients`,
  :meth:`~DifferentiableOptimizer.check_devices`,
  :meth:`~DifferentiableOptimizer.finish_step`,
  :meth:`~DifferentiableOptimizer.check_export`; and the attributes
  :attr:`~DifferentiableOptimizer.param_groups`, :attr:`~DifferentiableOptimizer.param_state`,
  :attr:`~DifferentiableOptimizer.group_state`, :attr:`~DifferentiableOptimizer.defaults`,
  :attr:`~DifferentiableOptimizer.options`,
  :attr:`~DifferentiableOptimizer.track_higher_grads`,
  :attr:`~DifferentiableOptimizer.optimizer_name`.

Update rules are written with :mod:`higher_core.functional`'s helpers.
:attr:`~DifferentiableOptimizer.state` is not for plugins: it shows
:attr:`~DifferentiableOptimizer.param_state` in the old ``higher`` layout, for user
code; a subclass written for ``higher`` (``_update(grouped_grads)``) still runs,
deprecated (see :mod:`higher_core._higher_compat`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from higher_core import _devices, _state_io, _step_checks
from higher_core._boundary import qualified_name
from higher_core._overrides import Override, merged_groups, normalize_override
from higher_core._state_store import StateStore
from higher_core._stepping import GroupStepper

if TYPE_CHECKING:
    from higher_core.patch import PatchedModule

__all__ = ["ComplexParameters", "DifferentiableOptimizer", "GradCallback", "Scope", "State"]

#: one parameter's optimizer state: ``torch.optim``'s keys (``step``, ``exp_avg``, ...) to values
State = dict[str, Any]
#: called with the gradients of a step; returns the gradients to use (e.g. clipped)
GradCallback = Callable[[list[torch.Tensor | None]], Iterable[torch.Tensor | None]]
#: how a rule takes complex parameters: refused, stepped on their real views, or as they are
ComplexParameters = Literal["refuse", "real_view", "native"]
#: what one element's update depends on: that element, its whole tensor, or all of them
Scope = Literal["element", "tensor", "global"]


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
            fast weights are used and updated when ``step`` is given no ``params``,
            and its ``track_higher_grads`` flag is the optimizer's.
        device: the device to cast state tensors to.
        override: hyperparameters to use instead of the optimizer's, ``{name:
            [value]}`` for every param group or ``{name: [v0, v1, ...]}`` one per
            group (any sequence, e.g. an ``nn.ParameterList``); tensor values
            receive gradients. Only :attr:`tensor_hyperparameters` may be
            overridden; values are checked as the reference optimizer's
            constructor checks them.
        grad_callback: a function applied to the list of gradients (in the order
            of ``reference_params``; ``None`` where a parameter has no gradient)
            before every step, e.g. for clipping.
        track_higher_grads: if False, the step is taken without a graph (test
            mode). With an ``fmodel``, leave it ``None``: the fmodel's flag is used
            (a different explicit value is refused).

    A plugin sets the declarations and implements the rule; see the module
    docstring for the whole contract.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> fmodel = higher_core.patch.monkeypatch(model)
        >>> diffopt = higher_core.optim.get_diff_optim(opt, model.parameters(), fmodel=fmodel)
        >>> new_weights = diffopt.step(fmodel(torch.ones(3, 2)).pow(2).sum())
    """

    #: The hyperparameters that may be overridden (and so learned as tensors), the
    #: one definition of "hyperparameter". Other group keys (flags such as
    #: ``amsgrad``, integers such as LBFGS's ``history_size``) are options fixed by
    #: the optimizer; overriding them is a ValueError listing these names.
    tensor_hyperparameters: ClassVar[tuple[str, ...]] = ("lr",)
    #: How complex parameters are stepped. ``"refuse"`` (a ValueError naming the
    #: optimizer), ``"real_view"`` (the rule sees ``torch.view_as_real`` views of
    #: parameters, gradients and state, as ``torch.optim``'s element-wise
    #: optimizers step them), ``"native"`` (the rule receives complex tensors as
    #: they are, e.g. Lion's complex sign).
    complex_parameters: ClassVar[ComplexParameters] = "refuse"
    #: What a parameter's new value depends on. ``"element"`` (each element only
    #: on the same element of param, grad and state, and on the hyperparameters:
    #: SGD, Adam, ...), ``"tensor"`` (reductions over a whole tensor: Adafactor,
    #: Muon), ``"global"`` (couples tensors or groups: LBFGS, Prodigy). Batched
    #: tasks and flat fast weights read it; ``"global"`` is the safe default.
    scope: ClassVar[Scope] = "global"
    #: Whether an element-wise rule steps each param group as one flat buffer, with
    #: the same numbers and one kernel per operation instead of one per tensor (see
    #: the plugin contract). Set False, on the class or on an instance, to step
    #: tensor by tensor, the reference the flat path is tested against.
    flat_weights: ClassVar[bool] = True
    #: Whether a flat group's step is one autograd node (:mod:`higher_core._fused`) that saves only the
    #: step's inputs: the same numbers, less memory per unrolled step. Its backward runs the rule again
    #: under autograd, or, for a first-order backward, the rule's ``update_vjp(group, params, grads,
    #: states, grad_params, grad_states)`` if it has one (Adam's). For a rule whose ``update`` reads its
    #: arguments only. Off by default: it wins where the rule's graph saves more than its inputs (Adam: 5
    #: tensors a step against 3), not for plain SGD (which saves nothing, and would then keep the gradient).
    fused: ClassVar[bool] = False
    _legacy_update: ClassVar[bool] = False  # a higher-style ``_update(grouped_grads)`` subclass

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from higher_core._subclass_checks import check_subclass  # loaded with the first plugin class

        check_subclass(cls, DifferentiableOptimizer)

    def __init__(
        self,
        other: torch.optim.Optimizer,
        reference_params: Iterable[torch.Tensor],
        fmodel: PatchedModule | None = None,
        device: torch.device | str | None = None,
        override: Override | None = None,
        grad_callback: GradCallback | None = None,
        track_higher_grads: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}"
            )
        _step_checks.check_tracking(track_higher_grads, fmodel)
        reference = list(reference_params)
        #: the param groups, their hyperparameters and ``params`` as positions into the fast weights
        self.param_groups: list[dict[str, Any]] = _state_io.copy_param_groups(other, reference)
        #: the reference optimizer's name, for messages (``torch.optim.Adam``)
        self.optimizer_name: str = qualified_name(type(other))
        #: the reference optimizer's type (its constructor validates overrides)
        self.reference_type: type = type(other)
        self._reference_step = _state_io.held_step(other)  # what type export_state writes ``step`` in
        #: options the reference keeps on its instance, not in its param groups (:meth:`import_options`)
        self.options: dict[str, Any] = dict(self.import_options(other))
        #: per param group: running state (:meth:`import_group_state`)
        self.group_state: list[State] = [self.import_group_state(group) for group in self.param_groups]
        self.check_param_groups(self.param_groups)
        self._num_params = len(reference)
        self._shapes = [tuple(p.shape) for p in reference]
        self._positions = [list(group["params"]) for group in self.param_groups]
        _step_checks.check_no_duplicates(self._positions, self._shapes)
        #: positions listed in more than one param group: stepped once per group, in order, as torch.optim does
        self._shared = _step_checks.shared_positions(self._positions)
        if self._shared and (self._legacy_update or type(self).step is not DifferentiableOptimizer.step
                             or type(self).update_groups is not DifferentiableOptimizer.update_groups):
            _step_checks.refuse_shared(self._shared, self._positions, self._shapes, self.optimizer_name,
                                       type(self).__name__)
        self._fmodel = fmodel
        self._grad_callback = grad_callback
        self._track_higher_grads = True if track_higher_grads is None else track_higher_grads
        self._override: dict[str, list[Any]] = {}
        constructor_override = self._normalized(override)
        if constructor_override:
            self._check_merged(merged_groups(self.param_groups, {}, constructor_override), constructor_override)
        self._override = constructor_override
        #: the reference optimizer's constructor defaults
        self.defaults: dict[str, Any] = dict(other.defaults)
        #: each parameter's state (``torch.optim``'s keys), by its position; absent before its first step
        self.param_state: dict[int, State] = StateStore()
        self._stepper = GroupStepper()  # how each group steps: per tensor, or laid out flat
        self._import_states(other, reference, device)

    def _import_states(self, other: torch.optim.Optimizer, reference: list[torch.Tensor],
                       device: torch.device | str | None) -> None:
        """Each parameter's existing state in ``other``, through :meth:`import_state`."""
        for i, p in enumerate(reference if other.state else ()):  # (no state yet: nothing to import)
            existing = other.state.get(p)
            if existing:
                imported = self.import_state(existing, device)
                if imported is not None:
                    self.param_state[i] = imported

    @property
    def state(self) -> Sequence[MutableMapping[int, State]]:
        """The old ``higher`` layout of :attr:`param_state`: ``state[group][position in group]`` (a view).

        Example:
            >>> import itertools, torch, higher_core
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            ...     _ = diffopt.step(fmodel(torch.ones(1, 2)).sum())
            >>> [sorted(s) for s in itertools.chain(*(g.values() for g in diffopt.state))]
            [['momentum_buffer'], ['momentum_buffer']]
        """
        from higher_core import _higher_compat  # the old-higher adapter

        return _higher_compat.GroupedState(self.param_state, self._positions)

    # -- declarations read at run time ----------------------------------------------------
    @property
    def track_higher_grads(self) -> bool:
        """Whether steps build a graph; the fmodel's flag when there is one (one source of truth).

        Example:
            >>> import torch, higher_core
            >>> model = torch.nn.Linear(2, 1)
            >>> fmodel = higher_core.patch.monkeypatch(model)
            >>> diffopt = higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1),
            ...                                      model.parameters(), fmodel=fmodel)
            >>> fmodel.track_higher_grads = False
            >>> diffopt.track_higher_grads
            False
        """
        return self._fmodel.track_higher_grads if self._fmodel is not None else self._track_higher_grads

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"track_higher_grads must be a bool, got {type(value).__name__}")
        if self._fmodel is not None:
            self._fmodel.track_higher_grads = value
        else:
            self._track_higher_grads = value

    # -- hooks: options --------------------------------------------------------------------
    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        """Refuse options this differentiable optimizer cannot honour (raise ValueError).

        Called on the copied param groups at construction and on the groups with
        overrides applied (at construction and at every overridden step).

        Example:
            >>> class OneGroup(DifferentiableOptimizer):
            ...     def check_param_groups(self, param_groups):
            ...         if len(param_groups) != 1:
            ...             raise ValueError("OneGroup supports one param group")
        """

    def import_options(self, other: torch.optim.Optimizer) -> Mapping[str, Any]:
        """Read the options ``other`` keeps on its instance, not in its param groups; they become :attr:`options`.

        Some references keep options as attributes (AdaBelief's ``rectify`` and
        ``weight_decouple``, lion-pytorch's ``decoupled_wd``): they are not in
        the copied param groups, cannot be overridden, and stay fixed. Called
        once, at construction, with the reference optimizer, before
        :meth:`check_param_groups` (which may read :attr:`options`); the rule
        reads them as ``self.options[name]``. A batched optimizer's rules read
        the same. The default reads none.

        Example:
            >>> class Rectified(DifferentiableOptimizer):
            ...     def import_options(self, other):
            ...         return {"rectify": bool(getattr(other, "rectify", True))}
            ...     def update_one(self, group, param, grad, state):
            ...         scale = 0.5 if self.options["rectify"] else 1.0
            ...         return param - scale * group["lr"] * grad, state
        """
        return {}

    # -- hooks: the rule -------------------------------------------------------------------
    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        """The state of a parameter before its first step (``torch.optim``'s lazy init).

        Use ``torch.optim``'s key names, so that importing and exporting state is a copy.

        Example:
            >>> class Momentum(DifferentiableOptimizer):
            ...     def init_state(self, param, group):
            ...         return {"momentum_buffer": torch.zeros_like(param)}
        """
        return {}

    def update(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        """One step for one param group, out of place: :meth:`update_one` on each tensor, or its vectorised form.

        The default applies :meth:`update_one` to each parameter in turn. A rule
        may override this method with a multi-tensor (``torch._foreach_*``) form of
        the same rule, *beside* :meth:`update_one`, which stays the reference: the
        conformance kit's ``vectorised`` check compares the two. Overriding it
        without :meth:`update_one` is deprecated.

        Args:
            group: the group's hyperparameters, overrides applied (values may be
                tensors), and its running state (:meth:`update_group_state`).
            params: the parameters of the group that have a gradient this step.
            grads: their gradients.
            states: their states (do not mutate; return new ones).

        Returns:
            The new parameters and the new states, in the same order.

        Example:
            >>> class PlainSGD(DifferentiableOptimizer):
            ...     scope = "element"
            ...     def update_one(self, group, param, grad, state):
            ...         return param - group["lr"] * grad, state
            ...     def update(self, group, params, grads, states):  # the same rule, one kernel per group
            ...         return torch._foreach_sub(params, torch._foreach_mul(grads, group["lr"])), states
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
        """One step for one parameter, out of place: ``(new_param, new_state)``.

        Example:
            >>> class PlainSGD(DifferentiableOptimizer):
            ...     scope = "element"
            ...     def update_one(self, group, param, grad, state):
            ...         return param - group["lr"] * grad, state
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update_one() (or update_groups())")

    def update_groups(
        self, groups: list[dict[str, Any]], params: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """One step for every param group: :meth:`update` on each group's parameters that have a gradient.

        Per group, this checks devices (:meth:`check_devices`), makes missing
        states (:meth:`init_state`), advances the group's running state
        (:meth:`update_group_state`), handles complex parameters as
        :attr:`complex_parameters` says, calls :meth:`update` and stores the new
        states in :attr:`param_state`. Override it for an optimizer whose statistics
        span groups (Prodigy's global step size).

        Args:
            groups: the param groups with overrides applied (:meth:`groups_for_step`).
            params: every fast weight, in the order of ``reference_params``.
            grads: their gradients (``None`` where there is none).

        Returns:
            The new fast weights; parameters without a gradient are returned as given.
            A parameter listed in several groups (appended to a second group after
            the reference was built) is stepped once per group, in order, each step
            from the previous one's weight and state, as ``torch.optim`` steps it.

        Example:
            >>> class Global(DifferentiableOptimizer):
            ...     def update_groups(self, groups, params, grads):
            ...         scale = sum(g.abs().sum() for g in grads if g is not None)
            ...         return [p if g is None else p - groups[0]["lr"] * g / scale
            ...                 for p, g in zip(params, grads)]
        """
        if self._legacy_update:
            from higher_core import _higher_compat  # the old-higher adapter

            return _higher_compat.legacy_update_groups(self, groups, params, grads)
        return self._stepper.step_groups(self, groups, params, grads)

    # -- hooks: state ----------------------------------------------------------------------
    def import_state(self, state: Mapping[str, Any], device: torch.device | str | None) -> State | None:
        """Copy one parameter's ``torch.optim`` state: tensors detached and cloned, ``step`` as a number.

        Return ``None`` to treat the parameter as not yet stepped (for state that a
        reference creates in its constructor; :meth:`init_state` then makes it at
        the first step).

        Example:
            >>> class Fresh(DifferentiableOptimizer):
            ...     def import_state(self, state, device):
            ...         return None if state.get("step", 0) == 0 else super().import_state(state, device)
        """
        return _state_io.import_param_state(state, device)

    def export_param_state(self, state: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
        """One parameter's state as the reference keeps it (the inverse of :meth:`import_state`).

        Tensors are detached onto the parameter's device. ``step`` is written in
        the type the reference holds it: the type of a ``step`` in the reference's
        state (at construction, or in the optimizer exported into); else a 0-d
        tensor for an optimizer that steps with ``torch.optim``'s own code; else
        (a third-party reference that has not stepped) a Python int, the count
        such code keeps. **Override it** where that is wrong: a third-party
        reference that keeps ``step`` as a tensor (a copy of ``torch.optim``'s
        code) and is exported into before its first step, or other state the
        reference keeps as a tensor and the rule as a number.

        Example:
            >>> class IntStep(DifferentiableOptimizer):
            ...     def export_param_state(self, state, param):
            ...         return {**super().export_param_state(state, param), "step": int(state["step"])}
        """
        return _state_io.export_param_state(state, param, self._reference_step)

    def import_group_state(self, group: dict[str, Any]) -> State:
        """Take a param group's running state out of the copied group (at construction).

        Optimizers such as Prodigy or schedule-free ones keep statistics in their
        param groups and rewrite them at every step. Pop them from ``group`` (so
        that they are not hyperparameters) and return them; they live in
        :attr:`group_state`, are detached by :meth:`detach_state` (test mode,
        :meth:`truncate`) and written back by :meth:`export_group_state`. The
        default keeps none.

        Example:
            >>> class Counting(DifferentiableOptimizer):
            ...     def import_group_state(self, group):
            ...         return {"k": group.pop("k", 0)}
            ...     def update_group_state(self, group, state, params, grads):
            ...         return {**state, "k": state["k"] + 1}
        """
        return {}

    def update_group_state(self, group: Mapping[str, Any], state: State, params: list[torch.Tensor],
                           grads: list[torch.Tensor]) -> State:
        """A group's running state after this step, before its parameters are updated (out of place).

        Called by the default :meth:`update_groups` for a group with non-empty
        running state; :meth:`update` then sees the group's hyperparameters and
        the returned state in one mapping (as ``torch.optim`` keeps them in one
        param group). The default returns ``state`` unchanged.
        """
        return state

    def export_group_state(self, state: Mapping[str, Any], group: dict[str, Any]) -> None:
        """Write a group's running state into the reference optimizer's param group ``group``.

        The default writes every value, one-element tensors as Python numbers
        (as ``torch.optim`` optimizers keep such statistics).

        Example:
            >>> class Counting(DifferentiableOptimizer):
            ...     def export_group_state(self, state, group):
            ...         group["k"] = int(state["k"])
        """
        for key, value in state.items():
            group[key] = _state_io.export_group_value(value)

    # -- helpers for plugins ---------------------------------------------------------------
    def fast_weights(self, params: Iterable[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The fast weights a step starts from: ``params``, or the patched module's latest.

        Raises:
            TypeError: ``params`` is not a sequence of tensors.
            ValueError: without ``params`` and without an fmodel, or for a wrong count.
        """
        if params is None:
            if self._fmodel is None:
                raise ValueError(
                    "step() needs params= (the fast weights) because this optimizer was created "
                    "without fmodel"
                )
            params = self._fmodel.fast_params
        params = _step_checks.check_params(params)
        if len(params) != self._num_params:
            raise ValueError(
                f"step() got {len(params)} parameters but the optimizer was built for "
                f"{self._num_params}; pass every fast weight, in the order of reference_params"
            )
        return params

    def groups_for_step(self, override: Override | None = None) -> list[dict[str, Any]]:
        """The param groups for one step: the constructor's overrides, then this step's, applied.

        ``override`` is validated (declared keys only, shapes, the reference
        constructor's checks, :meth:`check_param_groups`) and applies to this
        step only: it is never stored.
        """
        step_override = self._normalized(override)
        if not self._override and not step_override:
            return self.param_groups
        groups = merged_groups(self.param_groups, self._override, step_override)
        if step_override:
            self._check_merged(groups, step_override)
        return groups

    def _normalized(self, override: Override | None) -> dict[str, list[Any]]:
        return normalize_override(override, self.param_groups, self.optimizer_name, self.tensor_hyperparameters,
                                  self._shapes)

    def _check_merged(self, groups: list[dict[str, Any]], normalized: Mapping[str, list[Any]]) -> None:
        """The plugin's and the reference constructor's checks of groups with ``normalized`` applied."""
        from higher_core._override_probe import validate_with_reference  # loaded with the first override

        self.check_param_groups(groups)
        validate_with_reference(self.reference_type, groups, self.param_groups,
                                [*self._override, *normalized], self.optimizer_name)

    def gradients(
        self, loss: torch.Tensor, params: list[torch.Tensor], grad_callback: GradCallback | None = None
    ) -> list[torch.Tensor | None]:
        """Gradients of ``loss`` w.r.t. ``params`` (``None`` where unreached), through the grad callback.

        The graph is kept (``create_graph``) while :attr:`track_higher_grads`.
        ``grad_callback`` replaces the constructor's for this call.

        Raises:
            TypeError, ValueError: ``loss`` is not a scalar tensor, reaches none
                of ``params``, or none of ``params`` requires grad; the callback returns something other than one
                gradient of each parameter's shape (or ``None``) per parameter; a
                gradient is sparse.
        """
        targets = [i for i, p in enumerate(params) if p.requires_grad]
        _step_checks.check_loss(loss, bool(targets))
        callback = grad_callback or self._grad_callback
        grads: list[torch.Tensor | None] = [None] * len(params)
        if targets:
            computed = torch.autograd.grad(
                loss,
                [params[i] for i in targets],
                create_graph=self.track_higher_grads,
                allow_unused=True,
            )
            for i, g in zip(targets, computed):
                grads[i] = g
        _step_checks.check_reached(targets, grads)
        if callback is not None:
            grads = _step_checks.check_callback_grads(callback(grads), params)
        _step_checks.check_strided(self.optimizer_name, grads)
        return grads

    def check_devices(self, number: int, group: Mapping[str, Any], params: list[torch.Tensor],
                      indices: list[int]) -> None:
        """Refuse a hyperparameter or state tensor on another device than the fast weights ``params[indices]``."""
        _devices.check_devices(self.optimizer_name, number, group, params, indices, self.param_state)

    def finish_step(self, params: list[torch.Tensor], new_params: list[torch.Tensor]) -> list[torch.Tensor]:
        """End a step: cut the graph in test mode, hand the new weights to the fmodel, return them.

        In test mode every returned weight is a detached leaf (``requires_grad`` as
        before), the ones the step left unchanged too, so none leads back to the model.
        """
        if not self.track_higher_grads:
            leaves = self._stepper.detached_leaves(params, new_params)  # a flat group's stay views into one buffer
            new_params = [leaves[i] if i in leaves else p.detach().requires_grad_(old.requires_grad)
                          for i, (p, old) in enumerate(zip(new_params, params))]
            self.detach_state()
        if self._fmodel is not None:
            self._fmodel.update_params(new_params)
        return new_params

    # -- the step --------------------------------------------------------------------------
    def step(
        self,
        loss: torch.Tensor,
        params: Iterable[torch.Tensor] | None = None,
        override: Override | None = None,
        grad_callback: GradCallback | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        """Take one differentiable step and return the new fast weights.

        **An override given here applies to this step only**: it is not written
        into the param groups, so the next step without ``override`` uses the
        constructor's values again (the old ``higher`` kept it). Pass it at every
        step, or give it to the constructor.

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
            unchanged (detached in test mode). With an ``fmodel``, its fast weights
            are updated too.

        Raises:
            TypeError, ValueError: see :meth:`gradients` (a loss that is not a scalar
                tensor or reaches no fast weight, a bad ``grad_callback`` result, a
                sparse gradient). A NaN or infinite loss is stepped, as ``torch.optim``
                steps it.
        """
        if kwargs:
            raise TypeError(f"step() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        params = self.fast_weights(params)
        groups = self.groups_for_step(override)
        grads = self.gradients(loss, params, grad_callback)
        return self.finish_step(params, self.update_groups(groups, params, grads))

    # -- graph and state management --------------------------------------------------------
    def detach_state(self) -> None:
        """Detach every state tensor, per parameter and per group, from the graph (test mode, truncation)."""
        store = self.param_state
        if isinstance(store, StateStore):
            for layout in store.pending.values():
                layout.detach_state()
        for state in [*(store.raw_values() if isinstance(store, StateStore) else store.values()), *self.group_state]:
            for key, value in state.items():
                state[key] = _state_io.detached(value)

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
        in the type the reference holds it (:meth:`export_param_state`: a tensor
        for ``torch.optim``'s optimizers, an int for a reference that counts with
        one), and each group's running state
        into ``opt``'s param groups (:meth:`export_group_state`), so that ordinary
        training can continue from the end of an inner loop. Pair it with
        :meth:`higher_core.patch.PatchedModule.copy_to` for the weights.

        Example:
            >>> import torch, higher_core
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            ...     _ = diffopt.step(fmodel(torch.ones(1, 2)).sum())
            ...     fmodel.copy_to(model)
            ...     diffopt.export_state(opt)
            >>> "momentum_buffer" in opt.state[model.weight]
            True
        """
        self.check_export(opt)
        held = _state_io.held_step(opt)
        if held is not None and held is not _state_io.TORCH_STEP:  # the reference has stepped since: its type
            self._reference_step = held
        exported = {param: self.export_param_state(self.param_state[index], param)
                    for ours, theirs in zip(self._positions, opt.param_groups)
                    for index, param in zip(ours, theirs["params"]) if self.param_state.get(index)}
        opt.state.update(exported)
        for running, theirs in zip(self.group_state, opt.param_groups):
            self.export_group_state(running, theirs)

    def check_export(self, opt: torch.optim.Optimizer) -> None:
        """Refuse an :meth:`export_state` target that is not the optimizer this one mirrors, before writing.

        Raises:
            TypeError: ``opt`` is not of :attr:`reference_type`.
            ValueError: its param groups' lengths or its parameters' shapes differ.
        """
        from higher_core._write_back import check_export_target  # loaded with the first export

        check_export_target(opt, self.reference_type, self.optimizer_name, self._positions, self._shapes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.param_groups)} param group(s), {self._num_params} parameters)"
