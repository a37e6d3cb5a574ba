"""Plugin discovery: the entry-point group ``fusebench.plugins``, loaded one plugin at a time.

A plugin that fails to import or to register is reported as a warning naming the plugin, its
distribution, its entry point and the error with its file and line, and every other plugin still
works. Importing a plugin may neither end the process (``sys.exit`` at import is a failure of that
plugin) nor write to stdout (its output goes to stderr, so ``--json`` output stays valid). Method
and task names are ``[a-z0-9][a-z0-9-]*``: they name folders, CSV columns and CLI arguments.
Environment variables:

- ``FUSEBENCH_STRICT_PLUGINS=1``: any plugin failure is an error instead of a warning.
- ``FUSEBENCH_DISABLE_PLUGINS=a,b``: skip the entry points named ``a`` and ``b``.

Example:
    >>> from fusebench.registry import load_registry
    >>> registry = load_registry()
    >>> registry.task("phenotyping").num_classes
    25
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import json
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import Distribution, entry_points
from pathlib import Path
from typing import Any

import pluggy

from fusebench import hookspecs
from fusebench.errors import FusebenchError
from fusebench.specs import ExecutorSpec, MethodSpec, PretrainingStage, TaskSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "FusebenchDeprecationWarning",
    "NAME_PATTERN",
    "PluginFailure",
    "PluginWarning",
    "Registry",
    "extra_plugins",
    "get_registry",
    "load_registry",
    "set_extra_plugins",
]

ENTRY_POINT_GROUP = "fusebench.plugins"
_LOCAL = "(--plugin, not installed)"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")
_MAX_NAME = 64


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered.

    Attributes:
        plugin: the entry point's name (or the ``--plugin`` module).
        distribution: the installed distribution that declares it.
        entry_point: where it is declared, e.g. ``my-fusion = "my_pkg.method" in
            /src/my-pkg/pyproject.toml [project.entry-points."fusebench.plugins"]``.
        error: the error, with the file and line it came from.
        names: method or task names it tried to register (known when registration failed).
    """

    plugin: str
    distribution: str
    entry_point: str
    error: str
    names: tuple[str, ...] = ()

    def message(self) -> str:
        """One line: which plugin failed, where it is declared and why."""
        return (f"plugin {self.plugin!r} from {self.distribution} failed: {self.error} "
                f"(entry point {self.entry_point})")


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; the others still work."""


class FusebenchDeprecationWarning(FutureWarning):
    """A plugin uses a part of the contract that will be removed (shown to users by default)."""


# deprecated global hook -> the MethodSpec field that replaces it
_DEPRECATED_TRAINING_HOOKS = {
    "fusebench_configure_optimizers": "configure_optimizers",
    "fusebench_training_step": "training_step",
}


@dataclass
class Registry:
    """Everything the installed plugins registered.

    Attributes:
        manager: the pluggy plugin manager.
        methods: method specs by name.
        tasks: task specs by name.
        stages: pretraining stages by name.
        executors: grid executors by name.
        problems: one line per plugin that failed to load or register.
        failures: the same failures, structured (what a lookup of a missing name reports).
    """

    manager: pluggy.PluginManager
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    stages: dict[str, PretrainingStage] = field(default_factory=dict)
    executors: dict[str, ExecutorSpec] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)

    def method(self, name: str) -> MethodSpec:
        """The method called ``name``; an error naming the failed plugin that may have provided
        it, or suggesting the closest names."""
        return _lookup(self.methods, name, "method", "fusebench plugins list", self.failures)

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; an error suggesting the closest names otherwise."""
        return _lookup(self.tasks, name, "task", "fusebench tasks list", self.failures)

    def stage(self, name: str) -> PretrainingStage:
        """The pretraining stage called ``name``."""
        return _lookup(self.stages, name, "pretraining stage", "fusebench plugins list")

    def executor(self, name: str) -> ExecutorSpec:
        """The executor called ``name``."""
        return _lookup(self.executors, name, "executor", "fusebench leaderboard --help")


def _lookup(table: dict[str, Any], name: str, kind: str, list_command: str,
            failures: Sequence[PluginFailure] = ()) -> Any:
    if name in table:
        return table[name]
    # The plugin that registered it, or whose entry point has its name, could not be loaded.
    culprit = next((f for f in failures if name in f.names), None) or next(
        (f for f in failures if _same_name(f.plugin, name)), None)
    if culprit is not None:
        raise FusebenchError(f"{kind} {name!r} is not available: {culprit.message()}; fix the "
                             "plugin (or reinstall it) and rerun")
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"see `{list_command}`"
    if failures:
        others = "; ".join(f.message() for f in failures[:2])
        hint += f"; {len(failures)} plugin(s) failed to load: {others}"
    raise FusebenchError(f"unknown {kind} {name!r}: {hint}")


def _same_name(plugin: str, name: str) -> bool:
    """Entry point and method usually share a name (``my-fusion`` / ``my_fusion.method``)."""
    def simple(text: str) -> str:
        return re.sub(r"[-_.]", "", text.lower())
    module = simple(plugin.split(".")[0])
    return simple(name) in {simple(plugin), module, module.removeprefix("fusebench")}


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
        self.declared: dict[str, str] = {}  # plugin name -> its entry point, where declared
        self.problems: list[str] = []
        self.failures: list[PluginFailure] = []

    def fail(self, plugin: str, distribution: str, error: BaseException | str,
             names: Sequence[str] = ()) -> None:
        failure = PluginFailure(plugin, distribution, self.declared.get(plugin, "?"),
                                _describe(error), tuple(names))
        message = failure.message()
        if self.strict:
            raise FusebenchError(
                f"{message} (FUSEBENCH_STRICT_PLUGINS is set; unset it or fix the plugin)"
            )
        self.problems.append(message)
        self.failures.append(failure)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def register(self, plugin: str, distribution: str, version: str, load: Any,
                 declared: str = "?") -> None:
        self.declared[plugin] = declared
        try:
            # A plugin's prints must not corrupt --json output on stdout.
            with contextlib.redirect_stdout(sys.stderr):
                module = load()
            self.manager.register(module, name=plugin)
        except (Exception, SystemExit) as error:  # a broken plugin must not break the others
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
            specs = []
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    specs = list(impl.function() or [])
                bad = [s for s in specs if not isinstance(s, spec_type)]
                if bad:
                    raise TypeError(f"{hook_name} returned {type(bad[0]).__name__}, "
                                    f"expected {spec_type.__name__}")
                if spec_type in (MethodSpec, TaskSpec):
                    _check_names(specs, spec_type, impl.function)
            except (Exception, SystemExit) as error:
                self.fail(name, distribution, error,
                          [str(getattr(s, "name", ""))[:_MAX_NAME] for s in specs])
                continue
            stamp = {"distribution": distribution, "version": version}
            if spec_type is MethodSpec:
                stamp["plugin"] = name
            collected += [dataclasses.replace(spec, **stamp) for spec in specs]
        return collected

    def warn_deprecated_hooks(self) -> None:
        """Name every plugin that still implements a deprecated global training hook."""
        for hook_name, field_name in _DEPRECATED_TRAINING_HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                name = self.manager.get_name(impl.plugin) or "?"
                distribution = self.origin.get(name, ("?", ""))[0]
                warnings.warn(
                    f"plugin {name!r} from {distribution} implements {hook_name}, which is "
                    f"deprecated: set MethodSpec.{field_name} on its methods instead (the hook "
                    f"now applies only to methods that plugin registers)",
                    FusebenchDeprecationWarning, stacklevel=3,
                )


class _InvalidName(ValueError):
    """A method or task name outside ``NAME_PATTERN``; carries the registering function's place."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def _check_names(specs: Sequence[Any], spec_type: type, function: Any) -> None:
    kind = "method" if spec_type is MethodSpec else "task"
    for spec in specs:
        name = spec.name
        if not (isinstance(name, str) and len(name) <= _MAX_NAME and NAME_PATTERN.fullmatch(name)):
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            code = getattr(function, "__code__", None)
            where = f"{code.co_filename}:{code.co_firstlineno}" if code else ""
            raise _InvalidName(f"{kind} name {shown} is not allowed: use lowercase letters, "
                               f"digits and dashes, first a letter or digit, at most {_MAX_NAME} "
                               "characters ([a-z0-9][a-z0-9-]*)", where)


# Frames in these files are the harness's own, not the plugin's.
_HARNESS_FILES = (str(Path(__file__).resolve().parent), str(Path(pluggy.__file__).parent),
                  str(Path(importlib.__file__).parent), "<frozen ")


def _describe(error: BaseException | str) -> str:
    """One line: the error and the plugin's file:line it came from."""
    if isinstance(error, str):
        return error
    if isinstance(error, SystemExit):
        text = f"called sys.exit({error.code!r}) while loading"
    else:
        text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    if isinstance(error, _InvalidName):
        where = error.where
    elif isinstance(error, SyntaxError) and error.filename:
        where = f"{error.filename}:{error.lineno}"
    else:
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if not f.filename.startswith(_HARNESS_FILES)]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{text} at {where}" if where else text


def _declared_in(entry_point: Any) -> str:
    """``name = "module"`` and the pyproject.toml that declares it (editable installs: its path)."""
    dist: Distribution | None = entry_point.dist
    text = f'{entry_point.name} = "{entry_point.value}"'
    table = f'[project.entry-points."{ENTRY_POINT_GROUP}"]'
    if dist is None:
        return text
    project = None
    with contextlib.suppress(Exception):  # direct_url.json: PEP 610, written by pip
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            project = Path(url.removeprefix("file://")) / "pyproject.toml"
    if project is not None and project.is_file():
        return f"{text} in {project} {table}"
    return f"{text} in the pyproject.toml of {dist.name} {table}"


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
        loader.register(entry_point.name, distribution, version, entry_point.load,
                        _declared_in(entry_point))
    for module in extra_modules:
        loader.register(module, _LOCAL, "", lambda m=module: importlib.import_module(m),
                        f"--plugin {module}")
    loader.check_pending()
    loader.warn_deprecated_hooks()
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
        failures=loader.failures,
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
