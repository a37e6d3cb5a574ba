"""fusebench against the original MedFuse code on the same files, stage by stage (not a test; run
by hand).

::

    python tests/benchmarks/bench_vs_original.py --medfuse-dir /path/to/MedFuse \\
        [--data-root DIR | --size small] [--repeats 3] [--json report.json]

The original (github.com/nyuad-cai/MedFuse) is never vendored here: check it out yourself and
point ``--medfuse-dir`` at it. Its code runs unchanged in a child process (``--original-python``,
default this interpreter; it needs torch, torchvision, pandas, scikit-learn, Pillow); the small
driver below only replaces ``fusion_main.py``'s set-up, which reads its discretizer header from
one named real MIMIC-IV episode, by the same set-up on the first episode of the data root, and
times the trainer's own methods.

Both sides run MedFuse on in-hospital mortality, partial cohort (every training stay, with or
without a chest X-ray), batch 16, 224-px crops, the MedFuse-2022 normaliser, randomly initialised
encoders (pretrained stages change no cost), CPU, the default torch threads. Stages:

- ``data``: the original builds its datasets and loaders (it reads, discretises and normalises
  every episode and decodes every image again in each epoch, inside the epoch's time);
  fusebench builds its cache from scratch (discretised series, decoded and resized images).
- ``train-epoch``: one training epoch. The original's ``train_epoch`` also bootstraps the
  training predictions (1,000 resamples in ``computeAUROC``): that time is measured and taken
  out of this stage.
- ``eval-pass``: predictions over the test split, every stay (the original's ``validate`` on
  its test loader, which keeps the stays without an image; its validation loader keeps only the
  paired ones), without the bootstrap.
- ``bootstrap``: 1,000-resample AUROC/AUPRC intervals of those test predictions (the
  original's ``computeAUROC``; fusebench's ``score_predictions``).
- ``cxr-stage-data``: what stage 1 reads before its first epoch (the original: its datasets;
  fusebench: the radiology image cache, every training and validation image decoded and
  resized once).
- ``cxr-stage-epoch``: one epoch of stage 1, ResNet34 + Linear(512, 14) on every training
  image with the 14 radiology labels (the original's ``uni_cxr`` radiology script; fusebench's
  ``cxr-radiology`` stage), its bootstrap likewise taken out.

Repeats alternate original and fusebench, and every record carries the load average around it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH_SIZE = 16
IMAGE_SIZE = 224
SEED = 0
STAGES = ("data", "train-epoch", "eval-pass", "bootstrap", "cxr-stage-data", "cxr-stage-epoch")

# Run by --original-python with the MedFuse checkout as working folder; argv[1] is a JSON list of
# fusion_main.py arguments, argv[2] "fusion" or "radiology". Prints one line "BENCH {json}".
ORIGINAL_DRIVER = r'''
import glob, json, os, sys, time
import numpy as np
import torch
sys.path.insert(0, os.getcwd())
sys.argv = ["fusion_main.py", *json.loads(sys.argv[1])]
from arguments import args_parser
from ehr_utils.preprocessing import Discretizer, Normalizer
from datasets.ehr_dataset import get_datasets
from datasets.cxr_dataset import get_cxr_datasets
from datasets.fusion import load_cxr_ehr
from trainers.fusion_trainer import FusionTrainer

args = args_parser().parse_args()
torch.manual_seed(1002)
np.random.seed(1002)
times = {}
started = time.perf_counter()
discretizer = Discretizer(timestep=float(args.timestep), store_masks=True,
                          impute_strategy="previous", start_time="zero")
episode = sorted(glob.glob(f"{args.ehr_data_dir}/{args.task}/train/*_timeseries.csv"))[0]
with open(episode) as handle:
    handle.readline()
    rows = np.stack([np.array(line.strip().split(",")) for line in handle])
header = discretizer.transform(rows)[1].split(",")
normalizer = Normalizer(fields=[i for i, name in enumerate(header) if "->" not in name])
normalizer.load_params(os.path.join(os.getcwd(), "normalizers",
                                    f"ph_ts{args.timestep}.input_str:previous.start_time:zero.normalizer"))
ehr_train, ehr_val, ehr_test = get_datasets(discretizer, normalizer, args)
cxr_train, cxr_val, cxr_test = get_cxr_datasets(args)
train_dl, val_dl, test_dl = load_cxr_ehr(args, ehr_train, ehr_val, cxr_train, cxr_val,
                                         ehr_test, cxr_test)
times["data"] = time.perf_counter() - started
trainer = FusionTrainer(train_dl, val_dl, args, test_dl=test_dl)
bootstrap = [0.0]
compute_auroc = trainer.computeAUROC
def timed_compute_auroc(*positional, **named):
    begin = time.perf_counter()
    try:
        return compute_auroc(*positional, **named)
    finally:
        bootstrap[0] += time.perf_counter() - begin
trainer.computeAUROC = timed_compute_auroc
trainer.epoch = trainer.start_epoch  # as its train() loop sets it (the ETA line divides by it)
trainer.model.train()
begin = time.perf_counter()
trainer.train_epoch()
times["train-epoch"] = time.perf_counter() - begin - bootstrap[0]
times["train-bootstrap"] = bootstrap[0]
if args.data_pairs != "radiology":
    bootstrap[0] = 0.0
    trainer.model.eval()
    begin = time.perf_counter()
    trainer.validate(trainer.test_dl)
    times["eval-pass"] = time.perf_counter() - begin - bootstrap[0]
    times["bootstrap"] = bootstrap[0]
    times["eval-rows"] = len(test_dl.dataset)
times["train-rows"] = len(train_dl) * args.batch_size
print("BENCH " + json.dumps(times), flush=True)
'''


def original_arguments(data_root: Path, save_dir: Path, radiology: bool) -> list[str]:
    """fusion_main.py's arguments of the published scripts (mortality/train/medFuse.sh; the
    radiology stage: radiology/uni_cxr.sh in train mode), no ImageNet download. The driver runs
    one epoch whatever ``--epochs`` says (2: the first of two, for the original's ETA line)."""
    common = ["--ehr_data_dir", str(data_root / "ehr"), "--cxr_data_dir", str(data_root / "cxr"),
              "--save_dir", str(save_dir), "--dim", "256", "--dropout", "0.3", "--layers", "2",
              "--vision-backbone", "resnet34", "--mode", "train", "--epochs", "2",
              "--batch_size", str(BATCH_SIZE), "--task", "in-hospital-mortality"]
    if radiology:
        return common + ["--data_pairs", "radiology", "--labels_set", "radiology",
                         "--fusion_type", "uni_cxr", "--vision_num_classes", "14",
                         "--num_classes", "14", "--align", "0.0"]
    return common + ["--vision_num_classes", "14", "--num_classes", "1",
                     "--data_pairs", "partial_ehr_cxr", "--data_ratio", "1.0",
                     "--labels_set", "mortality", "--fusion_type", "lstm"]


def run_original(python: str, medfuse_dir: Path, data_root: Path) -> dict[str, float]:
    """The original's stage times (two child processes: the fusion run, the radiology stage)."""
    times: dict[str, float] = {}
    for radiology in (False, True):
        with tempfile.TemporaryDirectory() as save_dir:
            arguments = original_arguments(data_root, Path(save_dir), radiology)
            completed = subprocess.run(
                [python, "-c", ORIGINAL_DRIVER, json.dumps(arguments)], cwd=medfuse_dir,
                capture_output=True, text=True, check=False)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH ")]
        if completed.returncode != 0 or not lines:
            sys.exit(f"the original failed (exit {completed.returncode}):\n"
                     f"{completed.stderr[-3000:]}")
        measured = json.loads(lines[-1][len("BENCH "):])
        if radiology:
            times["cxr-stage-data"] = measured["data"]
            times["cxr-stage-epoch"] = measured["train-epoch"]
            times["cxr-stage-rows"] = measured["train-rows"]
        else:
            times.update(measured)
    return times


def run_fusebench(data_root: Path) -> dict[str, float]:
    """fusebench's stage times in this process, from a fresh cache."""
    import torch

    from fusebench.data import DataConfig, prepare
    from fusebench.metrics import score_predictions
    from fusebench.plugins.encoders import CXREncoder
    from fusebench.plugins.pretraining import RADIOLOGY_HPARAMS, RadiologyModel
    from fusebench.registry import load_registry
    from fusebench.specs import ModelConfig
    from fusebench.steps import (
        batch_to_device,
        build_model,
        build_optimizers,
        default_optimizers,
        default_training_step,
        training_step,
    )
    from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY as task
    from fusebench.train import predict

    device = torch.device("cpu")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        begin = time.perf_counter()
        config = DataConfig(ehr_root=data_root / "ehr", cxr_root=data_root / "cxr",
                            image_size=IMAGE_SIZE, normalizer="medfuse-2022",
                            cache_dir=Path(cache))
        data = prepare(config, task, progress=False)
        times["data"] = time.perf_counter() - begin

        registry = load_registry()
        method = registry.method("medfuse")
        hparams = {**method.hparams_for(task.name), "batch_size": BATCH_SIZE}
        torch.manual_seed(SEED)
        model = build_model(method, ModelConfig(task=task.name, num_classes=task.num_classes,
                                                image_size=IMAGE_SIZE, hparams=hparams))
        optimizers = build_optimizers(registry, method, model, hparams)
        train = data.cohort("train", "partial")
        model.train()
        begin = time.perf_counter()
        for batch in train.batches(BATCH_SIZE, shuffle=True, seed=SEED, augment=True):
            training_step(registry, method, model, batch_to_device(batch, device), optimizers)
        times["train-epoch"] = time.perf_counter() - begin
        times["train-rows"] = len(train)

        test = data.cohort("test", "partial")
        begin = time.perf_counter()
        probabilities, labels = predict(model, test, BATCH_SIZE, device)
        times["eval-pass"] = time.perf_counter() - begin
        times["eval-rows"] = len(test)
        begin = time.perf_counter()
        score_predictions(labels, probabilities, task.labels, n_resamples=1000)
        times["bootstrap"] = time.perf_counter() - begin

        begin = time.perf_counter()
        radiology = data.radiology("train")
        times["cxr-stage-data"] = time.perf_counter() - begin
        stage_model = RadiologyModel(CXREncoder())
        stage_model.train()
        stage_optimizers = default_optimizers(stage_model, RADIOLOGY_HPARAMS)
        begin = time.perf_counter()
        for batch in radiology.batches(BATCH_SIZE, shuffle=True, seed=SEED, augment=True):
            default_training_step(stage_model, batch_to_device(batch, device), stage_optimizers)
        times["cxr-stage-epoch"] = time.perf_counter() - begin
        times["cxr-stage-rows"] = len(radiology)
    return times


def ensure_data_root(args: argparse.Namespace) -> Path:
    if args.data_root is not None:
        return args.data_root
    from fusebench.data.demo import generate_demo

    root = Path(tempfile.mkdtemp(prefix="bench-vs-original-")) / "demo"
    return generate_demo(root, args.size, seed=0, progress=False)


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: the median seconds of each side and their ratio (original / fusebench)."""
    table = {}
    for stage in STAGES:
        original = [r["original"][stage] for r in records if stage in r["original"]]
        ours = [r["fusebench"][stage] for r in records if stage in r["fusebench"]]
        if original and ours:
            table[stage] = {
                "original_s": round(statistics.median(original), 2),
                "fusebench_s": round(statistics.median(ours), 2),
                "ratio": round(statistics.median(original) / statistics.median(ours), 1),
                "original_all_s": [round(v, 2) for v in original],
                "fusebench_all_s": [round(v, 2) for v in ours],
            }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medfuse-dir", type=Path, required=True,
                        help="checkout of github.com/nyuad-cai/MedFuse")
    parser.add_argument("--original-python", default=sys.executable,
                        help="interpreter that runs the original (default: this one)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="data root with ehr/ and cxr/ (default: generate the demo)")
    parser.add_argument("--size", default="small", help="demo size when no --data-root")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    data_root = ensure_data_root(args)
    records = []
    for repeat in range(args.repeats):
        record: dict[str, Any] = {"repeat": repeat, "load_before": os.getloadavg()}
        record["original"] = run_original(args.original_python, args.medfuse_dir, data_root)
        print(json.dumps({"repeat": repeat, "original": record["original"]}), flush=True)
        record["fusebench"] = run_fusebench(data_root)
        record["load_after"] = os.getloadavg()
        records.append(record)
        print(json.dumps(record), flush=True)
    report = {
        "what": "MedFuse IHM, partial cohort, batch 16, 224 px, CPU: original vs fusebench on the "
                f"same files ({data_root})",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "summary": summary(records),
        "records": records,
    }
    print(json.dumps(report["summary"], indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
