"""Typed errors. The CLI maps each class to a one-line message and a distinct exit code."""

from __future__ import annotations

import re


class VecaError(Exception):
    """Base class of every error veca-deploy raises on purpose."""

    exit_code = 1


class UsageError(VecaError, ValueError):
    """Bad arguments: unknown names, impossible values."""

    exit_code = 2


class CheckpointError(VecaError):
    """A checkpoint that cannot be read or does not fit the model."""

    exit_code = 3


class ExportError(VecaError):
    """An export step failed (including a failed parity gate)."""

    exit_code = 4


class BundleError(VecaError):
    """A bundle that is missing, malformed, tampered with or incomplete."""

    exit_code = 5


class InputError(VecaError, ValueError):
    """An inference request whose data does not fit the artifact."""

    exit_code = 6


class BackendUnavailable(VecaError):
    """An optional backend (OpenVINO, TensorRT, ...) is not installed or not usable here."""

    exit_code = 7


class BudgetError(VecaError):
    """No tier satisfies the requested latency budget."""

    exit_code = 8


class QuantizationError(VecaError):
    """Calibration or quantization refused (too little data, failed accuracy gate, ...)."""

    exit_code = 9


class OutputExistsError(VecaError):
    """The output folder exists and --force was not given."""

    exit_code = 10


#: lines that only say where a library raised (OpenVINO: "Exception from src/inference/src/cpp/core.cpp:117:")
_WHERE = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)$")


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message that says what went wrong (or its type name): what a
    one-line error quotes from a library that raises many types with long messages. OpenVINO puts
    a chain of source locations first; those lines are skipped."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if not _WHERE.match(ln)] or lines or [type(e).__name__]
    text = said[0] if len(said) < 2 or not said[0].endswith(":") else f"{said[0]} {said[1]}"  # "While ...:" + what
    return text[:limit]
