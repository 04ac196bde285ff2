"""Name → class registries, one per kind of plugin, filled by decorators and entry points.

Built-ins register themselves when their package is imported; a registry imports
that package the first time it is asked for a name, and loads the entry points of
installed distributions at the same moment, so ``aaq list`` and a spec see the
same set whatever was imported before.

An installed plugin that cannot be loaded or breaks its kind's contract breaks only
itself: it is kept as a *broken* entry with its reason, listed as such, and refused
(with that reason) only when a spec names it.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
from typing import Callable, Generic, TypeVar

from aaq.errors import PluginError, SpecError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Check = Callable[[str, T], None]


class Registry(Generic[T]):
    """Maps the names used in a spec to plugin classes of one kind.

    ``check(name, obj)`` runs at registration and raises ``PluginError`` for a
    plugin that does not honour the kind's contract, so a broken plugin is
    refused before any spec refers to it.
    """

    def __init__(self, kind: str, entry_point_group: str, builtins: str, check: Check | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtins = builtins
        self._check = check
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._broken: dict[str, PluginError] = {}
        self._loaded = False

    def register(self, name: str, obj: T, source: str = "aaq") -> T:
        """Add ``obj`` under ``name``; the same object twice is a no-op, another object is refused."""
        known = self._entries.get(name)
        if known is obj:
            return obj
        if known is not None:
            raise PluginError(f"the {self.kind} name is already taken by {self._sources[name]}", name, source)
        if self._check is not None:
            try:
                self._check(name, obj)
            except PluginError as exc:
                if exc.source is not None or source == "aaq":
                    raise
                raise PluginError(exc.reason, name, source) from None
        self._entries[name] = obj
        self._sources[name] = source
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("Name")`` registers the decorated class from the module defining it."""

        def wrap(obj: T) -> T:
            return self.register(name, obj, source=_module_of(obj))

        return wrap

    def get(self, name: str, json_path: str = "") -> T:
        """The plugin called ``name``; an unknown name is a ``SpecError`` with the nearest known name."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            if name in self._broken:
                raise self._broken[name] from None
            raise SpecError([(json_path, self.unknown_message(name))]) from None

    def unknown_message(self, name: str) -> str:
        """Why ``name`` cannot be used: broken (and why), or unknown with the nearest known name."""
        self._ensure_loaded()
        if name in self._broken and name not in self._entries:
            return f"the {self.kind} {name!r} is installed but broken: {self._broken[name]}"
        near = difflib.get_close_matches(name, self._entries, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        known = ", ".join(sorted(self._entries)) or "none"
        return (f"unknown {self.kind} {name!r}{hint} (known: {known}; "
                f"a plugin must be imported or installed with an {self.entry_point_group!r} entry point)")

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def broken(self) -> dict[str, PluginError]:
        """Installed plugins that could not be registered, by name, with why (``aaq list`` shows them)."""
        self._ensure_loaded()
        return dict(self._broken)

    def source(self, name: str) -> str:
        """Where ``name`` came from: ``aaq`` for built-ins, a module or a distribution otherwise."""
        self._ensure_loaded()
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtins)
        self.load_entry_points()

    def load_entry_points(self) -> int:
        """Register every entry point of the group; returns how many were new.

        One that cannot be loaded or registered is kept in ``broken()`` instead of failing
        every command; ``get`` raises its ``PluginError`` when a spec names it.
        """
        added = 0
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else ep.value
            source = f"distribution {dist}"
            if ep.name in self._entries and self._sources[ep.name].startswith("distribution "):
                continue
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin's import error must name the plugin
                self._mark_broken(PluginError(f"cannot load entry point {ep.value!r}: "
                                              f"{type(exc).__name__}: {exc}", ep.name, source))
                continue
            if self._entries.get(ep.name) is obj:
                self._sources[ep.name] = source
                continue
            try:
                self.register(ep.name, obj, source=source)
            except PluginError as exc:
                self._mark_broken(exc if exc.source else PluginError(exc.reason, ep.name, source))
                continue
            added += 1
        return added

    def _mark_broken(self, error: PluginError) -> None:
        logger.debug("%s", error)
        self._broken.setdefault(error.name, error)


def subclass_check(base: type, what: str) -> Check:
    """The registration check of a plugin kind that is a subclass of ``base`` (named ``what`` in the error);
    a class without a ``name`` of its own takes the one it is registered under."""

    def check(name: str, cls: object) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{what} must be a subclass of {base.__module__}.{base.__qualname__}", name)
        if not getattr(cls, "name", ""):
            cls.name = name

    return check


def _module_of(obj: object) -> str:
    module = getattr(obj, "__module__", "") or ""
    return "aaq" if module.split(".")[0] == "aaq" else f"module {module}"
