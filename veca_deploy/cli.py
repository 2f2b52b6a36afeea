"""``veca-deploy``: a thin click shell over the Python API.

Every command lives in ``veca_deploy/commands/<name>.py`` and is registered here. Our typed
errors become one line on stderr and the error class's exit code; ``--debug`` shows tracebacks.

Signals: while a command runs, SIGINT raises ``KeyboardInterrupt`` and SIGTERM / SIGHUP raise
:class:`Terminated` (a ``KeyboardInterrupt``), so staged writes unwind and remove their
``.partial-*`` folders exactly as on Ctrl-C; the exit code is 128 + the signal number (130, 143,
129) and stderr gets one line. A signal that is ignored when veca-deploy starts (``nohup``, a
background job of a script) stays ignored. If the unwinding has not finished
:data:`SIGNAL_GRACE_S` seconds after the signal (the main thread is stuck in native code, or a
library swallowed the exception), a watchdog removes the staging folders and exits anyway. The
program exits with ``os._exit`` after an interrupt, so no worker thread of a library can hold up
the interpreter's shutdown.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from importlib import import_module

import click

from .errors import VecaError

#: seconds between a signal and the forced exit when the unwinding does not finish by itself
SIGNAL_GRACE_S = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP as an exception: unwinds like Ctrl-C, so staged writes clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalTrap:
    """Turns SIGINT / SIGTERM / SIGHUP into exceptions for the duration of one ``main`` call (main
    thread only) and arms the watchdog that exits if the unwinding hangs."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, object] = {}
        self._fired = threading.Event()  # a signal arrived, or main returned (then _finished is set)
        self._finished = threading.Event()
        self._watchdog: threading.Thread | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.NAMES:
            s = getattr(signal, name, None)
            if s is None:
                continue
            h = signal.getsignal(s)
            if h is None or h == signal.SIG_IGN:  # set outside Python, or ignored (nohup): leave it
                continue
            self._saved[s] = h
            signal.signal(s, self._on_signal)
        if self._saved:
            # started now, not in the handler: starting a thread there could deadlock on the
            # threading module's own lock if the signal interrupted the main thread inside it
            self._watchdog = threading.Thread(target=self._watch, name="veca-deploy-signal-watchdog", daemon=True)
            self._watchdog.start()

    def restore(self) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()
        self._finished.set()
        self._fired.set()  # wakes the watchdog, which sees _finished and returns

    def _on_signal(self, signum: int, frame) -> None:  # noqa: ARG002
        if self.signum is not None:
            return  # already unwinding: a second Ctrl-C must not cut the cleanup short
        self.signum = signum
        self._fired.set()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def _watch(self) -> None:
        self._fired.wait()
        if self._finished.wait(SIGNAL_GRACE_S) or self.signum is None:
            return
        from .bundle.io import discard_active_stages

        discard_active_stages()
        _write_err(f"{self.message()}; still busy after {SIGNAL_GRACE_S:g} s, exiting now")
        os._exit(self.exit_code())

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def message(self) -> str:
        if self.signum in (None, signal.SIGINT):
            return "veca-deploy: interrupted"
        return f"veca-deploy: terminated ({signal.Signals(self.signum).name})"


def _write_err(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # a closed or broken stderr must not keep us from exiting
        pass

#: command name -> module under veca_deploy.commands exposing ``command`` (a click.Command)
COMMANDS = {
    "train": "train", "export": "export", "inspect": "inspect", "validate": "validate",
    "quantize": "quantize", "eval": "evaluate", "bench": "bench", "select": "select",
    "build-trt": "trt", "check-trt": "trt",
    "fleet": "fleet", "pack": "pack", "keygen": "sign", "sign": "sign",
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
    """Run one command; ``argv=None`` (the ``veca-deploy`` program) reads ``sys.argv`` and, after
    an interrupt, leaves through ``os._exit`` once the staging folders are gone."""
    trap = _SignalTrap()
    trap.install()
    try:
        code = _main(argv, trap)
    except KeyboardInterrupt:  # arrived after the command, before the handlers were restored
        _write_err(trap.message())
        code = trap.exit_code()
    finally:
        trap.restore()
    if argv is None and trap.signum is not None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Exit without the interpreter's shutdown (no joining of library worker threads, no native
    static destructors that might wait on an interrupted thread pool)."""
    from .bundle.io import discard_active_stages

    discard_active_stages()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


#: what click (8.2+) raises for a group called without a command (older click prints the help and exits 0)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _main(argv: list[str] | None, trap: _SignalTrap) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("VECA_DEBUG")
    try:
        cli.main(args=argv, prog_name="veca-deploy", standalone_mode=False)
    except click.exceptions.Abort:
        _write_err(trap.message())
        return trap.exit_code()
    except _NO_ARGS_IS_HELP as e:  # bare ``veca-deploy``: the normal multi-line help, on stdout
        click.echo(e.ctx.get_help() if e.ctx is not None else cli.get_help(click.Context(cli)))
        return 0
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
        if trap.signum is not None:  # the interrupt surfaced as one of our errors
            _write_err(trap.message())
            return trap.exit_code()
        if debug:
            raise
        click.echo(f"veca-deploy: error: {_one_line(e)}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        _write_err(trap.message())
        return trap.exit_code()
    except OSError as e:  # the OS refused (disk full, I/O error, permissions): not a bug of ours
        if trap.signum is not None:  # a library turned our interrupt into another error
            _write_err(trap.message())
            return trap.exit_code()
        if debug:
            raise
        click.echo(f"veca-deploy: error: {_one_line(e)}", err=True)
        return 74
    except Exception as e:  # a bug of ours: still one line, but say so
        if trap.signum is not None:
            _write_err(trap.message())
            return trap.exit_code()
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
