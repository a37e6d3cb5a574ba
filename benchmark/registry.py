"""Plugin discovery: the entry-point group ``fusebench.plugins``, loaded one plugin at a time.

A plugin that fails to import or to register is reported as a warning naming the plugin, its
distribution and the error, and every other plugin still works. Environment variables:

- ``FUSEBENCH_STRICT_PLUGINS=1``: any plugin failure is an error instead of a warning.
- ``FUSEBENCH_DISABLE_PLUGINS=a,b``: skip the entry points named ``a`` and ``b``.

Example:
    >>> from fusebench.registry import load_registry
    >>> registry = load_registry()
    >>> registry.task("phenotyping").num_classes
    25
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from fusebench import hookspecs
from fusebench.errors import FusebenchError
from fusebench.specs import ExecutorSpec, MethodSpec, PretrainingStage, TaskSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginWarning",
    "Registry",
    "extra_plugins",
    "get_registry",
    "load_registry",
    "set_extra_plugins",
]

ENTRY_POINT_GROUP = "fusebench.plugins"
_LOCAL = "(--plugin, not installed)"


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; the others still work."""


@dataclass
class Registry:
    """Everything the installed plugins registered.

    Attributes:
        manager: the pluggy plugin manager (call training hooks through ``manager.hook``).
        methods: method specs by name.
        tasks: task specs by name.
        stages: pretraining stages by name.
        executors: grid executors by name.
        problems: one line per plugin that failed to load or register.
    """

    manager: pluggy.PluginManager
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    stages: dict[str, PretrainingStage] = field(default_factory=dict)
    executors: dict[str, ExecutorSpec] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodSpec:
        """The method called ``name``; an error suggesting the closest names otherwise."""
        return _lookup(self.methods, name, "method", "fusebench plugins list")

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; an error suggesting the closest names otherwise."""
        return _lookup(self.tasks, name, "task", "fusebench tasks list")

    def stage(self, name: str) -> PretrainingStage:
        """The pretraining stage called ``name``."""
        return _lookup(self.stages, name, "pretraining stage", "fusebench plugins list")

    def executor(self, name: str) -> ExecutorSpec:
        """The executor called ``name``."""
        return _lookup(self.executors, name, "executor", "fusebench leaderboard --help")


def _lookup(table: dict[str, Any], name: str, kind: str, list_command: str) -> Any:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"see `{list_command}`"
    raise FusebenchError(f"unknown {kind} {name!r}: {hint}")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_names() -> set[str]:
    raw = os.environ.get("FUSEBENCH_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class _Loader:
    """Registers plugins one by one, collecting failures instead of propagating them."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.origin: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.problems: list[str] = []

    def fail(self, plugin: str, distribution: str, error: BaseException | str) -> None:
        message = f"plugin {plugin!r} from {distribution} failed: {_describe(error)}"
        if self.strict:
            raise FusebenchError(
                f"{message} (FUSEBENCH_STRICT_PLUGINS is set; unset it or fix the plugin)"
            )
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def register(self, plugin: str, distribution: str, version: str, load: Any) -> None:
        try:
            module = load()
            self.manager.register(module, name=plugin)
        except Exception as error:  # a broken plugin must not break the others
            self.fail(plugin, distribution, error)
            return
        self.origin[plugin] = (distribution, version)

    def check_pending(self) -> None:
        """Unregister plugins implementing hooks that do not exist (typos), one at a time."""
        while True:
            try:
                self.manager.check_pending()
                return
            except pluggy.PluginValidationError as error:
                name = self.manager.get_name(error.plugin) or "?"
                self.manager.unregister(error.plugin)
                distribution = self.origin.pop(name, ("?", ""))[0]
                self.fail(name, distribution, error)

    def collect(self, hook_name: str, spec_type: type) -> list[Any]:
        """Call one registration hook plugin by plugin; stamp each spec with its distribution."""
        collected = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            name = self.manager.get_name(impl.plugin) or "?"
            distribution, version = self.origin.get(name, ("?", ""))
            try:
                specs = list(impl.function() or [])
                bad = [s for s in specs if not isinstance(s, spec_type)]
                if bad:
                    raise TypeError(f"{hook_name} returned {type(bad[0]).__name__}, "
                                    f"expected {spec_type.__name__}")
            except Exception as error:
                self.fail(name, distribution, error)
                continue
            collected += [
                dataclasses.replace(spec, distribution=distribution, version=version)
                for spec in specs
            ]
        return collected


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}".strip().splitlines()[0]


def _by_name(specs: Iterable[Any], kind: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for spec in specs:
        if spec.name in table:
            other = table[spec.name]
            raise FusebenchError(
                f"two {kind}s are named {spec.name!r}: one from {other.distribution}, one from "
                f"{spec.distribution}; uninstall one or disable it with "
                f"FUSEBENCH_DISABLE_PLUGINS"
            )
        table[spec.name] = spec
    return table


def load_registry(
    extra_modules: Sequence[str] = (), *, strict: bool | None = None
) -> Registry:
    """Discover every plugin and collect what it registers.

    Args:
        extra_modules: dotted module paths to load although not installed (``--plugin``).
        strict: treat a failing plugin as an error; default from ``FUSEBENCH_STRICT_PLUGINS``.

    Returns:
        The :class:`Registry`.

    Raises:
        FusebenchError: a name registered twice, or any plugin failure in strict mode.
    """
    loader = _Loader(_env_flag("FUSEBENCH_STRICT_PLUGINS") if strict is None else strict)
    disabled = _disabled_names()
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if entry_point.name in disabled:
            continue
        dist = entry_point.dist
        distribution = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else ""
        loader.register(entry_point.name, distribution, version, entry_point.load)
    for module in extra_modules:
        loader.register(module, _LOCAL, "", lambda m=module: importlib.import_module(m))
    loader.check_pending()
    return Registry(
        manager=loader.manager,
        methods=_by_name(loader.collect("fusebench_register_methods", MethodSpec), "method"),
        tasks=_by_name(loader.collect("fusebench_register_tasks", TaskSpec), "task"),
        stages=_by_name(
            loader.collect("fusebench_register_pretraining_stages", PretrainingStage),
            "pretraining stage",
        ),
        executors=_by_name(loader.collect("fusebench_register_executors", ExecutorSpec),
                           "executor"),
        problems=loader.problems,
    )


_extra_modules: tuple[str, ...] = ()
_cached: Registry | None = None


def set_extra_plugins(modules: Sequence[str]) -> None:
    """Set the not-installed plugin modules (``--plugin``) that :func:`get_registry` loads."""
    global _extra_modules, _cached
    _extra_modules = tuple(modules)
    _cached = None


def extra_plugins() -> tuple[str, ...]:
    """The modules set by :func:`set_extra_plugins` (what a worker process must load too)."""
    return _extra_modules


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_registry(_extra_modules)
    return _cached
