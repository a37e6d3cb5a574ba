"""fusebench: a pluggable benchmark harness for clinical time-series + chest X-ray fusion."""

from importlib import metadata as _metadata

from fusebench.errors import FusebenchError
from fusebench.hookspecs import hookimpl
from fusebench.specs import (
    COHORTS,
    ExecutorOption,
    ExecutorSpec,
    MethodSpec,
    ModelConfig,
    PretrainingStage,
    TaskSpec,
)

try:  # one source of truth: the version pyproject.toml gives the installed distribution
    __version__ = _metadata.version("fusebench")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "COHORTS",
    "ExecutorOption",
    "ExecutorSpec",
    "FusebenchError",
    "MethodSpec",
    "ModelConfig",
    "PretrainingStage",
    "TaskSpec",
    "__version__",
    "hookimpl",
]
