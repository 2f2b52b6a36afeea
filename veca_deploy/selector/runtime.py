"""``veca_deploy.Runtime``: what an edge application embeds. Open a bundle with a latency budget,
give it images, get numpy outputs back; the selector picks the tier, the runtime keeps to it.

    with veca_deploy.Runtime.open("bundle/", budget_ms=10, adaptive=True) as rt:
        pred = rt.predict(frame)            # uint8 HxWx3 (any size), a list of them, or float32 NCHW
        pred["logits"], pred.labels, pred.tier, pred.latency_ms

Static mode serves the selected tier. Adaptive mode watches the observed latency and steps down
the selector's ladder when the budget is missed, back up after sustained headroom (see
:mod:`veca_deploy.selector.adaptive`). The rungs next to the current one are kept activated, so
a switch never waits for a compile. ``predict`` is thread-safe: each call takes one consistent
(runner, tier) snapshot under a lock; a switch only changes which snapshot later calls take.
No torch anywhere on this path.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..bundle.reader import Bundle
from ..errors import InputError, UsageError
from ..formats import BACKENDS, format_backend
from ..runtimes import CORE_SELECT, IMAGES, Runner, core_select, create_runner
from ..runtimes.pool import InferPool
from .adaptive import AdaptiveController
from .candidates import Tier
from .profile import runner_options
from .select import Measured, Selection, select

LatencyHook = Callable[[float, Tier], float]


@dataclass
class Prediction:
    """One ``predict`` call: ``outputs`` (name -> numpy array, batch first), the ``tier`` that
    served it and the model's ``latency_ms`` (inference only, without preprocessing).
    Indexable like the outputs dict: ``pred["logits"]``."""

    outputs: dict[str, np.ndarray]
    tier: Tier
    latency_ms: float
    class_names: tuple[str, ...] | None = None
    #: resizing + normalising the raw images (0 for float32 input), measured in this call
    preprocess_ms: float = 0.0
    #: ``predict``/``submit(deadline_ms=)`` given and the call took longer (:attr:`total_ms`)
    late: bool = False
    #: :meth:`Runtime.submit` only: time the request waited for a free stream before the model
    #: ran (submit to completion, less preprocessing and inference); 0 for ``predict``
    queue_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """What this call cost the application: preprocessing + queueing (submit) + inference."""
        return self.preprocess_ms + self.queue_ms + self.latency_ms

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def keys(self) -> Iterator[str]:
        return iter(self.outputs)

    @property
    def labels(self) -> np.ndarray | None:
        """Argmax class index per image, when the model has a ``logits`` output."""
        return None if "logits" not in self.outputs else self.outputs["logits"].argmax(axis=-1)

    @property
    def names(self) -> list[str] | None:
        labels = self.labels
        if labels is None or not self.class_names:
            return None
        return [self.class_names[i] if i < len(self.class_names) else str(i) for i in labels]


def _log_progress(message: str = "", advance: int = 1, total: int | None = None, **_: Any) -> None:
    """First-run profiling steps on the ``veca_deploy`` logger (an application sees them with
    ``logging.basicConfig(level=logging.INFO)``)."""
    if message:
        logging.getLogger("veca_deploy").info("Runtime.open: %s", message)


def _check_deadline(deadline_ms: Any) -> None:
    if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float))
                                    or not math.isfinite(deadline_ms) or deadline_ms <= 0):
        raise UsageError(f"deadline_ms must be a positive number of milliseconds, got {deadline_ms!r}")


#: AdaptiveController settings ``adaptive_options`` may set (the rest come from the selection)
ADAPTIVE_OPTIONS = ("window", "headroom", "patience", "warmup", "min_samples", "span", "down_patience", "dwell_s",
                    "max_dwell_s", "probation_s", "max_ups_per_minute")


def _controller(ladder_ms: list[float], selection: Selection, clock: Callable[[], float],
                options: dict[str, Any]) -> AdaptiveController:
    """The controller for ``selection``'s ladder; bad settings are a one-line UsageError."""
    unknown = sorted(set(options) - set(ADAPTIVE_OPTIONS))
    if unknown:
        raise UsageError(f"unknown adaptive option(s) {', '.join(unknown)}; known: {', '.join(ADAPTIVE_OPTIONS)}")
    try:
        return AdaptiveController(ladder_ms, float(selection.budget_ms or 0), percentile=selection.percentile,
                                  margin=selection.margin, clock=clock, **options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad adaptive settings: {e}") from None


class Runtime:
    """A bundle served under a latency budget. Create with :meth:`open`."""

    def __init__(self, bundle: Bundle, selection: Selection, *, adaptive: bool = False,
                 threads: int | None = None, runner_extra: dict[str, Any] | None = None,
                 window: int = 16, headroom: float = 0.7, patience: int = 3,
                 clock: Callable[[], float] = time.perf_counter, latency_hook: LatencyHook | None = None,
                 adaptive_options: dict[str, Any] | None = None, streams: int = 1) -> None:
        self.bundle = bundle
        self.selection = selection
        self.adaptive = adaptive
        self._rungs: list[Measured] = selection.ladder() if adaptive else [selection.chosen]
        self._threads = threads
        self._runner_extra = runner_extra or {}
        self._clock = clock
        self._hook = latency_hook
        self._lock = threading.Lock()  # guards the current level and the controller
        self._warm_lock = threading.Lock()  # serializes runner creation / activation
        self._runners: dict[tuple[str, str | None], Runner] = {}
        self._run_locks: dict[tuple[str, str | None], threading.Lock | None] = {}
        self._level = 0
        self._closed = False
        self._deadline_misses = 0
        self.controller: AdaptiveController | None = None
        self._init_streams(streams)
        if adaptive:
            if selection.budget_ms is None:
                raise UsageError("adaptive mode needs a budget (budget_ms)")
            self.controller = _controller([m.latency_ms for m in self._rungs], selection, clock,
                                          {"window": window, "headroom": headroom, "patience": patience,
                                           **(adaptive_options or {})})
        names = bundle.manifest.model.get("class_names")
        self._class_names = tuple(str(n) for n in names) if isinstance(names, list) else None
        try:
            self._warm(0)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, directory: str | os.PathLike, budget_ms: float | None = None, *, backend: Any = "auto",
             percentile: float = 95, margin: float = 0.1, adaptive: bool = False,
             tiers: list[int] | None = None, precisions: list[str] | None = None, threads: int | None = None,
             measure: bool = True, count: int = 50, warmup: int = 5, window: int = 16, headroom: float = 0.7,
             patience: int = 3, clock: Callable[[], float] = time.perf_counter,
             latency_hook: LatencyHook | None = None, runner_options: dict[str, Any] | None = None,
             adaptive_options: dict[str, Any] | None = None,
             public_key: Any = None, input_size: Any = None, progress: Callable[..., None] | None = None,
             time_limit_s: float | None = None, streams: int | None = None, streams_needed: int | None = None,
             fps: float | None = None) -> "Runtime":
        """Open a bundle and select a tier for ``budget_ms`` at ``percentile`` (None: the most
        accurate tier, no profiling). Without a profile for this device the candidates are
        measured first (``count`` runs each) and the profile is saved into the bundle.
        ``latency_hook(measured_ms, tier) -> observed_ms`` lets tests inject slowdowns.
        ``adaptive_options`` passes the controller's other settings (``warmup``, ``down_patience``,
        ``dwell_s``, ``max_ups_per_minute``, ...; see :class:`AdaptiveController`).
        ``public_key``: trusted ed25519 public key file(s); given (or ``$VECA_PUBLIC_KEY`` set), an
        unsigned or mis-signed bundle is a BundleError before anything loads.
        ``input_size`` ((height, width) of what the application feeds): the budget covers
        preprocessing that size plus inference, and adaptive mode watches the total.
        First-run profiling reports each step to ``progress(message, advance=..., total=...)``
        (default: the ``veca_deploy`` logger at INFO) and ``time_limit_s`` bounds its timed runs
        (split over the candidates, at least 5 runs each; loads and compiles come on top).
        ``streams`` (default 1): requests :meth:`submit` keeps in flight at once (OpenVINO
        ``NUM_STREAMS``, ONNX Runtime parallel runs). ``streams_needed`` and ``fps`` (both, with
        ``budget_ms``): pick the most accurate candidate and concurrency that carries
        ``streams_needed * fps`` images/s within the budget (:func:`~veca_deploy.selector.workload.select_workload`;
        ``streams`` then fixes the concurrency), measuring what the profile lacks."""
        bundle = Bundle.open(directory, public_key=public_key)
        workload = None
        if streams_needed is not None or fps is not None:
            from .workload import select_workload

            if streams_needed is None or fps is None:
                raise UsageError("a workload needs both streams_needed and fps")
            if input_size is not None or time_limit_s is not None:
                raise UsageError("input_size and time_limit_s are not supported with a workload (streams_needed, fps) yet")
            workload = select_workload(bundle, streams_needed, fps, budget_ms, percentile=percentile, backend=backend,
                                       margin=margin, tiers=tiers, precisions=precisions,
                                       levels=None if streams is None else [streams], measure=measure, count=count,
                                       warmup=warmup, threads=threads, progress=progress or _log_progress)
            sel, streams = workload.selection(), workload.streams
        else:
            sel = select(bundle, budget_ms, percentile=percentile, backend=backend, margin=margin, tiers=tiers,
                         precisions=precisions, measure=measure, count=count, warmup=warmup, threads=threads,
                         input_size=input_size, progress=progress or _log_progress, time_limit_s=time_limit_s)
        rt = cls(bundle, sel, adaptive=adaptive, threads=threads, runner_extra=runner_options, window=window,
                 headroom=headroom, patience=patience, clock=clock, latency_hook=latency_hook,
                 adaptive_options=adaptive_options, streams=1 if streams is None else streams)
        rt.workload = workload
        return rt

    # ------------------------------------------------------------------ state
    @property
    def tier(self) -> Tier:
        """The tier serving new calls now: (cores, height, width, precision, backend, artifact)."""
        with self._lock:
            return self._rungs[self._level].cand.tier

    @property
    def tiers(self) -> list[Tier]:
        """The rungs adaptive mode may use, best first (just the selected tier when static)."""
        return [m.cand.tier for m in self._rungs]

    @property
    def switches(self) -> list[tuple[int, int, str]]:
        """Adaptive history: (call number, new rung index, reason)."""
        return list(self.controller.history) if self.controller else []

    # ------------------------------------------------------------------ inference
    def predict(self, images: Any, *, deadline_ms: float | None = None) -> Prediction:
        """Run ``images``: one raw uint8 image (HxW, HxWx1, HxWx3; any size), a list or uint8
        batch of them, or an already-normalized float32 NCHW batch of the tier's exact size.
        Bad input raises :class:`InputError` before anything runs. ``deadline_ms``: a call whose
        preprocessing + inference overruns it comes back with ``late=True``, is counted in
        :attr:`deadline_misses`, and (adaptive mode) is observed at no less than the deadline, so
        overruns push the controller down. The CPU backends' calls are not cancelled mid-way."""
        if self._closed:
            raise UsageError("this Runtime is closed")
        _check_deadline(deadline_ms)
        with self._lock:
            level = self._level
            rung = self._rungs[level]
        art = rung.cand.artifact
        runner = self._runner(rung.cand)
        t_pre = self._clock()
        x = self._prepare(images, rung.cand.tier)
        pre_ms = (self._clock() - t_pre) * 1e3
        n = x.shape[0]
        fixed = art.batch if isinstance(art.batch, int) else None
        # a fixed-batch graph gets exactly its batch per call (the last one padded); a dynamic one
        # with a ceiling (a TensorRT engine's profile max) at most max_batch images per call
        step = fixed or (art.max_batch if isinstance(art.max_batch, int) and art.max_batch > 0 else None)
        chunks = [x] if step is None else [x[i:i + step] for i in range(0, n, step)]
        lock = self._run_locks.get(rung.cand.runner_key)
        outs: list[dict[str, np.ndarray]] = []
        elapsed = 0.0
        for chunk in chunks:
            real = chunk.shape[0]
            if fixed is not None and real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            feed = {IMAGES: chunk}
            if art.elastic:
                feed[CORE_SELECT] = core_select(rung.cand.cores)
            if lock is not None:
                lock.acquire()
            try:
                t0 = self._clock()
                y = runner.infer(feed, check=False)  # _prepare validated it: no second pass
                elapsed += self._clock() - t0
            finally:
                if lock is not None:
                    lock.release()
            outs.append({k: v[:real] for k, v in y.items()})
        outputs = outs[0] if len(outs) == 1 else {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        latency = elapsed * 1e3
        tier = rung.cand.tier
        late = deadline_ms is not None and pre_ms + latency > deadline_ms
        if late:
            with self._lock:
                self._deadline_misses += 1
        if self.controller is not None:
            # per model call at batch 1, what the profile measured (a batch approximates it per image);
            # with a declared input size the ladder was budgeted on preprocessing + inference
            per = len(chunks) if fixed is not None else n
            observed = (latency + (pre_ms if self.selection.input_size else 0.0)) / per
            if self._hook is not None:
                observed = float(self._hook(observed, tier))
            if late:
                observed = max(observed, float(deadline_ms) / per)
            self._observe(observed, level)
        return Prediction(outputs, tier, latency, self._class_names, preprocess_ms=pre_ms, late=late)

    @property
    def deadline_misses(self) -> int:
        """Calls that overran their ``deadline_ms`` since open."""
        return self._deadline_misses

    __call__ = predict

    def _observe(self, observed_ms: float, level: int) -> None:
        assert self.controller is not None
        if not math.isfinite(observed_ms):
            return
        with self._lock:
            new = self.controller.observe(observed_ms, level)
            if new is not None:
                self._level = new
        if new is not None:
            self._warm(new)  # outside the lock: later calls already use the (warm) new rung

    def _prepare(self, images: Any, tier: Tier) -> np.ndarray:
        h, w = tier.height, tier.width
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            if images.dtype != np.float32:
                raise InputError(f"images must be uint8 (raw) or float32 (normalized NCHW), got {images.dtype}")
            if images.ndim != 4:
                raise InputError(f"float32 input must be a normalized NCHW batch [N, 3, {h}, {w}], "
                                 f"got shape {list(images.shape)} (pass raw images as uint8)")
            if images.shape[1] != 3:
                raise InputError(f"float32 input: channels must be 3 (NCHW), got {images.shape[1]} "
                                 f"(shape {list(images.shape)})")
            if images.shape[0] == 0:
                raise InputError("empty batch")
            if tuple(images.shape[2:]) != (h, w):
                raise InputError(f"float32 input must be {h}x{w} for tier C={tier.cores}, got "
                                 f"{images.shape[2]}x{images.shape[3]} (pass raw uint8 images to have them resized)")
            if not np.isfinite(images).all():
                raise InputError("input contains NaN or Inf")
            return np.ascontiguousarray(images)
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (2, 4):
            # HxWx4 (RGBA) would otherwise read as H grey images of Wx4: refuse the ambiguity
            raise InputError(f"image has {images.shape[-1]} channels (shape {list(images.shape)}); give HxW, HxWx1 "
                             "or HxWx3 (drop alpha), or a list for a batch of grey images")
        return self.bundle.preprocess(images, (h, w))

    # ------------------------------------------------------------------ runners
    def _runner(self, cand) -> Runner:
        r = self._runners.get(cand.runner_key)
        if r is None or not r.active:
            with self._warm_lock:
                r = self._make(cand)
        return r

    def _make(self, cand) -> Runner:
        """The runner of ``cand``'s artifact under its execution variant (one per pair)."""
        key = cand.runner_key
        r = self._runners.get(key)
        if r is None:
            art = cand.artifact
            backend = format_backend(art.format)
            extra = {**(self._runner_extra or {}), **cand.runner_extra}  # what the profile timed and gated
            r = create_runner(backend, self.bundle.path_of(art), **runner_options(backend, self._threads, extra))
            self._run_locks[key] = None if BACKENDS[backend].thread_safe else threading.Lock()
            self._runners[key] = r
        if not r.active:
            r.activate()
        return r

    def _warm(self, level: int) -> None:
        """Activate the rung at ``level`` and its neighbours (so the next switch is free)."""
        with self._warm_lock:
            for lv in (level, level + 1, level - 1):
                if 0 <= lv < len(self._rungs):
                    self._make(self._rungs[lv].cand)

    # ------------------------------------------------------------------ asynchronous (issue 19)
    def _init_streams(self, streams: int) -> None:
        """``streams`` requests in flight: every runner of this Runtime is compiled for them."""
        from ..runtimes.pool import check_streams

        self._streams = check_streams(streams)
        self._pools: dict[tuple[str, str | None], InferPool] = {}
        self.workload = None  # the WorkloadSelection behind this Runtime (open with streams_needed/fps)
        for m in self._rungs:
            check_streams(self._streams, m.cand.backend)
        if self._streams > 1:
            self._runner_extra = {**self._runner_extra, "streams": self._streams}

    @property
    def streams(self) -> int:
        """Requests :meth:`submit` runs at once."""
        return self._streams

    def submit(self, images: Any, *, deadline_ms: float | None = None) -> "Future[Prediction]":
        """Queue ``images`` (anything :meth:`predict` takes) and return at once a
        :class:`~concurrent.futures.Future` of the same :class:`Prediction` ``predict`` returns.
        Up to ``streams`` requests run at once (OpenVINO: one infer request per stream, ONNX Runtime
        parallel runs); the rest wait in order. Input checks and preprocessing run here, in the
        caller's thread (bad input raises :class:`InputError` here, before anything is queued); the
        tier is taken at this call, so a request never sees an adaptive switch half-way.
        Thread-safe. Cancelling the future before it runs drops the work.

        The prediction's ``queue_ms`` is the time it waited for a free stream; ``deadline_ms``
        applies to the whole submit-to-result time. In adaptive mode the controller observes
        inference *plus* queueing delay, so a load the current tier cannot keep up with (the
        queue grows) steps it down even though each inference alone still fits the budget."""
        if self._closed:
            raise UsageError("this Runtime is closed")
        _check_deadline(deadline_ms)
        with self._lock:
            level = self._level
            rung = self._rungs[level]
        t_pre = self._clock()
        x = self._prepare(images, rung.cand.tier)
        pre_ms = (self._clock() - t_pre) * 1e3
        if isinstance(images, np.ndarray) and np.may_share_memory(x, images):
            x = x.copy()  # the caller may reuse its buffer before the request runs
        pool = self._pool(rung.cand)
        feeds, reals, fixed = self._feeds(rung, x)
        outer: Future = Future()
        parts: list[Future] = []
        try:
            for feed in feeds:
                parts.append(pool.submit(feed))
        except UsageError:
            for p in parts:
                p.cancel()
            raise UsageError("this Runtime is closed") from None
        left = [len(parts)]
        guard = threading.Lock()

        def part_done(_f: Future) -> None:
            with guard:
                left[0] -= 1
                if left[0]:
                    return
            self._complete(outer, parts, reals, fixed, x.shape[0], rung, level, pre_ms, t_pre, deadline_ms)

        outer.add_done_callback(lambda f: [p.cancel() for p in parts] if f.cancelled() else None)
        for p in parts:
            p.add_done_callback(part_done)
        return outer

    def _feeds(self, rung: Measured, x: np.ndarray) -> tuple[list[dict[str, np.ndarray]], list[int], int | None]:
        """The model calls for ``x`` (as ``predict`` splits and pads them) and the real rows of each."""
        art = rung.cand.artifact
        fixed = art.batch if isinstance(art.batch, int) else None
        step = fixed or (art.max_batch if isinstance(art.max_batch, int) and art.max_batch > 0 else None)
        chunks = [x] if step is None else [x[i:i + step] for i in range(0, x.shape[0], step)]
        feeds, reals = [], []
        for chunk in chunks:
            real = chunk.shape[0]
            if fixed is not None and real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            feed = {IMAGES: np.ascontiguousarray(chunk)}
            if art.elastic:
                feed[CORE_SELECT] = core_select(rung.cand.cores)
            feeds.append(feed)
            reals.append(real)
        return feeds, reals, fixed

    def _complete(self, outer: Future, parts: list[Future], reals: list[int], fixed: int | None, n: int,
                  rung: Measured, level: int, pre_ms: float = 0.0, t_submit: float | None = None,
                  deadline_ms: float | None = None) -> None:
        """All model calls of one submit are done: settle its future (in the pool's thread)."""
        if outer.done():
            return
        wall_ms = None if t_submit is None else (self._clock() - t_submit) * 1e3
        try:
            if any(p.cancelled() for p in parts):  # close(cancel_pending=True) dropped part of it
                outer.cancel()
                return
            err = next((p.exception() for p in parts if p.exception() is not None), None)
            if err is not None:
                outer.set_exception(err)
                return
            outs, elapsed = [], 0.0
            for p, real in zip(parts, reals):
                y, ms = p.result()
                elapsed += ms
                outs.append({k: v[:real] for k, v in y.items()})
            outputs = outs[0] if len(outs) == 1 else {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
            tier = rung.cand.tier
            # parts of one submit may run side by side, so the wait is what the wall clock left over
            queue_ms = 0.0 if wall_ms is None else max(0.0, wall_ms - pre_ms - elapsed)
            late = deadline_ms is not None and pre_ms + queue_ms + elapsed > deadline_ms
            if late:
                with self._lock:
                    self._deadline_misses += 1
            if self.controller is not None:
                per = len(parts) if fixed is not None else n
                observed = elapsed / per
                if self._hook is not None:
                    observed = float(self._hook(observed, tier))
                # the wait counts whole: every image of the request waited it
                observed += queue_ms + (pre_ms / per if self.selection.input_size else 0.0)
                if late:
                    observed = max(observed, float(deadline_ms) / per)
                self._observe_async(observed, level)
            outer.set_result(Prediction(outputs, tier, elapsed, self._class_names, preprocess_ms=pre_ms,
                                        late=late, queue_ms=queue_ms))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            if not outer.done():
                try:
                    outer.set_exception(e)
                except Exception:  # noqa: BLE001 - cancelled concurrently
                    pass

    def _observe_async(self, observed_ms: float, level: int) -> None:
        """Like ``_observe``, from a completion thread: a switch warms the new rung's neighbours
        in a background thread instead of compiling inside the backend's callback."""
        assert self.controller is not None
        if not math.isfinite(observed_ms):
            return
        with self._lock:
            new = self.controller.observe(observed_ms, level)
            if new is not None:
                self._level = new
        if new is not None:
            threading.Thread(target=self._warm_background, args=(new,), name="veca-runtime-warm", daemon=True).start()

    def _warm_background(self, level: int) -> None:
        try:
            with self._warm_lock:
                for lv in (level, level + 1, level - 1):
                    if self._closed:
                        return
                    if 0 <= lv < len(self._rungs):
                        self._make(self._rungs[lv].cand)
        except Exception:  # noqa: BLE001 - the next submit on that rung reports it
            pass

    def _pool(self, cand) -> "InferPool":
        """The inference pool of ``cand``'s runner (created on first use)."""
        key = cand.runner_key
        p = self._pools.get(key)
        if p is None or p.closed:
            from ..runtimes.pool import create_pool

            with self._warm_lock:
                if self._closed:
                    raise UsageError("this Runtime is closed")
                p = self._pools.get(key)
                if p is None or p.closed:
                    runner = self._make(cand)
                    p = create_pool(runner, self._streams, lock=self._run_locks.get(key), clock=self._clock)
                    self._pools[key] = p
        return p

    def _close_pools(self, cancel: bool) -> None:
        with self._warm_lock:
            pools = list(getattr(self, "_pools", {}).values())
            self._pools = {}
        for p in pools:  # outside the lock: completions may warm a rung
            try:
                p.close(cancel=cancel)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ lifecycle
    def close(self, cancel_pending: bool = False) -> None:
        """Free every runner. Work :meth:`submit` queued still runs first (its futures complete);
        ``cancel_pending=True`` cancels what has not started instead (those futures are cancelled)."""
        self._closed = True
        self._close_pools(cancel_pending)
        with self._warm_lock:
            for r in self._runners.values():
                try:
                    r.close()
                except Exception:
                    pass
            self._runners.clear()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime({self.bundle.root}, tier={self.tier}, adaptive={self.adaptive})"
