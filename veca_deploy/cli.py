"""``veca-deploy``: a thin click shell over the Python API.

Every command lives in ``veca_deploy/commands/<name>.py`` and is registered here. Our typed
errors become one line on stderr and the error class's exit code; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import click

from .errors import VecaError

#: command name -> module under veca_deploy.commands exposing ``command`` (a click.Command)
COMMANDS = {
    "train": "train", "export": "export", "inspect": "inspect", "validate": "validate",
    "quantize": "quantize", "eval": "evaluate", "bench": "bench", "select": "select",
    "build-trt": "trt", "check-trt": "trt",
}


class LazyGroup(click.Group):
    """Imports a command's module only when it runs, so ``--help`` and runtime commands stay light."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        try:
            mod = import_module(f"veca_deploy.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("veca_deploy.commands"):
                return None  # command not shipped in this build
            raise
        attr = name.replace("-", "_") if hasattr(mod, name.replace("-", "_")) else "command"
        return getattr(mod, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="veca-deploy")
@click.option("--debug", is_flag=True, envvar="VECA_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export, quantize, compile and run VECA vision transformers on edge hardware."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("VECA_DEBUG")
    try:
        cli.main(args=argv, prog_name="veca-deploy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("veca-deploy: interrupted", err=True)
        return 130
    except click.UsageError as e:  # bad option / missing argument: one line too
        sub = e.ctx.command_path.partition(" ")[2] if e.ctx else ""
        hint = f" (see 'veca-deploy {sub} --help')" if sub else " (see --help)"
        click.echo(f"veca-deploy: usage error: {_one_line(e.format_message())}{hint}", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"veca-deploy: error: {_one_line(e.format_message())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except VecaError as e:
        if debug:
            raise
        click.echo(f"veca-deploy: error: {_one_line(e)}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("veca-deploy: interrupted", err=True)
        return 130
    except OSError as e:  # the OS refused (disk full, I/O error, permissions): not a bug of ours
        if debug:
            raise
        click.echo(f"veca-deploy: error: {_one_line(e)}", err=True)
        return 74
    except Exception as e:  # a bug of ours: still one line, but say so
        if debug:
            raise
        click.echo(f"veca-deploy: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug)", err=True)
        return 70
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:500] if text else type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
