"""Where a training step's time goes, per built-in method, on real batches (not a test; run by
hand).

::

    python tests/benchmarks/profile_methods.py [--data-root DIR] [--image-size 224]
        [--batch-size 16] [--steps 8] [--task in-hospital-mortality] [--json out.json]

For every registered method (or ``--methods a,b``): the demo's (or ``--data-root``'s) training
batches of the method's default cohort, with the training augmentation, through the method's
own training step on the CPU; ``--steps`` steps are profiled after two warm-up steps. Reported per
method: the median time to assemble a batch (cache -> tensors), the median step (forward,
backward, optimizer), the images that went through a CNN per step, and the operators that took
most of the step's CPU time (torch.profiler, self time, summed over the steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from fusebench.data import DataConfig, prepare
from fusebench.data.demo import ensure_demo
from fusebench.registry import load_registry
from fusebench.specs import ModelConfig
from fusebench.steps import batch_to_device, build_model, build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING

WARMUP_STEPS = 2
TOP_OPERATORS = 6


def profile_method(registry: Any, method_name: str, data: Any, task: Any, image_size: int,
                   batch_size: int, steps: int) -> dict[str, Any]:
    method = registry.method(method_name)
    hparams = {**method.hparams_for(task.name), "batch_size": batch_size}
    torch.manual_seed(0)
    model = build_model(method, ModelConfig(task=task.name, num_classes=task.num_classes,
                                            image_size=image_size, hparams=hparams))
    optimizers = build_optimizers(registry, method, model, hparams)
    model.train()
    view = data.cohort("train", method.default_train_cohort)
    batches = view.batches(batch_size, shuffle=True, seed=0, augment=True)
    assembly, step_times, images = [], [], []

    def one_step() -> None:
        begin = time.perf_counter()
        batch = batch_to_device(next(batches), "cpu")
        assembly.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        training_step(registry, method, model, batch, optimizers)
        step_times.append(time.perf_counter() - begin)
        images.append(int(batch["has_cxr"].sum()))

    for _ in range(WARMUP_STEPS):
        one_step()
    for measured in (assembly, step_times, images):
        measured.clear()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            one_step()
    total = sum(step_times) + sum(assembly)
    top = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "method": method_name,
        "cohort": method.default_train_cohort,
        "assembly_ms": round(statistics.median(assembly) * 1e3, 1),
        "step_ms": round(statistics.median(step_times) * 1e3, 1),
        "assembly_share": round(sum(assembly) / total, 3),
        "cnn_images_per_step": round(statistics.mean(images), 1),
        "top_operators": [
            {"name": event.key, "self_cpu_share": round(event.self_cpu_time_total
                                                        / max(1, sum(e.self_cpu_time_total
                                                                     for e in top)), 3)}
            for event in top[:TOP_OPERATORS]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--task", default="in-hospital-mortality")
    parser.add_argument("--methods", default="")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.data_root or ensure_demo("small", progress=False)
    task = {t.name: t for t in (IN_HOSPITAL_MORTALITY, PHENOTYPING)}[args.task]
    data = prepare(DataConfig(ehr_root=root / "ehr", cxr_root=root / "cxr",
                              image_size=args.image_size), task, progress=False)
    registry = load_registry()
    names = [n for n in args.methods.split(",") if n] or sorted(registry.methods)
    records = []
    for name in names:
        record = profile_method(registry, name, data, task, args.image_size, args.batch_size,
                                args.steps)
        records.append(record)
        operators = ", ".join(f"{o['name']} {o['self_cpu_share']:.0%}"
                              for o in record["top_operators"][:4])
        print(f"{name:11} {record['cohort']:8} assembly {record['assembly_ms']:7.1f} ms  "
              f"step {record['step_ms']:8.1f} ms  CNN images/step "
              f"{record['cnn_images_per_step']:5.1f}  | {operators}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "settings": {"task": task.name, "image_size": args.image_size,
                         "batch_size": args.batch_size, "steps": args.steps,
                         "threads": torch.get_num_threads(), "data_root": str(root)},
            "methods": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
