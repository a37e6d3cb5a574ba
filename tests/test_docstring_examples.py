"""The ``>>>`` examples in the library's docstrings run and print what they show.

Modules are imported by their installed names (``fusebench...``), so the examples see exactly
what a user's ``import`` gives (pytest's ``--doctest-modules`` would import the folders
``benchmark/``, ``plugins/`` and ``tasks/`` under their folder names instead).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile

import pytest

import fusebench
import fusebench.plugins
import fusebench.tasks

# three trees: the mapped subpackages live in their own folders, not under benchmark/
PACKAGES = (fusebench, fusebench.plugins, fusebench.tasks)
MODULES = sorted({package.__name__ for package in PACKAGES} | {
    info.name for package in PACKAGES
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    if not info.name.endswith("__main__")})


def test_every_library_module_is_found() -> None:
    assert {"fusebench.cli._common", "fusebench.registry", "fusebench.plugins.encoders",
            "fusebench.tasks.builtin"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples' mkdtemp() lands here
    module = importlib.import_module(name)
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              report=False)
    assert outcome.failed == 0, f"{outcome.failed} docstring example(s) of {name} failed; run " \
                                f"python -m doctest -v on it to see which"
