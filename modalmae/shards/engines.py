"""Engines that run a build's shard tasks: local worker processes, or Ray.

Both run ``run(task) -> record`` (``plan.build_shard`` with the build's options bound) once per
planned shard, each worker writing its own shard, and call ``done(task, record)`` in the parent
as tasks finish, in any order. Whatever the engine, a shard's bytes are the same.

A file that kills the process preparing it (a crash in a native decoder) must cost only that
file. When a worker dies, each shard task that was running is run again alone; one that kills
its process again is written here with each of its files prepared in a process of its own
(``run(task, prepared=...)``), and the file that kills its process becomes a ``Skip`` with the
reason.

- ``run_local``: a pool of ``workers`` processes forked from a forkserver (spawned where there
  is none); ``workers=1`` runs every task in this process (debuggers, monkeypatching in tests).
  With fewer shards to write than workers (a small corpus), the shards are written here one by
  one and their files prepared by all the workers, in order, so every core still works.
  Each worker watches the build's process and exits when it ends, and the forkserver exits
  with its last worker, so a build killed with ``kill -9`` leaves no process behind.
- ``run_ray``: one Ray task per shard, retried ``retries`` times when it fails or its worker
  dies (``max_retries`` / ``retry_exceptions``), on the cluster at ``address`` (``auto``,
  ``ray://head:10001``) or on a Ray started here for the build (``workers`` CPUs).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from modalmae.shards.plan import Prepare, ShardTask, safe_prepare
from modalmae.shards.types import Sample, Skip

log = logging.getLogger(__name__)

Run = Callable[..., dict]  # (task, prepared=None) -> record: plan.build_shard with the build's options bound
Done = Callable[[ShardTask, dict], None]
PrepareOne = Callable[[Any, str], "Sample | Skip"]

DIED = "the worker process died while preparing this file (a crash in a native decoder?)"


class BuildError(RuntimeError):
    """A shard could not be written (not a bad input file: those are skipped), e.g. the output
    is not writable. Shards finished before it are kept; a rerun continues."""


class WorkersDidNotStart(RuntimeError):
    """The worker processes die as they start."""


WORKERS_DID_NOT_START = (
    "the build's worker processes die as they start. A script that calls build_shards() must do so under "
    "`if __name__ == \"__main__\":`, because each worker imports the script (multiprocessing's forkserver and spawn "
    "start methods); or run with workers=1 (--workers 1), which uses no worker process"
)


def _exit_with(pid: int) -> None:
    """Worker initializer: end this worker as soon as process ``pid`` (the build's) ends,
    however it ends. Neither the parent's death nor the forkserver's can do it: the workers
    are the forkserver's children, and each holds the pipe that keeps the forkserver alive."""
    try:
        watch = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has ended, no pid reuse race
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        watch = None

    def wait_then_exit() -> None:
        if watch is not None:
            select.select([watch], [], [])
        else:
            while True:
                time.sleep(0.5)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=wait_then_exit, name="exit-with-build", daemon=True).start()


def _loaded_modalmae() -> list[str]:
    """The modules of this package the build's process has imported (``modalmae.modalities``, and
    through it torch, for ``build_shards.py``)."""
    return sorted(name for name in sys.modules if name == "modalmae" or name.startswith("modalmae."))


def _ready() -> bool:
    return True


def _pool(workers: int, preload: Sequence[str]) -> ProcessPoolExecutor:
    # forkserver (spawn where there is none), not fork: the parent may run threads (tqdm's
    # monitor, torch's pool), and forking a threaded process can deadlock the child.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("spawn")
    else:
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has already imported the modality (numpy, FFmpeg, ...)
        # and the parts of modalmae the build's process has: milliseconds per worker instead of a
        # second or more. Each worker runs the main script again (as __mp_main__, so that a
        # prepare defined there can be found), and its imports of modalmae are then already there. ("__main__" alone should do that,
        # but Python 3.11's forkserver never receives the script's path.) Applies when the server
        # starts, once per process.
        context.set_forkserver_preload(["__main__", *_loaded_modalmae(), *preload])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),))
    try:
        pool.submit(_ready).result()
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        raise WorkersDidNotStart(WORKERS_DID_NOT_START) from None
    return pool


def isolated(prepare: Prepare, options: Any, preload: Sequence[str]) -> PrepareOne:
    """``prepare_one(source, relpath)`` running each file in a pool of its own."""

    def prepare_one(source: Any, relpath: str) -> Sample | Skip:
        pool = _pool(1, preload)
        try:
            return pool.submit(safe_prepare, prepare, source, relpath, options).result()
        except BrokenProcessPool:
            return Skip(relpath, DIED)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    return prepare_one


def _one_by_one(task: ShardTask, prepare_one: PrepareOne) -> Iterator[Sample | Skip]:
    return (prepare_one(source, relpath) for source, relpath, _ in task.jobs)


def prepared_in_order(task: ShardTask, prepare: Prepare, options: Any, *, workers: int, preload: Sequence[str]) -> Iterator[Sample | Skip]:
    """``prepare`` of each of ``task``'s files by ``workers`` processes, yielded in order, at
    most 2 x workers in flight. When a worker dies, the files that were in flight are prepared
    again one process each, so only the file that kills its process is skipped."""
    todo = deque((source, relpath) for source, relpath, _ in task.jobs)
    while todo:
        window: deque[tuple[tuple[Any, str], Future]] = deque()
        pool = _pool(workers, preload)
        try:
            while todo or window:
                while todo and len(window) < 2 * workers:
                    window.append((todo[0], pool.submit(safe_prepare, prepare, *todo[0], options)))
                    todo.popleft()  # only once submitted: none gets lost
                result = window[0][1].result()
                window.popleft()
                yield result
        except BrokenProcessPool:
            prepare_one = isolated(prepare, options, preload)
            for job, future in window:
                done = future.done() and future.exception() is None
                yield future.result() if done else prepare_one(*job)
        finally:
            # On an interrupt, do not wait for the queued files; running ones finish on their own.
            pool.shutdown(wait=False, cancel_futures=True)


def run_local(
    tasks: Sequence[ShardTask], run: Run, done: Done, *, workers: int, retries: int, prepare: Prepare, options: Any,
    preload: Sequence[str] = (),
) -> None:
    """Run ``tasks`` in ``workers`` processes (1: in this one), at most one per worker at a
    time, so a worker's death loses at most ``workers`` tasks' work; with fewer tasks than
    workers, write them here and prepare their files in the workers. ``preload``: modules the
    forkserver imports once for all workers."""
    if workers <= 1 or len(tasks) < workers:
        for task in tasks:
            prepared = None if workers <= 1 else prepared_in_order(task, prepare, options, workers=workers, preload=preload)
            done(task, _retrying(run, task, retries, prepared))
        return
    pending, failures = deque(tasks), Counter()
    while pending:
        pool = _pool(workers, preload)
        running: dict[Future, ShardTask] = {}
        broken: list[ShardTask] = []
        try:
            while (pending or running) and not broken:
                while pending and len(running) < workers:
                    task = pending.popleft()
                    running[pool.submit(run, task)] = task
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        broken.append(task)
                        continue
                    except Exception as e:  # noqa: BLE001 - an output error: retried, then fatal
                        failures[task.index] += 1
                        if failures[task.index] > retries:
                            raise BuildError(f"{task.name}: {type(e).__name__}: {e}") from e
                        log.warning("%s failed (%s: %s); retrying", task.name, type(e).__name__, e)
                        pending.appendleft(task)
                        continue
                    done(task, record)
            broken += running.values()  # a broken pool fails every task it was running
        finally:
            # On an interrupt, do not wait for the queued tasks; running ones end with the pool.
            pool.shutdown(wait=False, cancel_futures=True)
        for task in sorted(broken, key=lambda t: t.index):
            done(task, _alone(task, run, isolated(prepare, options, preload), preload))


def _alone(task: ShardTask, run: Run, prepare_one: PrepareOne, preload: Sequence[str]) -> dict:
    """A task that was running when a worker died, run again in a pool of its own; if it kills
    that one too, it holds the culprit: written here, each of its files in a process of its own."""
    pool = _pool(1, preload)
    try:
        return pool.submit(run, task).result()
    except BrokenProcessPool:
        log.warning("%s: a file killed its worker process; preparing its files one process each", task.name)
        return run(task, prepared=_one_by_one(task, prepare_one))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _retrying(run: Run, task: ShardTask, retries: int, prepared: Iterable[Sample | Skip] | None = None) -> dict:
    for attempt in range(retries + 1):
        try:
            return run(task, prepared=prepared)
        except Exception as e:  # noqa: BLE001 - an output error: retried, then fatal
            if attempt == retries or prepared is not None:  # results handed in cannot be had twice
                raise BuildError(f"{task.name}: {type(e).__name__}: {e}") from e
            log.warning("%s failed (%s: %s); retrying", task.name, type(e).__name__, e)
    raise AssertionError("unreachable")


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("--engine ray needs Ray: pip install 'modalmae[ray]'") from e
    return ray


def _ray_run(run: Run, task: ShardTask) -> dict:
    return run(task)


def run_ray(
    tasks: Sequence[ShardTask], run: Run, done: Done, *, address: str | None, workers: int | None, retries: int,
    prepare: Prepare, options: Any,
) -> None:
    """Run ``tasks`` as Ray tasks (see the module docstring). A task whose worker died on every
    try is written here, each of its files prepared in a Ray task of its own."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        # Local Ray: as many CPUs as the build may use. A cluster: its own resources.
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=True)(_ray_run)
        refs = {remote.remote(run, task): task for task in tasks}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            task = refs.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError):
                log.warning("%s: a file killed its Ray worker on every try; preparing its files one task each", task.name)
                record = run(task, prepared=_one_by_one(task, _ray_isolated(ray, prepare, options)))
            except ray.exceptions.RayTaskError as e:
                raise BuildError(f"{task.name}: {e.cause!r} (after {retries} retries)") from e
            done(task, record)
    finally:
        if started:
            ray.shutdown()


def _ray_isolated(ray, prepare: Prepare, options: Any) -> PrepareOne:
    one = ray.remote(num_cpus=1, max_retries=0)(safe_prepare)

    def prepare_one(source: Any, relpath: str) -> Sample | Skip:
        try:
            return ray.get(one.remote(prepare, source, relpath, options))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError):
            return Skip(relpath, DIED)

    return prepare_one
