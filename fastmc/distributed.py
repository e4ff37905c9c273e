"""Dask distributed backend: disjoint chunk ranges as tasks, merged exactly (DESIGN.md §7).

Optional (extra ``dist``): ``dask.distributed`` is imported only inside :func:`run_dask`.

A run's chunks are cut into contiguous, disjoint ranges; each task simulates one range with
:func:`fastmc.run.run` in a worker process (tables and the compiled chain are built once per
worker and reused) and returns its :class:`~fastmc.run.RunResult` (per-chunk rows, plain numpy).
The client collects the results in a :class:`ChunkCollector` and reduces them in chunk order, so
the tallies are bitwise those of one process.  A task that fails is resubmitted (``retries``);
a result delivered twice for the same range is accepted once if it is bit-identical and refused
otherwise, so a retry can never double count.

Schedulers: ``local:N`` starts a :class:`distributed.LocalCluster` of N single-threaded worker
processes on the loopback interface; ``tcp://HOST:PORT`` connects to a running scheduler (e.g.
one started by dask-jobqueue on SLURM/HTCondor; see the README).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastmc.chain import prepare
from fastmc.run import run

__all__ = ["parse_scheduler", "task_ranges", "contiguous_ranges", "ChunkCollector", "run_task", "run_dask"]


def parse_scheduler(text: str) -> tuple[str, Any]:
    """``local:N`` → ("local", N); ``tcp://host:port`` → ("tcp", address).  ValueError otherwise."""
    m = re.fullmatch(r"local:(\d+)", text)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= 1024:
            raise ValueError(f"--scheduler = {text!r}: need 1 <= N <= 1024 workers")
        return "local", n
    if re.fullmatch(r"(tcp|tls)://[^\s:/]+:\d{1,5}", text):
        return "tcp", text
    raise ValueError(f"--scheduler = {text!r}: must be local:N or tcp://HOST:PORT")


def contiguous_ranges(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique chunk ids → maximal contiguous [start, stop) ranges."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return []
    breaks = np.nonzero(np.diff(ids) != 1)[0]
    starts = np.concatenate([[ids[0]], ids[breaks + 1]])
    stops = np.concatenate([ids[breaks] + 1, [ids[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def task_ranges(ids: np.ndarray, n_tasks: int) -> list[tuple[int, int]]:
    """Cut sorted unique chunk ids into about ``n_tasks`` disjoint contiguous ranges."""
    out = []
    ranges = contiguous_ranges(ids)
    total = sum(b - a for a, b in ranges)
    size = max(1, -(-total // max(1, n_tasks)))
    for a, b in ranges:
        for s in range(a, b, size):
            out.append((s, min(s + size, b)))
    return out


class ChunkCollector:
    """Results of disjoint chunk ranges, reduced exactly and idempotently."""
    def __init__(self) -> None:
        self.parts: dict[tuple[int, int], Any] = {}

    def add(self, span: tuple[int, int], result: Any) -> bool:
        """Add the result of ``span``; False if it was already there (an identical re-delivery)."""
        ids = np.asarray(result.chunk_ids)
        if not np.array_equal(ids, np.arange(*span)):
            raise ValueError(f"result of task {span} holds chunks {ids.min()}..{ids.max()}")
        if span in self.parts:
            old = self.parts[span]
            if np.array_equal(old.rows, result.rows, equal_nan=True) and np.array_equal(old.n_gen, result.n_gen):
                return False
            raise ValueError(f"chunk range {span} delivered twice with different tallies")
        for a, b in self.parts:
            if a < span[1] and span[0] < b:
                raise ValueError(f"chunk range {span} overlaps {(a, b)}: refusing to double count")
        self.parts[span] = result
        return True

    @property
    def n_chunks(self) -> int:
        return sum(b - a for a, b in self.parts)

    def merged(self, base: Any = None) -> Any:
        """All parts (and ``base``, e.g. a checkpoint) merged; :meth:`RunResult.merge` refuses overlaps."""
        out = base
        for span in sorted(self.parts):
            out = self.parts[span] if out is None else out.merge(self.parts[span])
        return out


_PREPARED: dict[str, Any] = {}


def run_task(cfg: Any, start: int, stop: int, devices: int | None = None) -> Any:
    """One task: chunks [start, stop) of ``cfg`` in this (worker) process."""
    import json


    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    prep = _PREPARED.get(key)
    if prep is None:
        _PREPARED.clear()
        prep = _PREPARED[key] = prepare(cfg)
    return run(cfg, prep, start, stop, progress=False, devices=devices)


def run_dask(
    cfg: Any,
    scheduler: str,
    chunk_ids: np.ndarray,
    *,
    devices: int | None = None,
    tasks_per_worker: int = 4,
    retries: int = 2,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Any], None] | None = None,
    base: Any = None,
    task: Callable[..., Any] = run_task,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Simulate ``chunk_ids`` of ``cfg`` on a Dask cluster; returns the merged RunResult.
    ``base`` (a partial result, e.g. from a checkpoint) is merged in; ``on_checkpoint`` receives
    the merged partial result after every ``checkpoint_every`` newly completed chunks.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError("the Dask backend needs the 'dist' extra: pip install 'fastmc[dist]'") from None

    kind, arg = parse_scheduler(scheduler)
    t0 = time.perf_counter()
    cluster = None
    if kind == "local":
        cluster = LocalCluster(n_workers=arg, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(arg)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or (arg if kind == "local" else 1))
        spans = task_ranges(chunk_ids, n_workers * tasks_per_worker)
        if log:
            log(f"dask: {len(spans)} task(s) over {n_workers} worker(s) at {client.scheduler.address}")
        futures = {
            client.submit(task, cfg, a, b, devices, key=f"fastmc-{cfg.sha256[:12]}-{cfg.seed}-{a}-{b}",
                          retries=retries, pure=False): (a, b)
            for a, b in spans
        }
        collector = ChunkCollector()
        last = 0
        for fut in as_completed(futures):
            span = futures[fut]
            collector.add(span, fut.result())
            fut.release()
            done = collector.n_chunks
            due = checkpoint_every > 0 and done - last >= checkpoint_every and done < len(chunk_ids)
            if due and on_checkpoint is not None:
                last = done
                on_checkpoint(collector.merged(base))
        result = collector.merged(base)
        # wall time of this run (the tasks' own times overlap), plus the checkpoint's
        result.seconds = (base.seconds if base is not None else 0.0) + time.perf_counter() - t0
        return result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
