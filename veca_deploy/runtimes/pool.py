"""Several inferences of one :class:`Runner` in flight at once (issue 19): ``submit(feed)`` returns
a :class:`concurrent.futures.Future` of ``(outputs, latency_ms)``.

Each backend's own mechanism:

- **OpenVINO**: K infer requests on the runner's compiled model (the runner compiles with
  ``PERFORMANCE_HINT=THROUGHPUT`` and ``NUM_STREAMS=K`` when its ``streams`` option is K > 1),
  each driven by one worker thread (``infer`` releases the GIL). Not ``AsyncInferQueue``: its
  Python callbacks in OpenVINO's threads can deadlock the teardown (see :class:`OpenVINOInferPool`).
- **ONNX Runtime**: K worker threads calling ``InferenceSession.run`` in parallel on the one
  session (``run`` is thread-safe; the runner gives each run ``max(1, threads // K)`` intra-op
  threads, so K x threads <= the cores).
- **TensorRT**: K worker threads on a runner with K lanes (``streams=K``: one engine, execution
  context, CUDA stream and buffer set each; ``infer`` takes a free lane), so K requests are on the
  GPU at once. Written against the TensorRT 10 API; never run here (no GPU on the build machines).
- **anything else**: one worker thread, serialized with the synchronous path by the runner's lock.

``close()`` drains (every queued feed still runs) or, with ``cancel=True``, cancels the queued
feeds that have not started; running ones always finish. A closed pool refuses new work with a
:class:`UsageError`. :func:`measure_pool` keeps N requests in flight and times them with the same
output sanity checks as :func:`~veca_deploy.runtimes.timing.measure`. numpy only.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from ..errors import BackendUnavailable, BundleError, UsageError
from ..formats import BACKENDS
from .base import Runner, check_feed
from .timing import MAX_SAMPLES, PERCENTILES, Timing, check_outputs, peak_rss_mb, rss_mb

Clock = Callable[[], float]
#: backends with their own way of running several requests of one runner at once
ASYNC_BACKENDS = ("onnxruntime", "openvino", "tensorrt")


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_streams(streams: Any, backend: str | None = None) -> int:
    """A positive integer stream count that ``backend`` can serve; typed errors otherwise."""
    if isinstance(streams, bool) or not isinstance(streams, (int, np.integer)) or streams < 1:
        raise UsageError(f"streams must be a positive integer, got {streams!r}")
    streams = int(streams)
    if streams > 1 and backend is not None and backend not in ASYNC_BACKENDS:
        raise BackendUnavailable(f"streams > 1 is not supported for {_name(backend)} yet "
                                 "(one execution context per runner); use streams=1")
    return streams


def stream_threads(streams: int, threads: int | None = None) -> int:
    """Intra-op threads of each of ``streams`` parallel ONNX Runtime runs: the thread budget
    (``threads``, else the usable cores) split evenly, at least one."""
    return max(1, int(threads or usable_cores()) // max(1, int(streams)))


def _name(backend: str) -> str:
    return {"tensorrt": "TensorRT", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}.get(backend, backend)


class InferPool:
    """Up to ``streams`` inferences of ``runner`` at once. Subclasses start the work."""

    def __init__(self, runner: Runner, streams: int, lock: threading.Lock | None = None,
                 clock: Clock = time.perf_counter) -> None:
        self.runner = runner
        self.streams = check_streams(streams)
        self._lock = lock  # the runner's run lock when it is not thread-safe (shared with predict)
        self._clock = clock
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Lock()  # guards closed + the sentinels, so nothing is queued after them
        self.closed = False
        self._threads: list[threading.Thread] = []
        self._outputs = list(runner.output_names())

    # -------------------------------------------------------------- interface
    def submit(self, feed: dict[str, np.ndarray]) -> Future:
        """Queue one (already checked) feed; the Future gives ``(outputs, latency_ms)``."""
        fut: Future = Future()
        with self._state:
            if self.closed:
                raise UsageError("this inference pool is closed")
            self._q.put((fut, feed))
        return fut

    def close(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop taking work; run what is queued (or cancel it with ``cancel``), wait for the rest."""
        with self._state:
            if self.closed:
                return
            self.closed = True
            if cancel:
                self._cancel_queued()
            for _ in self._threads:
                self._q.put(None)
        for t in self._threads:
            t.join(timeout)
        self._finish()

    @property
    def busy(self) -> bool:
        return not self._q.empty()

    def describe(self) -> dict[str, Any]:
        return {"streams": self.streams, "mechanism": type(self).__name__}

    # -------------------------------------------------------------- internals
    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def _start(self, target: Callable[[], None], n: int, name: str) -> None:
        for i in range(n):
            t = threading.Thread(target=target, name=f"{name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _finish(self) -> None:  # after the threads ended
        pass

    def __enter__(self) -> "InferPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadInferPool(InferPool):
    """K worker threads calling ``runner.infer`` (ONNX Runtime: parallel ``run`` on one session;
    other backends: one worker under the runner's lock)."""

    def __init__(self, runner: Runner, streams: int, lock: threading.Lock | None = None,
                 clock: Clock = time.perf_counter) -> None:
        super().__init__(runner, streams, lock, clock)
        self._start(self._work, self.streams, f"veca-{runner.backend}")

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, feed = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if self._lock is not None:
                    with self._lock:
                        out, ms = self._run(feed)
                else:
                    out, ms = self._run(feed)
            except BaseException as e:  # noqa: BLE001 - delivered to the caller through the Future
                fut.set_exception(e)
            else:
                fut.set_result((out, ms))

    def _run(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        t0 = self._clock()
        out = self.runner.infer(feed, check=False)
        return out, (self._clock() - t0) * 1e3

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mechanism": "threads"}


class OpenVINOInferPool(ThreadInferPool):
    """``streams`` OpenVINO infer requests of the runner's compiled model (compiled with
    ``NUM_STREAMS`` = streams; a :class:`~veca_deploy.runtimes.openvino_rt.Lane` each, so batch 1
    runs on the batch-1 compile), each driven by its own worker thread: ``InferRequest.infer``
    releases the GIL, so the K requests run at once on the plugin's K streams.

    Not ``AsyncInferQueue``: its Python callbacks run in OpenVINO's stream threads, and tearing
    the compiled model down then deadlocks now and then (OpenVINO 2026.4: ``~CPUStreamsExecutor``
    joins a stream thread that waits for the GIL the closing thread holds; 2 of 25 closes of
    veca_small at 256 px). Here OpenVINO's threads never touch Python."""

    def __init__(self, runner: Runner, streams: int, lock: threading.Lock | None = None,
                 clock: Clock = time.perf_counter) -> None:
        runner.activate()
        self._requests = [runner.new_lane() for _ in range(check_streams(streams))]
        self._local = threading.local()
        self._next = iter(range(len(self._requests)))
        self._pick = threading.Lock()
        super().__init__(runner, streams, None, clock)  # own requests: no lock with the sync path

    def _run(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        req = getattr(self._local, "request", None)
        if req is None:
            with self._pick:
                req = self._local.request = self._requests[next(self._next)]
        t0 = self._clock()
        try:
            # as the runner's sync path: zero-copy in, shared out + one copy (callers own their arrays)
            outs = req.infer(feed, share_inputs=True, share_outputs=True).to_tuple()
            out = {name: np.array(t, copy=True) for name, t in zip(self._outputs, outs)}
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types
            raise _ov_error(self.runner, e) from None
        return out, (self._clock() - t0) * 1e3

    def _finish(self) -> None:
        self._requests = []  # the workers are gone: release the requests before the runner closes

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mechanism": "openvino infer requests (one per stream)"}


def _ov_error(runner: Runner, e: BaseException) -> BaseException:
    from ..errors import VecaError, first_line

    if isinstance(e, VecaError):
        return e
    return BundleError(f"{runner.path.name}: OpenVINO asynchronous inference failed ({first_line(e)})")


def create_pool(runner: Runner, streams: int = 1, lock: threading.Lock | None = None,
                clock: Clock = time.perf_counter) -> InferPool:
    """The pool of ``runner``'s backend for ``streams`` requests in flight (activates the runner).
    ``lock``: the runner's run lock when it is not thread-safe (the synchronous path takes it too)."""
    streams = check_streams(streams, runner.backend)
    runner.activate()
    if runner.backend == "openvino":
        return OpenVINOInferPool(runner, streams, clock=clock)
    if streams > 1 and not BACKENDS[runner.backend].thread_safe:  # pragma: no cover - guarded above
        raise BackendUnavailable(f"streams > 1 is not supported for {_name(runner.backend)} yet")
    return ThreadInferPool(runner, streams, lock=lock, clock=clock)


def stream_options(backend: str, streams: int) -> dict[str, Any]:
    """Runner options serving ``streams`` requests at once (empty for one: today's settings)."""
    streams = check_streams(streams, backend)
    return {} if streams == 1 else {"streams": streams}


# ---------------------------------------------------------------------------- timing
def measure_pool(pool: InferPool, feed: dict[str, np.ndarray], *, in_flight: int | None = None,
                 count: int | None = 100, duration_s: float | None = None, warmup: int = 10,
                 clock: Clock = time.perf_counter, where: str | None = None) -> Timing:
    """Throughput and latency with ``in_flight`` requests (default: the pool's streams) kept in
    flight: each completion submits the next, for ``count`` timed requests or ``duration_s``
    seconds (at least 5 + in_flight). Latency is submit to completion of each request;
    throughput is images per second of wall time over the timed requests. Every output is
    checked (finite, same shapes as the first run)."""
    k = pool.streams if in_flight is None else int(in_flight)
    if k < 1:
        raise UsageError(f"in_flight must be >= 1, got {in_flight}")
    if duration_s is None and (count is None or count < 1):
        raise UsageError(f"count must be a positive integer, got {count}")
    if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
        raise UsageError(f"duration must be a positive number of seconds, got {duration_s}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    where = where or pool.runner.path.name
    feed = check_feed(pool.runner.input_specs(), feed)
    batch = int(next(iter(feed.values())).shape[0]) if feed else 1
    out, _ = pool.submit(feed).result()
    shapes = check_outputs(out, None, batch, where)
    for f in [pool.submit(feed) for _ in range(warmup)]:
        f.result()

    slots = threading.Semaphore(k)
    mutex = threading.Lock()
    samples: list[float] = []
    errors: list[BaseException] = []

    def done(t0: float, f: Future) -> None:
        ms = (clock() - t0) * 1e3
        try:
            y, _ms = f.result()
            check_outputs(y, shapes, batch, where)
            with mutex:
                samples.append(ms)
        except BaseException as e:  # noqa: BLE001
            with mutex:
                errors.append(e)
        finally:
            slots.release()

    minimum = 5 + k
    deadline = None if duration_s is None else clock() + duration_s
    submitted = 0
    start = clock()
    while not errors:
        if deadline is None:
            if submitted >= count:  # type: ignore[operator]
                break
        elif clock() >= deadline and submitted >= minimum:
            break
        slots.acquire()
        t0 = clock()
        fut = pool.submit(feed)
        submitted += 1
        fut.add_done_callback(lambda f, t0=t0: done(t0, f))
    for _ in range(k):  # wait for the last ones
        slots.acquire()
    wall = clock() - start
    if errors:
        e = errors[0]
        raise e if isinstance(e, BundleError) else BundleError(f"{where}: {type(e).__name__}: {e}")
    arr = np.asarray(samples, dtype=np.float64)
    pct = {str(q): float(np.percentile(arr, q)) for q in PERCENTILES}
    kept = samples if len(samples) <= MAX_SAMPLES else \
        list(np.sort(arr)[np.linspace(0, len(arr) - 1, MAX_SAMPLES).astype(int)])
    return Timing(load_ms=None, first_ms=None, count=len(samples), warmup=warmup, batch=batch,
                  mean_ms=_r(arr.mean()), min_ms=_r(arr.min()), max_ms=_r(arr.max()),
                  percentiles_ms={q: _r(v) for q, v in pct.items()},
                  throughput_ips=round(batch * len(samples) / wall, 2) if wall > 0 else float("inf"),
                  rss_mb=_r(rss_mb(), 1), peak_rss_mb=_r(peak_rss_mb(), 1),
                  samples_ms=[_r(s, 4) for s in kept], output_shapes={n: list(s) for n, s in shapes.items()})


def _r(v: Any, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)
