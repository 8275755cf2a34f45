"""``slmloop``: one thin command per stage of the loop.

Each command parses options, calls one library function and prints the result;
heavy libraries (torch, transformers) are imported inside commands so that
``slmloop --help`` answers at once. :func:`main` turns every
:class:`~slmloop.errors.SlmloopError` into ``Error: …`` plus a hint and a
non-zero exit code — never a traceback.
"""

from __future__ import annotations

import sys

import typer
import typer.main
from rich.markup import escape

from slmloop.cli import data, demo, evaluation, graduate, monitor, project, release, serve, train, ui
from slmloop.cli.common import err
from slmloop.errors import ConfigError, SlmloopError

__all__ = ["app", "main", "run"]

app = typer.Typer(
    name="slmloop",
    help="The whole loop of a small-language-model project: data → train → eval → export → serve → monitor.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# command table: name -> function (each calls one library function)
app.command("init")(project.init)
app.command("models")(project.models)
app.command("validate")(project.validate)
app.command("status")(project.status)
app.command("log")(project.log)
app.add_typer(data.app, name="data")
app.add_typer(data.gold_app, name="gold")
app.command("train")(train.train)
app.command("runs")(train.runs)
app.command("bakeoff")(graduate.bakeoff)
app.command("distill")(graduate.distill)
app.add_typer(evaluation.app, name="eval")
app.command("compare")(evaluation.compare)
app.command("analyze")(evaluation.analyze)
app.command("export")(release.export)
app.command("verify")(release.verify)
app.command("promote")(release.promote)
app.command("rollback")(release.rollback)
app.command("releases")(release.releases)
app.command("serve")(serve.serve)
app.add_typer(monitor.app, name="monitor")
app.command("ui")(ui.ui)
app.command("demo")(demo.demo)


def print_error(exc: SlmloopError) -> None:
    err.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[yellow]hint:[/yellow] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="slmloop", standalone_mode=False)
    except SlmloopError as exc:
        print_error(exc)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("[yellow]Interrupted.[/yellow]")
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"Error: {exc}")
        return int(getattr(exc, "exit_code", 2))
    except MemoryError:
        print_error(ConfigError("out of memory", hint="Lower train.batch_size or train.max_batch_tokens."))
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:  # console-script entry point
    sys.exit(main())
