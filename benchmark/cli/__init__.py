"""The ``fusebench`` command line: one module per command group, loaded only when its command runs.

Every command accepts the global options before its name::

    fusebench [--debug] [--plugin module.path ...] COMMAND ...

``fusebench --help`` imports no command module (their one-line help is listed here), and the
command modules import torch, pandas and the plugins inside their command bodies, so asking for
help never pays for them. Errors caused by input print one line and exit with status 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click
from rich.markup import escape

from fusebench import __version__
from fusebench.cli._common import err_console
from fusebench.errors import FusebenchError

__all__ = ["cli", "main"]

# command name -> (module:attribute, one-line help shown by `fusebench --help`)
_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("fusebench.cli.data:data_group", "Generate, inspect and prepare datasets."),
    "leaderboard": ("fusebench.cli.leaderboard:leaderboard",
                    "Run the standard leaderboard grid (or a subcommand such as `merge`)."),
    "plugins": ("fusebench.cli.plugins:plugins", "List, scaffold and check fusion-method plugins."),
    "results": ("fusebench.cli.results:results", "Validate result files."),
    "run": ("fusebench.cli.run:run", "Train one method on one task and score it on both test "
            "cohorts."),
    "score": ("fusebench.cli.run:score", "Score a predictions file: AUROC and AUPRC with "
              "bootstrap CIs."),
    "tasks": ("fusebench.cli.tasks:tasks", "List prediction tasks."),
    "throughput": ("fusebench.cli.throughput:throughput",
                   "Training and inference samples/s, step time and peak memory per method."),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, _, attribute = _COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, _COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fusebench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Load a plugin module that is not installed (dotted path on sys.path). Repeatable.",
)
def cli(debug: bool, plugins: Sequence[str]) -> None:
    """fusebench: benchmark multi-modal fusion of ICU time series and chest X-rays."""
    from fusebench.registry import set_extra_plugins

    set_extra_plugins(plugins)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="fusebench", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except FusebenchError as error:
        if debug:
            raise
        # escape: a message naming a pattern such as [a-z0-9] must not be read as markup
        err_console.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # a bug: still one line unless --debug
        if debug:
            raise
        summary = str(error).splitlines()[0] if str(error) else ""
        err_console.print(
            f"[red]internal error:[/] {type(error).__name__}: {escape(summary)} "
            "(rerun with --debug for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
