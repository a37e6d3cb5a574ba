"""fusebench: a pluggable benchmark harness for clinical time-series + chest X-ray fusion."""

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

__version__ = "0.1.0"

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
