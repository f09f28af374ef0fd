"""The thin command-line layer shared by every ``hbt-*`` command.

Every command is a ``click`` command built with ``cls=HbtCommand``. It gets, for free:

* a ``--debug`` flag (full tracebacks instead of one-line errors);
* :class:`hbt_tools.io.InputError` -> ``hbt-NAME: FILE:LINE: field 'F': message`` on stderr, exit 2;
* a usage error (unknown option, bad value) is one line on stderr, exit 2;
* a closed stdout (``| head``) ends quietly with exit 0;
* Ctrl-C ends with exit 130 and no traceback;
* run as a console script, the process ends without the interpreter's teardown once the
  command is done (:func:`_end_process`).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

import click

from .io import InputError

EXIT_INPUT = 2


def fail(message: str) -> None:
    """Raise a one-line input error from a command body (no file/line context)."""
    raise InputError(message)


class _HbtBehaviour:
    """--debug, verbatim example epilog and one-line errors; mixed into click's Command/Group."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", {})
        kwargs["context_settings"].setdefault("help_option_names", ["-h", "--help"])
        kwargs["context_settings"].setdefault("max_content_width", 100)
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                        is_eager=True, callback=_set_debug,
                                        help="Show full tracebacks on errors."))

    def format_epilog(self, ctx, formatter):
        # Keep the example block verbatim (click would re-wrap it).
        if self.epilog:
            formatter.write_paragraph()
            for line in self.epilog.strip("\n").splitlines():
                formatter.write_text(line) if not line.strip() else formatter.write(f"  {line}\n")

    def invoke(self, ctx):
        # Here, not in main(): click's main() turns a broken pipe into exit 1 before we see it.
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_broken_pipe()

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # args None: called by a console script, which owns the process (tests pass args)
        end = _end_process if args is None else _exit
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            if args is None:
                _end_process(0)
            return result
        except click.exceptions.Exit as e:
            end(e.exit_code)
        except click.UsageError as e:
            # A bad option or argument is bad input too: one line, exit 2.
            click.echo(f"{self.name}: {e.format_message()} (see --help)", err=True)
            end(e.exit_code)
        except click.ClickException as e:
            e.show()
            end(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            end(130)
        except InputError as e:
            if os.environ.get("HBT_DEBUG"):
                raise
            click.echo(f"{self.name}: {e}", err=True)
            end(EXIT_INPUT)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            end(130)


class HbtCommand(_HbtBehaviour, click.Command):
    pass


class HbtGroup(_HbtBehaviour, click.Group):
    """A command with subcommands (``hbt-prepare lareqa ...``); subcommands are HbtCommands."""

    command_class = HbtCommand

    def parse_args(self, ctx, args):
        if not args and self.no_args_is_help:  # one line rather than click's whole help text
            raise click.UsageError(f"missing command ({', '.join(self.commands)})", ctx)
        return super().parse_args(ctx, args)


def _set_debug(ctx, param, value):
    if value:
        os.environ["HBT_DEBUG"] = "1"


def _quiet_broken_pipe() -> None:
    # The reader went away (`| head`): silence Python's flush-at-exit error and end quietly.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    _exit(0)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    except (ValueError, OSError):
        pass


def _exit(code: int) -> None:
    _flush_stdout()
    sys.exit(code)


def _end_process(code: int) -> None:
    """End a console script's process without the interpreter's teardown, once its work is
    done: with torch loaded, freeing every module and object one by one took hbt-encode
    ~0.5 s of a 7-10 s run (2026-11-27). atexit handlers still run (multiprocessing joins its
    children there, logging flushes) and stdio is flushed; every output file is closed by the
    command itself before this (atomic_output, EmbeddingWriter.commit, the unbuffered train
    log). With a non-daemon thread still running, the normal exit waits for it instead."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        _exit(code)
    atexit._run_exitfuncs()
    _flush_stdout()
    try:
        sys.stderr.flush()
    except (ValueError, OSError):  # a closed stderr has nothing left to say
        pass
    os._exit(code)


def command(name: str, example: str, **kwargs):
    """``@command("hbt-score", example=...)``: a click command with the shared behaviour."""
    epilog = "Example:\n" + example
    return click.command(name=name, cls=HbtCommand, epilog=epilog, **kwargs)


def group(name: str, example: str, **kwargs):
    """``@group("hbt-prepare", example=...)``: a click group with the shared behaviour."""
    return click.group(name=name, cls=HbtGroup, epilog="Example:\n" + example, **kwargs)


quiet_option = click.option(
    "--quiet", is_flag=True,
    help="No progress bar (one is drawn only when stderr is a terminal anyway).")

output_option = click.option(
    "-o", "--output", "output", default="-", show_default=True,
    help="Output file ('-' = stdout); written to a temporary file and renamed when complete.")
