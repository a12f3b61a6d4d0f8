"""The per-parameter state store: a dict that builds the state flat steps left laid out when first read.

A flat step (:mod:`higher_core._flat`) keeps a param group's new state as a
few flat buffers; making one view per parameter and state tensor costs about
as much as one multi-tensor kernel, so it is done only when somebody reads or
writes the store (``diffopt.param_state``, ``export_state``, the kit, a
plugin's own ``step``). The next flat step of the group takes the buffers as
they are. Every ``dict`` method first builds what is pending, so a reference
to the store held across steps always shows the latest state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from higher_core._flat import FlatGroup

__all__ = ["StateStore"]


class StateStore(dict):
    """``param_state``: position -> that parameter's state, with flat groups' state built on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[int, FlatGroup] = {}  # group number -> the layout holding its state

    def defer(self, number: int, layout: FlatGroup) -> None:
        """Group ``number``'s state is now ``layout``'s flat buffers; drop the per-tensor entries."""
        for i in layout.indices:
            dict.pop(self, i, None)
        self.pending[number] = layout

    def settle(self, number: int | None = None) -> None:
        """Build the per-tensor state of group ``number`` (or of every group) if it is pending."""
        numbers = list(self.pending) if number is None else [number] if number in self.pending else []
        for n in numbers:
            layout = self.pending.pop(n)
            dict.update(self, zip(layout.indices, layout.per_tensor_states()))

    def raw_get(self, i: int) -> Any:
        """The stored entry at ``i`` without building pending state (``None`` if absent or pending)."""
        return dict.get(self, i)

    def raw_values(self) -> Iterable[Any]:
        return dict.values(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        self.settle()
        return dict, (dict(dict.items(self)),)


def _settling(name: str) -> Any:
    method = getattr(dict, name)

    def settled(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        if self.pending:
            self.settle()
        return method(self, *args, **kwargs)

    settled.__name__ = name
    settled.__doc__ = method.__doc__
    return settled


for _name in ("__getitem__", "__contains__", "__iter__", "__len__", "__repr__", "__eq__", "__ne__", "__or__",
              "__ior__", "__reversed__", "__setitem__", "__delitem__", "get", "keys", "values", "items", "copy",
              "pop", "popitem", "setdefault", "update", "clear"):
    setattr(StateStore, _name, _settling(_name))
del _name
