"""Shared CLI plumbing: option parsers, rich console, progress reporting."""

from __future__ import annotations

import json
import os
import resource
import time
from contextlib import contextmanager
from typing import Iterator

import click
from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import UsageError

#: columns a console lays out at when its stream is not a terminal (a file, a pipe, captured
#: output): wide enough that no table cell (an artifact id) is ever cut; ``COLUMNS`` still wins
PIPE_WIDTH = 1000


@contextmanager
def torch_side_import() -> Iterator[None]:
    """Hold SIGINT / SIGTERM / SIGHUP back while the torch side (and torch itself, ~2.5 s) is
    imported. torch's native start-up calls into Python; a KeyboardInterrupt raised there
    becomes a C++ exception nothing catches (``terminate called after throwing an instance of
    'pybind11::error_already_set'``), and the process dies of SIGABRT, without the clean exit or
    the staging cleanup. The signal is re-delivered as soon as the import is done."""
    from ..bundle.io import deferred_signals

    with deferred_signals():
        yield


class _Console(Console):
    """rich's console, except that off a terminal it does not assume 80 columns (or the width of
    a terminal on another stream, as when only stdout is piped): tables written to a file keep
    every id whole, so rows never look identical."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


console = _Console(stderr=True)
out = _Console()


def format_top1(value: float | None, samples: int | None = None) -> str:
    """Top-1 printed one way by every command: ``88.65 % (n=2000)``. ``value`` is a fraction
    (0.8865, what ``eval`` records) or a percentage (88.65, what model cards record); ``samples``
    the images it rests on (omitted when unknown). ``-`` when there is no value."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "-"
    pct = float(value) * 100.0 if value <= 1.0 else float(value)
    return f"{pct:.2f} %" + (f" (n={samples})" if isinstance(samples, int) and samples > 0 else "")


def format_accuracy(record: dict | None) -> str:
    """An artifact's ``accuracy`` record from the manifest: top-1 as :func:`format_top1` (per tier
    for elastic graphs: ``c8 85.10 %, c16 87.40 % (n=2000)``), feature cosine as ``cos 0.99990``."""
    rec = record or {}
    n = rec.get("samples") if isinstance(rec.get("samples"), int) else None
    cosine = rec.get("metric") == "cosine" or "cosine" in rec
    key = "cosine" if cosine else str(rec.get("metric", "top1"))
    if rec.get("reference"):
        return "reference"

    def one(v) -> str:
        v = v.get(key) if isinstance(v, dict) else v
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return "-"
        if cosine:
            return f"cos {v:.5f}"
        if key == "top1":
            return format_top1(v)
        if rec.get("higher_is_better", True) is not True:
            return f"{key} {v:.5g}"
        return f"{'mIoU' if key == 'miou' else key} {format_top1(v)}"

    per_tier = rec.get("per_tier")
    if isinstance(per_tier, dict) and per_tier:
        text = ", ".join(f"c{c} {one(v)}" for c, v in per_tier.items())
    elif key in rec:
        text = one(rec.get(key))
    else:
        return "-"
    return text + (f" (n={n})" if n else "")


def int8_scheme_option(f):
    """``--int8-scheme`` for export and quantize (choices: calibration.recipe.INT8_SCHEMES)."""
    from ..calibration.recipe import INT8_SCHEMES

    return click.option("--int8-scheme", type=click.Choice(list(INT8_SCHEMES)), default=None,
                        help="ONNX INT8: s8s8 builds into TensorRT engines; u8s8 keeps ONNX Runtime on x86 "
                             "CPUs in integer kernels (faster there). Default: what --target needs; given, it wins "
                             "over --target.")(f)


def nncf_preset_option(f):
    """``--nncf-preset`` for export and quantize (choices: calibration.recipe.NNCF_PRESETS)."""
    from ..calibration.recipe import NNCF_PRESETS

    return click.option("--nncf-preset", type=click.Choice(list(NNCF_PRESETS)), default=None,
                        help="OpenVINO INT8 (NNCF): performance = symmetric activations (fast with AMX), "
                             "mixed = asymmetric activations. Default: what --target needs; given, it wins over "
                             "--target.")(f)


def target_option(f):
    """``--target`` for export and quantize: the device the INT8 artifacts are built for."""
    return click.option("--target", default="host", show_default=True,
                        help="Device the INT8 artifacts are for: avx2, avx512, avx512-vnni, amx, arm-neon, arm-sve, "
                             "tensorrt (jetson), host (this machine), or a device profile JSON that bench wrote. "
                             "Picks the ONNX INT8 scheme (S8S8 for TensorRT and Arm, U8S8 on x86) and the NNCF "
                             "preset of OpenVINO INT8 (performance with AMX, else mixed).")(f)


def print_int8_choice(calibration: dict) -> None:
    """The INT8 scheme ``--target`` chose and why (from ``manifest.calibration.target``), on stderr."""
    choice = (calibration or {}).get("target")
    if choice:
        from ..calibration.target import describe_choice

        console.print(describe_choice(choice), markup=False, highlight=False)


def parse_int_list(value: str | None, what: str = "values") -> list[int] | None:
    if value is None or value == "":
        return None
    try:
        items = [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{what} must be a comma-separated list of integers, got {value!r}") from None
    if not items:
        raise UsageError(f"{what} is empty")
    return items


def parse_size(value: str) -> tuple[int, int]:
    """``256`` -> (256, 256); ``512x768`` -> (512, 768) (height x width)."""
    v = str(value).lower().strip()
    try:
        if "x" in v:
            h, w = v.split("x", 1)
            size = (int(h), int(w))
        else:
            size = (int(v), int(v))
    except ValueError:
        raise UsageError(f"image size must be N or HxW, got {value!r}") from None
    if min(size) <= 0:
        raise UsageError(f"image size must be positive, got {value!r}")
    return size


def parse_list(value: str | None) -> list[str] | None:
    if value is None or value == "":
        return None
    return [v.strip() for v in str(value).split(",") if v.strip()]


class Reporter:
    """Adapter from the API's ``progress(step_description, advance=1, total=None)`` to rich."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def __call__(self, description: str, advance: int = 1, total: int | None = None) -> None:
        if total is not None:
            self.progress.update(self.task, total=total)
        self.progress.update(self.task, description=description, advance=advance)


class LineReporter:
    """Progress as plain lines on stderr when it is not a terminal (CI logs, ``nohup``, pipes):
    one line per new step with the elapsed time, so long work never looks hung in a log."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = None
        self.done, self.total = 0, None

    def __call__(self, description: str, advance: int = 1, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done += advance
        if description != self.last:
            self.last = description
            count = f" [{self.done}/{self.total}]" if self.total else ""
            console.print(f"{time.perf_counter() - self.t0:7.1f}s{count} {description}", highlight=False,
                          soft_wrap=True)


class ProgressLog:
    """``VECA_PROGRESS_LOG=FILE``: every progress step appended to FILE as one JSON line
    (``t`` unix time, ``elapsed_s``, ``step``, ``rss_bytes`` now, ``peak_rss_bytes`` so far), for
    CI logs and the benchmarks that attribute time and memory to stages. Also with ``-q``."""

    def __init__(self, path: str, inner=None) -> None:
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115  closed by close()
        self.inner = inner
        self.t0 = time.perf_counter()

    def __call__(self, description: str, advance: int = 1, total: int | None = None) -> None:
        self.f.write(json.dumps({"t": time.time(), "elapsed_s": round(time.perf_counter() - self.t0, 3),
                                 "step": description, "advance": advance, "total": total,
                                 "rss_bytes": _rss_bytes(), "peak_rss_bytes": _peak_rss_bytes()}) + "\n")
        self.f.flush()
        if self.inner is not None:
            self.inner(description, advance=advance, total=total)

    def close(self) -> None:
        self("end", advance=0)
        self.f.close()


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


@contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Reporter | LineReporter | ProgressLog | None]:
    """Rich progress on a terminal, plain timestamped lines otherwise, nothing when disabled;
    plus the JSON-lines log when ``VECA_PROGRESS_LOG`` is set."""
    log_path = os.environ.get("VECA_PROGRESS_LOG")
    with _visible(enabled) as inner:
        if not log_path:
            yield inner
            return
        log = ProgressLog(log_path, inner)
        try:
            yield log
        finally:
            log.close()


@contextmanager
def _visible(enabled: bool):
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        yield LineReporter()
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as p:
        yield Reporter(p)

