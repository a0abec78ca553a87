"""Deprecated module paths and names from before the package was split into wings, kept working.

``import lightning_synflow.callback``, ``from lightning_synflow.sharding import local``, a YAML
``class_path: lightning_synflow.callback.PruneAtInit`` and objects pickled under the old paths keep working:
the old name gives the very same module object as the new one (so classes compare identical), with one
:class:`DeprecationWarning` naming the new path. The package's ``__init__`` calls :func:`install`.

The finder answers only for an old name with no file at its old place in the package as imported (so a
module not yet moved imports as usual), and only when the new module exists (else the import fails as
usual). It sits first on :data:`sys.meta_path`, before any editable-install finder that could map the old
name to another checkout.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType
from typing import Callable, Optional, Sequence

#: Old module path -> new module path.
MOVED = {
    "lightning_synflow.ranking": "lightning_synflow.selection.topk",
    "lightning_synflow.alive": "lightning_synflow.selection.alive",
    "lightning_synflow.granularity": "lightning_synflow.selection.granularity",
    "lightning_synflow.channels": "lightning_synflow.selection.channels",
    "lightning_synflow.semi_structured": "lightning_synflow.selection.semi_structured",
    "lightning_synflow.sharding": "lightning_synflow.distributed.sharding",
    "lightning_synflow.collectives": "lightning_synflow.distributed.collectives",
    "lightning_synflow.sharded_ranking": "lightning_synflow.distributed.selection",
    "lightning_synflow.sharded_checkpoint": "lightning_synflow.distributed.checkpoint",
    "lightning_synflow.scorers.in_place": "lightning_synflow.distributed.scoring",
    "lightning_synflow.callback": "lightning_synflow.lightning.callback",
    "lightning_synflow.diagnostics": "lightning_synflow.lightning.diagnostics",
    "lightning_synflow.trainer_data": "lightning_synflow.lightning.trainer_data",
    "lightning_synflow.strategies": "lightning_synflow.lightning.strategies",
    "lightning_synflow.spawn": "lightning_synflow.lightning.spawn",
    "lightning_synflow.isolation": "lightning_synflow.lightning.isolation",
    "lightning_synflow.checkpoint_state": "lightning_synflow.lightning.checkpointing",
    "lightning_synflow.checkpointing": "lightning_synflow.lightning.checkpointing",
    "lightning_synflow.analyze": "lightning_synflow.analysis.cli",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the new module itself: ``create_module`` hands back the module object, and
    the import system registers it under the old name too (it keeps the module's own ``__spec__``)."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def _warn(self) -> None:
        warnings.warn(
            f"{self.old} moved to {self.new}; import it from there (the old path will be removed)",
            DeprecationWarning,
            stacklevel=3,  # the importing line (the import system's own frames are skipped)
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self._warn()
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module ran when it was imported."""

    def get_code(self, fullname: str) -> Optional[CodeType]:
        """``python -m OLD`` runs the new module's code."""
        self._warn()
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new)  # type: ignore[union-attr]


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        new = MOVED.get(fullname)
        if new is None or importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
            return None
        try:
            if importlib.util.find_spec(new) is None:
                return None
        except ModuleNotFoundError:  # the new wing's folder is not there either
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, new))


def install() -> None:
    """Put the finder first on :data:`sys.meta_path`, once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


def renamed_attributes(module: str, renamed: dict[str, str], *, warn: bool = True) -> Callable[[str], object]:
    """A module ``__getattr__`` that gives each old name of ``renamed`` (old name -> the new object's dotted
    path) the object at that path, with a :class:`DeprecationWarning` (unless ``warn`` is false): ``from module
    import OLD``, a YAML ``class_path: module.OLD`` and objects pickled under the old name keep working."""

    def __getattr__(name: str) -> object:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, _, attribute = renamed[name].rpartition(".")
        if warn:
            warnings.warn(f"{module}.{name} is now {renamed[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), attribute)

    return __getattr__
