"""Evaluation metrics in numpy only, so runtimes and bundles can score outputs without torch."""

from __future__ import annotations

import numpy as np

from .errors import InputError, UsageError


class ConfusionMatrix:
    """Accumulated ``[K, K]`` counts (rows = true, columns = predicted) over any number of batches,
    so mIoU over a whole split is exact rather than an average of per-batch scores."""

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise UsageError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, true: np.ndarray) -> "ConfusionMatrix":
        """Add predicted/true integer labels of any (equal) shape."""
        p, t = np.asarray(pred), np.asarray(true)
        if p.shape != t.shape:
            raise InputError(f"pred and true must have the same shape, got {p.shape} and {t.shape}")
        if p.size and not (np.issubdtype(p.dtype, np.integer) and np.issubdtype(t.dtype, np.integer)):
            raise InputError(f"labels must be integer arrays, got {p.dtype} and {t.dtype}")
        p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
        k = self.num_classes
        if p.size and (p.min() < 0 or t.min() < 0 or p.max() >= k or t.max() >= k):
            raise InputError(f"labels must lie in 0..{k - 1}")
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both true and pred."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in true or pred (absent classes would score 0/0)."""
        iou = self.iou()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``logits [N, K]`` whose argmax equals ``labels [N]``."""
    lg, lb = np.asarray(logits), np.asarray(labels).reshape(-1)
    if lg.ndim != 2 or lg.shape[0] != lb.shape[0]:
        raise InputError(f"logits must be [N, K] with N = len(labels), got {lg.shape} and {lb.shape}")
    if lb.size == 0:
        return float("nan")
    return float((lg.argmax(axis=1) == lb).mean())


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| in float64: the parity number between two runtimes' outputs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"shapes differ: {x.shape} vs {y.shape}")
    return float(np.abs(x - y).mean()) if x.size else 0.0


# ------------------------------------------------------------------ task metrics for the gates
class Metric:
    """A task metric accumulated batch by batch over an evaluation set (memory: one batch).

    ``update(outputs, targets)`` gets one batch of a graph's named outputs and the matching
    targets; ``value()`` is the score over everything seen. ``higher_is_better`` tells the gate
    and the selector which way is better; ``hits()`` (per-sample 0/1, when the metric is a mean of
    them) lets the selector pair two candidates on the same images."""

    name = "metric"
    higher_is_better = True
    #: what the targets are: "labels" (class per image), "masks" (class per pixel), "maps" (dense values)
    targets = "labels"

    def update(self, outputs: dict[str, np.ndarray], targets: np.ndarray | None) -> None:
        raise NotImplementedError

    def value(self) -> float:
        raise NotImplementedError

    def hits(self) -> np.ndarray | None:
        return None


class Top1(Metric):
    """Classification accuracy (fraction) of ``output`` [B, K] against labels."""

    name = "top1"

    def __init__(self, output: str = "logits") -> None:
        self.output, self._hits = output, []

    def update(self, outputs, targets):
        self._hits.append(np.asarray(outputs[self.output]).argmax(-1) == np.asarray(targets).reshape(-1))

    def value(self):
        h = self.hits()
        return float(h.mean()) if h.size else float("nan")

    def hits(self):
        return np.concatenate(self._hits) if self._hits else np.zeros(0, dtype=bool)


class MeanIoU(Metric):
    """Mean IoU (fraction) of a per-pixel prediction against masks: ``output`` is an integer mask
    [B, H, W] (an in-graph argmax) or class scores [B, K, H, W] (argmax taken here).
    ``num_classes`` None: the matrix grows with the largest class seen in targets or predictions
    (a user's masks without a class count). ``ignore_index`` pixels (e.g. 255) are not counted."""

    name = "miou"
    targets = "masks"

    def __init__(self, num_classes: int | None, output: str = "mask", ignore_index: int | None = None) -> None:
        self.output, self.ignore_index, self.fixed = output, ignore_index, num_classes is not None
        self.cm = ConfusionMatrix(num_classes if num_classes is not None else 1)

    def update(self, outputs, targets):
        pred = np.asarray(outputs[self.output])
        if pred.ndim == 4:
            pred = pred.argmax(1)
        pred, true = pred.astype(np.int64), np.asarray(targets).astype(np.int64).reshape(pred.shape)
        if self.ignore_index is not None:
            keep = true != self.ignore_index
            pred, true = pred[keep], true[keep]
        if not self.fixed and pred.size:
            k = int(max(pred.max(), true.max())) + 1
            if k > self.cm.num_classes:
                grown = ConfusionMatrix(k)
                n = self.cm.num_classes
                grown.matrix[:n, :n] = self.cm.matrix
                self.cm = grown
        self.cm.update(pred, true)

    def value(self):
        return self.cm.miou()


class MeanAbsError(Metric):
    """Mean absolute error of a dense regression ``output`` (depth, say) against target maps."""

    name = "mae"
    higher_is_better = False
    targets = "maps"

    def __init__(self, output: str) -> None:
        self.output, self.total, self.count = output, 0.0, 0

    def update(self, outputs, targets):
        got = np.asarray(outputs[self.output], dtype=np.float64)
        want = np.asarray(targets, dtype=np.float64).reshape(got.shape)
        self.total += float(np.abs(got - want).sum())
        self.count += got.size

    def value(self):
        return self.total / self.count if self.count else float("nan")


#: keys of an accuracy record that a metric's name must not overwrite
RESERVED_NAMES = frozenset({"dataset", "samples", "backend", "metric", "per_tier", "sample_id", "correct",
                            "reference", "higher_is_better", "allowed_drop", "cosine"})


class PerSample(Metric):
    """A user's metric: ``fn(outputs, targets) -> per-sample scores [B]``; the value is their mean.
    ``evaluate(..., metric=fn)`` and ``quantize(..., metric=fn)`` wrap a plain callable in this."""

    def __init__(self, fn, name: str | None = None, higher_is_better: bool = True, targets: str = "labels") -> None:
        self.fn, self.scores = fn, []
        self.name = name or getattr(fn, "__name__", "user_metric")
        if not self.name.isidentifier() or self.name in RESERVED_NAMES:
            self.name = "user_metric"  # a lambda, or a name an accuracy record uses for itself
        self.higher_is_better, self.targets = bool(higher_is_better), targets

    def update(self, outputs, targets):
        s = np.asarray(self.fn(outputs, targets), dtype=np.float64).reshape(-1)
        if not np.isfinite(s).all():
            raise InputError(f"metric {self.name} returned non-finite scores")
        self.scores.append(s)

    def value(self):
        return float(np.concatenate(self.scores).mean()) if self.scores else float("nan")
