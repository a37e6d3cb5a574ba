"""``fusebench run`` and ``fusebench score``, and the run options ``leaderboard`` shares."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fusebench.cli._common import console, err_console, out_folder, registry_for_cli, resolve_device
from fusebench.cli.data import data_options
from fusebench.errors import FusebenchError
from fusebench.presets import PRESETS, Preset
from fusebench.specs import COHORTS

if TYPE_CHECKING:
    from fusebench.data import DataConfig
    from fusebench.runner import RunRequest

__all__ = ["data_config", "make_request", "run", "run_options", "score"]

_run_options = [
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Training seed."),
    click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper",
                 show_default=True, help="Training preset (quick: small images, few epochs)."),
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Override the maximum number of epochs."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Override the batch size."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Override the learning rate."),
    click.option("--device", default=None, help="torch device (default: cuda if available)."),
    click.option("--cxr-weights", default=None, metavar="PATH|imagenet",
                 help="ImageNet ResNet34 weights: a local torchvision state dict file, or "
                 "'imagenet' to download torchvision's once (hash-checked, cached in "
                 "$TORCH_HOME)."),
    click.option("--n-resamples", type=click.IntRange(min=10), default=1000, show_default=True,
                 help="Bootstrap resamples for the test metrics."),
    click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("runs"), show_default=True, help="Folder of run folders."),
]


def run_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by `run` and `leaderboard`."""
    for option in reversed(_run_options):
        function = option(function)
    return data_options(function)


def data_config(options: dict[str, Any], preset: Preset) -> DataConfig:
    """Data configuration from the data options; the preset sets the image size unless given."""
    from fusebench.cli.data import data_config_from_options

    config = data_config_from_options(**options)
    if options.get("image_size") is None:
        config = dataclasses.replace(config, image_size=preset.image_size)
    return config


def make_request(task: str, method: str, options: dict[str, Any]) -> tuple[RunRequest, dict]:
    """The run request from the run options; what is left of ``options`` are the data options."""
    from fusebench.plugins.encoders import resolve_cxr_weights
    from fusebench.runner import RunRequest

    request = RunRequest(
        task=task, method=method, train_cohort=options.pop("train_cohort", None),
        seed=options.pop("seed"), preset=options.pop("preset"),
        overrides={"epochs": options.pop("epochs"), "batch_size": options.pop("batch_size"),
                   "lr": options.pop("lr")},
        device=resolve_device(options.pop("device")),
        cxr_weights=resolve_cxr_weights(options.pop("cxr_weights")),
        n_resamples=options.pop("n_resamples"), out=out_folder(options.pop("out")),
    )
    return request, options


def _print_results(results: Sequence[dict[str, Any]]) -> None:
    from rich.table import Table

    from fusebench.metrics import format_ci

    table = Table(title="test results")
    for column in ("method", "train cohort", "test cohort", "n", "AUROC [95% CI]",
                   "AUPRC [95% CI]"):
        table.add_column(column)
    for result in results:
        table.add_row(result["method"]["name"], result["train_cohort"],
                      result["test_cohort"]["name"], str(result["test_cohort"]["n"]),
                      format_ci(result["metrics"]["auroc"]["macro"]),
                      format_ci(result["metrics"]["auprc"]["macro"]))
    console.print(table)


@click.command()
@click.option("--task", required=True, help="Task name (see `fusebench tasks list`).")
@click.option("--method", required=True, help="Method name (see `fusebench plugins list`).")
@click.option("--train-cohort", type=click.Choice(COHORTS), default=None,
              help="Training cohort (default: the method's).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@run_options
def run(task: str, method: str, resume: bool, **options: Any) -> None:
    """Train one method on one task and score it on both test cohorts.

    Under torchrun (torchrun --nproc_per_node N -m fusebench run ...) the N processes train
    one model together: rank 0 prepares the data first, then the others reuse the cache; rank 0
    alone shows progress, writes the files and prints the results.
    """
    from fusebench import distributed
    from fusebench.data import prepare
    from fusebench.presets import get_preset
    from fusebench.progress import RunProgress
    from fusebench.runner import RunRequest, execute_run, run_dir, train_cohort_of

    registry = registry_for_cli()
    registry.task(task)
    train_cohort_of(RunRequest(task=task, method=method, train_cohort=options["train_cohort"]),
                    registry.method(method))  # refuse bad options before any data work
    with distributed.process_group(resolve_device(options["device"])):
        request, data_opts = distributed.from_main(make_request, task, method, options)
        with distributed.main_first():
            data = prepare(data_config(data_opts, get_preset(request.preset)),
                           registry.task(task), progress=distributed.is_main())
        try:
            with RunProgress() if distributed.is_main() else contextlib.nullcontext() as progress:
                results = execute_run(registry, request, data, resume=resume, progress=progress)
        except KeyboardInterrupt:
            if distributed.is_main():
                checkpoint = run_dir(request, registry.method(method), data) / "checkpoint.pt"
                saved = ("the last finished epoch is saved" if checkpoint.exists()
                         else "no epoch finished yet")
                err_console.print(f"interrupted ({saved}); continue with: "
                                  f"{_resume_command(click.get_current_context())}",
                                  highlight=False, markup=False, soft_wrap=True)
            raise click.exceptions.Abort() from None
        if not distributed.is_main():
            return
    folder = run_dir(request, registry.method(method), data)
    _print_results(results)
    err_console.print(f"results and predictions in {folder}", highlight=False)


def _resume_command(context: click.Context) -> str:
    """The command line that continues this run: its options as given, plus ``--resume``."""
    from click.core import ParameterSource

    words = ["fusebench"]
    words += [word for module in context.find_root().params.get("plugins", ())
              for word in ("--plugin", module)]
    words.append(context.info_name or "run")
    for parameter in context.command.params:
        value = context.params.get(parameter.name)
        given = context.get_parameter_source(parameter.name) != ParameterSource.DEFAULT
        if not isinstance(parameter, click.Option) or not given or parameter.name == "resume":
            continue
        flag = parameter.opts[-1] if parameter.opts[-1].startswith("--") else parameter.opts[0]
        if parameter.is_flag:
            words += [flag] if value else parameter.secondary_opts[:1]
        else:
            for item in value if parameter.multiple else [value]:
                words += [flag, str(item)]
    return shlex.join([*words, "--resume"])


@click.command()
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", required=True, help="Task whose labels the file holds.")
@click.option("--n-resamples", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap seed.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Predictions of a reference method for paired differences.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def score(predictions: Path, task: str, n_resamples: int, seed: int, reference: Path | None,
          as_json: bool) -> None:
    """Score a predictions file: AUROC and AUPRC with bootstrap CIs."""
    import numpy as np
    from rich.table import Table

    from fusebench.metrics import format_ci, score_predictions
    from fusebench.predictions import read_predictions

    spec = registry_for_cli().task(task)
    stays, labels, probabilities = read_predictions(predictions, spec)
    reference_prob = None
    if reference is not None:
        ref_stays, _, ref_probabilities = read_predictions(reference, spec)
        if not np.array_equal(np.sort(ref_stays), np.sort(stays)):
            raise FusebenchError(f"{reference}: holds other stays than {predictions}")
        reference_prob = ref_probabilities[np.argsort(ref_stays)][np.argsort(np.argsort(stays))]
    scores = score_predictions(labels, probabilities, spec.labels, n_resamples=n_resamples,
                               seed=seed, label_groups=spec.label_groups or None,
                               reference_prob=reference_prob)
    if as_json:
        click.echo(json.dumps({"file": str(predictions), "task": task, "n": len(stays),
                               **scores}, indent=2))
        return
    table = Table(title=f"{predictions.name}: {len(stays)} stays")
    for column in ("label", "AUROC [95% CI]", "AUPRC [95% CI]"):
        table.add_column(column, overflow="fold")
    table.add_row("macro", format_ci(scores["auroc"]["macro"]), format_ci(scores["auprc"]["macro"]))
    if len(spec.labels) > 1:
        for label in spec.labels:
            table.add_row(label, format_ci(scores["auroc"]["per_label"][label]),
                          format_ci(scores["auprc"]["per_label"][label]))
    if "difference" in scores:
        table.add_row("Δ vs reference", format_ci(scores["difference"]["auroc"]["macro"]),
                      format_ci(scores["difference"]["auprc"]["macro"]))
    console.print(table)
