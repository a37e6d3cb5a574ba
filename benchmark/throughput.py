"""Training and inference throughput of fusion methods, recorded with the hardware they ran on.

Conventions follow timm's benchmark script and ``torch.utils.benchmark``: the first call is timed
apart (with ``--compile`` it holds the compilation), then ``warmup`` untimed steps, then ``iters``
timed steps, each bracketed by ``torch.cuda.synchronize`` on CUDA. Step times are reported as
median and interquartile range; samples/s is the number of samples over the total timed seconds.

* inference: ``model.eval()`` under ``torch.inference_mode()`` (and autocast with ``amp``);
* training: ``model.train()``, one :func:`fusebench.steps.training_step` with the method's
  optimizers from :func:`fusebench.steps.build_optimizers`, so a custom step (MMTM's three
  losses) is measured as it trains.

Two modes: ``model`` feeds one synthetic batch of the task's shapes again and again (IHM: 48
hourly bins; phenotyping: :data:`PHENOTYPING_BINS` bins; every image present for methods trained
on the paired cohort, one in four for methods trained on the partial cohort); ``end-to-end``
iterates the harness's data pipeline (``PreparedData.cohort("train", cohort).batches``) and
reports the data time (next batch + copy to the device) apart from the compute time.

Throughput is only comparable on identical hardware: every record carries its hardware and
software and a ``hardware_key``; tables are rendered one per key, never mixed.

Example:
    Measure MedFuse on the CPU and keep the records::

        fusebench throughput --method medfuse --device cpu --iters 5 --json throughput.json

    On a GPU, bf16 with channels-last at two batch sizes, with and without compilation::

        fusebench throughput --method medfuse --amp bf16 --channels-last --batch-size 16,64
        fusebench throughput --method medfuse --amp bf16 --channels-last --batch-size 16,64 --compile
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from fusebench import __version__
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_json
from fusebench.progress import make_progress
from fusebench.registry import Registry, get_registry
from fusebench.results import utc_now
from fusebench.specs import MethodSpec, ModelConfig, TaskSpec
from fusebench.steps import (
    batch_to_device,
    build_model,
    build_optimizers,
    trainable_parameter_count,
    training_step,
)

__all__ = [
    "PARTIAL_CXR_FRACTION",
    "PHENOTYPING_BINS",
    "SCHEMA_VERSION",
    "hardware_info",
    "leaderboard_record",
    "measure_throughput",
    "parse_batch_sizes",
    "render_tables",
    "synthetic_batch",
    "write_records",
]

SCHEMA_VERSION = 1
# Phenotyping uses the whole stay; model-only mode needs one fixed length, recorded per record.
PHENOTYPING_BINS = 72
# Model-only mode for partial-cohort methods: one stay in four has a chest X-ray.
PARTIAL_CXR_FRACTION = 0.25
EHR_FEATURES = 76
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("model", "end-to-end")

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- hardware / software


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Model", "Hardware"} and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_driver_version() -> str | None:
    # torch exposes the CUDA runtime, not the driver; the kernel module states its version here.
    with contextlib.suppress(OSError):
        match = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b",
                          Path("/proc/driver/nvidia/version").read_text())
        if match:
            return match.group(1)
    return None


def hardware_info(device: str) -> dict[str, Any]:
    """The hardware and software a measurement on ``device`` runs on.

    Returns:
        ``{"hardware": {...}, "software": {...}, "hardware_key": str}``; ``hardware_key`` names
        the accelerator (or CPU model and thread count) and groups comparable records.

    Example:
        >>> hardware_info("cpu")["hardware"]["device_type"]
        'cpu'
    """
    cpu_model = _cpu_model()
    hardware: dict[str, Any] = {
        "device_type": torch.device(device).type,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hardware["device_type"] == "cuda":
        index = torch.device(device).index
        properties = torch.cuda.get_device_properties(
            torch.cuda.current_device() if index is None else index)
        hardware.update(
            device_name=properties.name,
            device_count=torch.cuda.device_count(),
            compute_capability=f"{properties.major}.{properties.minor}",
            device_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda_version=torch.version.cuda,
            cudnn_version=torch.backends.cudnn.version(),
            driver_version=_nvidia_driver_version(),
        )
        key = (f"cuda: {properties.name} (cc {hardware['compute_capability']}) x"
               f"{hardware['device_count']}, host {cpu_model}")
    else:
        hardware.update(device_name=cpu_model, device_count=1, compute_capability=None,
                        device_memory_gib=None, cuda_version=None, cudnn_version=None,
                        driver_version=None)
        key = f"cpu: {cpu_model}, {hardware['torch_threads']} threads"
    software = {
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fusebench": __version__,
    }
    return {"hardware": hardware, "software": software, "hardware_key": key}


# --------------------------------------------------------------------------- inputs


def parse_batch_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """Batch sizes from ``"16,32"`` (or a sequence of ints), each a positive integer.

    Raises:
        FusebenchError: an entry that is not a positive integer, or an empty list.

    Example:
        >>> parse_batch_sizes("16, 64")
        (16, 64)
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    sizes = []
    for part in parts:
        value = str(part).strip()
        if not value.isdigit() or int(value) < 1:
            raise FusebenchError(f"--batch-size: {value!r} is not a positive integer; give a "
                                 "comma list such as 16,32,64")
        sizes.append(int(value))
    if not sizes:
        raise FusebenchError("--batch-size: no batch size given; give e.g. 16 or 16,32")
    return tuple(sizes)


def _ehr_bins(task: TaskSpec) -> int:
    # The discretizer's bin count for a fixed window: int(hours + 1 - eps), i.e. 48 for IHM.
    return int(task.period_hours) if task.period_hours is not None else PHENOTYPING_BINS


def _cxr_fraction(method: MethodSpec) -> float:
    return 1.0 if method.default_train_cohort == "paired" else PARTIAL_CXR_FRACTION


def synthetic_batch(task: TaskSpec, batch_size: int, *, ehr_bins: int, image_size: int,
                    cxr_fraction: float, seed: int = 0) -> Batch:
    """A batch of the contract in :mod:`fusebench.specs` with every stay ``ehr_bins`` long.

    Stays ``0, k, 2k, ...`` have an image where ``k = round(1 / cxr_fraction)`` (all of them for
    fraction 1); the others carry the zero image and ``has_cxr`` False.

    Example:
        >>> from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
        >>> batch = synthetic_batch(IN_HOSPITAL_MORTALITY, 8, ehr_bins=48, image_size=32,
        ...                         cxr_fraction=0.25)
        >>> batch["ehr"].shape, int(batch["has_cxr"].sum())
        (torch.Size([8, 48, 76]), 2)
    """
    generator = torch.Generator().manual_seed(seed)
    stride = max(1, round(1 / cxr_fraction)) if cxr_fraction > 0 else batch_size + 1
    has_cxr = torch.arange(batch_size) % stride == 0
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    return {
        "ehr": torch.randn(batch_size, ehr_bins, EHR_FEATURES, generator=generator),
        "ehr_lengths": torch.full((batch_size,), ehr_bins, dtype=torch.long),
        "cxr": images * has_cxr[:, None, None, None],
        "has_cxr": has_cxr,
        "y": torch.randint(0, 2, (batch_size, task.num_classes), generator=generator).float(),
        "stay_id": torch.arange(batch_size, dtype=torch.long),
    }


# --------------------------------------------------------------------------- memory and timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def _max_rss_kib() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if platform.system() == "Darwin" else value


class _PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on the CPU the peak RSS above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self.method = ""
        self._start_kib = 0

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda: torch.cuda.max_memory_allocated (tensors, whole process)"
        elif _reset_peak_rss():
            self._start_kib = _proc_status_kib("VmRSS") or 0
            self.method = ("cpu: peak RSS above the phase's start (VmHWM reset through "
                           "/proc/self/clear_refs)")
        else:
            self._start_kib = _max_rss_kib()
            self.method = ("cpu: growth of the process's peak RSS (getrusage ru_maxrss; a lower "
                           "bound: memory below an earlier peak is not seen)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        peak_kib = _proc_status_kib("VmHWM") if "VmHWM" in self.method else _max_rss_kib()
        self.peak_bytes = max(0, (peak_kib or 0) - self._start_kib) * 1024


@dataclass
class _PhaseTimes:
    first_call_s: float
    data_s: list[float]
    compute_s: list[float]
    samples: int
    peak_bytes: int | None
    memory_method: str


def _quartiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = [s * 1000.0 for s in seconds]
    if len(values) == 1:
        q1 = median = q3 = values[0]
    else:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}


def _run_phase(step: Callable[[Batch], Any], batches: Iterator[Batch], *, device: torch.device,
               warmup: int, iters: int, advance: Callable[[], None]) -> _PhaseTimes:
    """First call timed apart, ``warmup`` untimed steps, ``iters`` steps timed data | compute."""
    with _PeakMemory(device) as memory:
        batch = next(batches)
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        first_call_s = time.perf_counter() - start
        advance()
        for _ in range(warmup):
            step(next(batches))
            advance()
        _sync(device)
        data_s, compute_s, samples = [], [], 0
        for _ in range(iters):
            start = time.perf_counter()
            batch = next(batches)
            _sync(device)
            loaded = time.perf_counter()
            step(batch)
            _sync(device)
            data_s.append(loaded - start)
            compute_s.append(time.perf_counter() - loaded)
            samples += int(batch["has_cxr"].shape[0])
            advance()
    return _PhaseTimes(first_call_s, data_s, compute_s, samples, memory.peak_bytes, memory.method)


def _phase_record(times: _PhaseTimes, *, with_data: bool) -> dict[str, Any]:
    totals = [d + c for d, c in zip(times.data_s, times.compute_s, strict=True)]
    return {
        "samples_per_s": times.samples / sum(totals),
        "ms_per_step": _quartiles_ms(totals),
        "compute_ms": _quartiles_ms(times.compute_s),
        "data_ms": _quartiles_ms(times.data_s) if with_data else None,
        "first_call_ms": times.first_call_s * 1000.0,
        "peak_memory_mib": (None if times.peak_bytes is None
                            else round(times.peak_bytes / 2**20, 1)),
    }


# --------------------------------------------------------------------------- measurement


@dataclass
class _Settings:
    device: torch.device
    amp: str | None
    channels_last: bool
    compile: bool
    warmup: int
    iters: int
    image_size: int
    mode: str

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp])


def _check_settings(settings: _Settings, batch_sizes: Sequence[int], data: Any) -> None:
    if settings.device.type == "cuda" and not torch.cuda.is_available():
        raise FusebenchError("--device cuda: no CUDA device is available here; use --device cpu")
    if settings.amp is not None and settings.amp not in AMP_DTYPES:
        raise FusebenchError(f"--amp {settings.amp}: choose bf16 or fp16")
    if (settings.amp == "bf16" and settings.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise FusebenchError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    if settings.mode not in MODES:
        raise FusebenchError(f"--mode {settings.mode}: choose model or end-to-end")
    if settings.mode == "end-to-end" and data is None:
        raise FusebenchError("--mode end-to-end needs prepared data (the data options)")
    if settings.iters < 1 or settings.warmup < 0:
        raise FusebenchError("--iters must be at least 1 and --warmup at least 0")
    parse_batch_sizes(batch_sizes)


def _build_model(method: MethodSpec, task: TaskSpec, settings: _Settings) -> nn.Module:
    # No pretraining stage runs here: stage weights change values, not the architecture or cost.
    torch.manual_seed(0)
    config = ModelConfig(task=task.name, num_classes=task.num_classes,
                         image_size=settings.image_size, hparams=method.hparams_for(task.name))
    model = build_model(method, config).to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        # In place, so the module keeps its class and the method's training-step hook still
        # recognises it (torch.compile(model) would return a wrapper of another type).
        model.compile()
    return model


def _cohort_batches(data: Any, cohort: str, batch_size: int, *, train: bool,
                    settings: _Settings) -> Iterator[Batch]:
    """The cohort's batches as training (shuffled, augmented) or evaluation reads them, cycled."""
    view = data.cohort("train", cohort)
    if len(view) == 0:
        raise FusebenchError(f"the {cohort} training cohort of {data.task.name} is empty; "
                             "end-to-end mode needs data (check the data options)")
    epoch = 0
    while True:
        for batch in view.batches(batch_size, shuffle=train, seed=epoch, augment=train):
            yield batch_to_device(batch, settings.device, settings.channels_last)
        epoch += 1


def _first_call_guard(settings: _Settings, method: MethodSpec) -> contextlib.AbstractContextManager:
    if not settings.compile:
        return contextlib.nullcontext()
    return _compile_errors(method)


@contextlib.contextmanager
def _compile_errors(method: MethodSpec) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # inductor failures surface as many exception types
        summary = f"{type(error).__name__}: {error}".splitlines()[0]
        raise FusebenchError(f"--compile: torch.compile failed for {method.name} ({summary}); "
                             "run without --compile") from error


@dataclass
class _Subject:
    registry: Registry
    method: MethodSpec
    task: TaskSpec
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]


def _measure_batch_size(subject: _Subject, batch_size: int, settings: _Settings, data: Any,
                        advance: Callable[[], None]) -> dict[str, Any]:
    """Inference then training phases at one batch size; the measured part of a record."""
    cohort = subject.method.default_train_cohort
    if settings.mode == "model":
        batch = batch_to_device(synthetic_batch(
            subject.task, batch_size, ehr_bins=_ehr_bins(subject.task),
            image_size=settings.image_size, cxr_fraction=_cxr_fraction(subject.method),
        ), settings.device, settings.channels_last)

        def batches(train: bool) -> Iterator[Batch]:
            while True:
                yield batch
    else:
        def batches(train: bool) -> Iterator[Batch]:
            return _cohort_batches(data, cohort, batch_size, train=train, settings=settings)

    model, seen = subject.model, _InputStats()

    def infer(batch: Batch) -> None:
        seen.add(batch)
        with torch.inference_mode(), settings.autocast():
            model(batch)

    def train(batch: Batch) -> None:
        seen.add(batch)
        with settings.autocast():
            training_step(subject.registry, subject.method, model, batch, subject.optimizers)

    phases = {}
    for name, step, is_train in (("inference", infer, False), ("training", train, True)):
        model.train(is_train)
        with _first_call_guard(settings, subject.method):
            phases[name] = _run_phase(step, batches(is_train), device=settings.device,
                                      warmup=settings.warmup, iters=settings.iters,
                                      advance=advance)
    with_data = settings.mode == "end-to-end"
    compile_s = None
    if settings.compile:
        compile_s = sum(p.first_call_s - statistics.median(p.compute_s) for p in phases.values())
    return {
        "cohort": cohort,
        "ehr_bins": seen.mean_bins(),
        "cxr_present_fraction": seen.cxr_fraction(),
        "inference": _phase_record(phases["inference"], with_data=with_data),
        "training": _phase_record(phases["training"], with_data=with_data),
        "compile_s": compile_s,
        "memory_measure": phases["training"].memory_method,
    }


class _InputStats:
    """Mean EHR length and share of stays with an image over the batches a phase consumed."""

    def __init__(self) -> None:
        self.stays = self.bins = self.images = 0

    def add(self, batch: Batch) -> None:
        self.stays += int(batch["has_cxr"].shape[0])
        self.bins += int(batch["ehr_lengths"].sum())
        self.images += int(batch["has_cxr"].sum())

    def mean_bins(self) -> float:
        return self.bins / max(self.stays, 1)

    def cxr_fraction(self) -> float:
        return self.images / max(self.stays, 1)


def _release_memory(model: nn.Module, device: torch.device) -> None:
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure_halving(subject: _Subject, requested: int, settings: _Settings, data: Any,
                     advance: Callable[[], None]) -> dict[str, Any]:
    """Measure at ``requested``; on out-of-memory halve the batch size until it fits."""
    batch_size, halvings = requested, 0
    while True:
        out_of_memory = False
        try:
            measured = _measure_batch_size(subject, batch_size, settings, data, advance)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # freed outside the handler, whose traceback pins tensors
        if not out_of_memory:
            return {"requested_batch_size": requested, "batch_size": batch_size,
                    "oom_halvings": halvings, **measured}
        _release_memory(subject.model, settings.device)
        if batch_size == 1:
            raise FusebenchError(f"{subject.method.name}: out of device memory even at batch "
                                 "size 1; use a smaller --image-size or another device")
        batch_size, halvings = batch_size // 2, halvings + 1


def measure_throughput(
    method: MethodSpec,
    task: TaskSpec,
    *,
    device: str = "cpu",
    batch_sizes: Sequence[int] = (16,),
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    warmup: int = 3,
    iters: int = 10,
    image_size: int = 224,
    mode: str = "model",
    data: Any = None,
    progress: bool = True,
    registry: Registry | None = None,
) -> list[dict[str, Any]]:
    """Inference and training throughput of ``method`` on ``task``, one record per batch size.

    Args:
        method: the method (its builder, optimizers and training-step hooks are used).
        task: the task (label count; EHR length in model-only mode).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_sizes: requested batch sizes; on CUDA out-of-memory each is halved until it fits
            (``requested_batch_size``, ``batch_size`` and ``oom_halvings`` record it).
        amp: ``None`` (fp32), ``"bf16"`` or ``"fp16"`` autocast (fp16 runs without a gradient
            scaler: the training step is the method's own).
        channels_last: model and images in channels-last memory format.
        compile: ``model.compile()`` first; the first call of each phase is timed apart.
        warmup: untimed steps after the first call.
        iters: timed steps per phase.
        image_size: image side in model-only mode (end-to-end uses the data's).
        mode: ``"model"`` (synthetic batches) or ``"end-to-end"`` (``data``'s training cohort).
        data: a :class:`fusebench.data.PreparedData` for end-to-end mode.
        progress: show a progress bar.
        registry: plugins whose hooks run the training step (default: the process registry).

    Returns:
        One JSON-able record per batch size, with the hardware and settings.

    Raises:
        FusebenchError: bad settings, CUDA asked for without a device, or out of memory at batch
            size 1.

    Example:
        >>> from fusebench.registry import get_registry
        >>> registry = get_registry()
        >>> records = measure_throughput(  # doctest: +SKIP
        ...     registry.method("medfuse"), registry.task("in-hospital-mortality"), iters=5)
    """
    if mode == "end-to-end" and data is not None:
        image_size = int(data.config.image_size)
    settings = _Settings(torch.device(device), amp, channels_last, compile, warmup, iters,
                         image_size, mode)
    _check_settings(settings, batch_sizes, data)
    registry = registry or get_registry()
    model = _build_model(method, task, settings)
    subject = _Subject(registry, method, task, model,
                       build_optimizers(registry, method, model, method.hparams_for(task.name)))
    common = _common_fields(method, task, model, settings, data)
    records = []
    steps_per_size = 2 * (1 + warmup + iters)
    display = make_progress(transient=True) if progress else None
    with display or contextlib.nullcontext():
        bar = display.add_task(f"{method.name} throughput", status="",
                               total=steps_per_size * len(batch_sizes)) if display else None
        for requested in parse_batch_sizes(batch_sizes):
            if display:
                display.update(bar, status=f"batch {requested}")
            measured = _measure_halving(
                subject, requested, settings, data,
                advance=(lambda: display.advance(bar)) if display else (lambda: None))
            records.append({**common, **measured, "created": utc_now()})
    return records


def _common_fields(method: MethodSpec, task: TaskSpec, model: nn.Module, settings: _Settings,
                   data: Any) -> dict[str, Any]:
    dataset = None
    if settings.mode == "end-to-end":
        dataset = {"fingerprint": data.fingerprint, "is_demo": bool(data.config.is_demo)}
    return {
        "method": method.name,
        "distribution": method.distribution,
        "version": method.version,
        "task": task.name,
        "mode": settings.mode,
        "dataset": dataset,
        "image_size": settings.image_size,
        "precision": f"{settings.amp} autocast" if settings.amp else "fp32",
        "memory_format": "channels_last" if settings.channels_last else "contiguous",
        "compile": settings.compile,
        "warmup": settings.warmup,
        "iters": settings.iters,
        "parameters": {
            "trainable": trainable_parameter_count(model),
            "total": sum(p.numel() for p in model.parameters()),
        },
        **hardware_info(str(settings.device)),
    }


def leaderboard_record(method: MethodSpec, task: TaskSpec, *, device: str,
                       image_size: int) -> dict[str, Any]:
    """The throughput record attached to leaderboard entries: model-only mode, fp32, the
    method's batch size, 2 warm-up and 5 timed steps, no progress bar."""
    batch_size = int(method.hparams_for(task.name).get("batch_size", 16))
    return measure_throughput(method, task, device=device, batch_sizes=(batch_size,),
                              warmup=2, iters=5, image_size=image_size, progress=False)[0]


# --------------------------------------------------------------------------- output


def _ms(summary: Mapping[str, float] | None) -> str:
    if summary is None:
        return "-"
    return f"{summary['median']:.1f} [{summary['q1']:.1f}, {summary['q3']:.1f}]"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _setup(record: Mapping[str, Any]) -> str:
    parts = [record["precision"]]
    if record["memory_format"] == "channels_last":
        parts.append("channels-last")
    if record["compile"]:
        parts.append(f"compiled ({record['compile_s']:.1f} s)")
    return ", ".join(parts)


def render_tables(records: Sequence[Mapping[str, Any]], console: Console) -> None:
    """Print one table per hardware, task and mode: figures from different hardware never share
    a table."""
    keys = list(dict.fromkeys((r["hardware_key"], r["task"], r["mode"]) for r in records))
    for key in keys:
        group = [r for r in records if (r["hardware_key"], r["task"], r["mode"]) == key]
        table = Table(title=escape(f"{key[1]} throughput ({key[2]} mode) on {key[0]}"),
                      caption=escape(f"torch {group[0]['software']['torch']}; ms/step: median "
                                     f"[q1, q3]; memory: {group[0]['memory_measure']}"))
        for column in ("method", "batch", "setup", "infer samples/s", "infer ms/step",
                       "train samples/s", "train ms/step", "train data ms",
                       "peak MiB infer/train", "trainable params"):
            table.add_column(column, overflow="fold")
        for r in group:
            batch = str(r["batch_size"])
            if r["oom_halvings"]:
                batch += f" (asked {r['requested_batch_size']}, OOM)"
            cells = (
                r["method"], batch, _setup(r),
                f"{r['inference']['samples_per_s']:,.1f}", _ms(r["inference"]["ms_per_step"]),
                f"{r['training']['samples_per_s']:,.1f}", _ms(r["training"]["ms_per_step"]),
                _ms(r["training"]["data_ms"]),
                f"{_mib(r['inference']['peak_memory_mib'])} / "
                f"{_mib(r['training']['peak_memory_mib'])}",
                f"{r['parameters']['trainable']:,}",
            )
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``{"schema_version": 1, "records": [...]}`` to ``path`` atomically."""
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "records": list(records)})
