"""Shared CLI plumbing: option parsers, rich console, progress reporting."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import UsageError

console = Console(stderr=True)
out = Console()


def int8_scheme_option(f):
    """``--int8-scheme`` for export and quantize (choices: calibration.recipe.INT8_SCHEMES)."""
    from ..calibration.recipe import INT8_SCHEMES

    return click.option("--int8-scheme", type=click.Choice(list(INT8_SCHEMES)), default="s8s8", show_default=True,
                        help="ONNX INT8: s8s8 builds into TensorRT engines; u8s8 keeps ONNX Runtime on x86 "
                             "CPUs in integer kernels (faster there).")(f)


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


@contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Reporter | None]:
    if not enabled:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as p:
        yield Reporter(p)

