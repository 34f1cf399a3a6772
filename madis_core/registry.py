"""One small registry: names -> objects, duplicates refused, unknown names listed.

Used for the model registry (``madis_core.models.registry``), the estimator backends
(``madis_core.backends.base``) and the training tasks (``madis_core.training.tasks``):

    TASKS = Registry("training task")
    @TASKS.decorator("distill")
    class DistillationTask: ...
    TASKS.get("distill")          # KeyError naming every registered task for a typo

Registering the same definition again under its name is a no-op: the same object, or
a class/function of the same name from the same file (a module that ``python -m`` runs
as ``__main__`` executes its decorators a second time). Anything else under a taken
name is refused.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Generic, Iterator, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what the entries are, for error messages ("model", "backend", ...)
        self._items: Dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        old = self._items.get(name)
        if old is not None and old is not item:
            if _same_definition(old, item):
                return old
            raise ValueError(f"{self.kind} name {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item)
        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}") from None

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _same_definition(a: Any, b: Any) -> bool:
    if not (inspect.isclass(a) or inspect.isfunction(a)) or type(a) is not type(b):
        return False
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except TypeError:
        return False
