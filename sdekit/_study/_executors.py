r"""Where a study's rows run: here one after another, in local processes, or on a Dask cluster.

A row is a pure function of its configuration (its seed keys its initial states and its Brownian path,
see :mod:`sdekit._study._runner`), so where it runs changes none of its numbers: an executor only hands
out the pending rows and gives each finished record back to the caller, which appends it to the results
file and, at the end, writes the file in the plan's order.  Three executors:

- :class:`SerialExecutor`: the rows in plan order, in this process;
- :class:`ProcessExecutor`: ``workers`` spawned local processes (``concurrent.futures``), each with the
  study's torch thread count;
- :class:`DaskExecutor`: the rows as tasks of a ``dask.distributed`` cluster, given as a scheduler address
  (``"tcp://host:8786"``), a ``Client``, or nothing (dask's configured scheduler, else a new
  ``LocalCluster``).  The problem goes to the cluster once and each seed's shared context (initial
  states, exact samples, references) once, not once a row.

The references of each seed are computed where :func:`sdekit.study` runs, before any row is handed out.
"""

import os
import pickle
from typing import Callable, List, Optional, Tuple

import torch

from .._errors import ArgumentTypeError, InvalidParameterError

__all__ = ["EXECUTORS", "SerialExecutor", "ProcessExecutor", "DaskExecutor", "make_executor"]

#: The executors by name, as ``sdekit study --executor`` takes them.
EXECUTORS = ("serial", "processes", "dask")


def run_job(problem, row, ctx, settings, test_functions, keep, threads=None):
    """One row, wherever it runs: the study's thread count, then :func:`run_row`."""
    from ._runner import run_row
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    return run_row(problem, row, ctx, settings, test_functions, keep)


class SerialExecutor:
    """The rows one after another in this process, in plan order."""

    name = "serial"

    def run(self, problem, jobs: List[Tuple], settings, test_functions, finish: Callable) -> None:
        """Run ``jobs`` (``(row, seed context, keep samples)`` each) and call ``finish(record)`` for each."""
        for row, ctx, keep in jobs:
            finish(run_job(problem, row, ctx, settings, test_functions, keep))


def _picklable(problem, test_functions, where: str) -> None:
    try:
        pickle.dumps((problem, dict(test_functions)))
    except Exception as err:
        raise InvalidParameterError(f"{where} sends the problem to other processes, and it does not pickle "
                                    f"({type(err).__name__}: {err}); define it at module level or run the rows "
                                    f"serially (executor='serial')") from None


class ProcessExecutor:
    """``workers`` local processes (spawned), each set to the study's torch thread count."""

    name = "processes"

    def __init__(self, workers: int):
        self.workers = int(workers)

    def run(self, problem, jobs, settings, test_functions, finish) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        _picklable(problem, test_functions, f"executor='processes' ({self.workers} workers)")
        threads = settings.threads or torch.get_num_threads()
        mp = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp) as pool:
            futures = [pool.submit(run_job, problem, row, ctx, settings, dict(test_functions), keep, threads)
                       for row, ctx, keep in jobs]
            try:
                for fut in as_completed(futures):
                    finish(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


class DaskExecutor:
    """The rows as tasks of a ``dask.distributed`` cluster.

    ``scheduler``: an address such as ``"tcp://10.0.0.1:8786"``, a ``distributed.Client``, or ``None`` for
    dask's configured scheduler (``DASK_SCHEDULER_ADDRESS``) or else a new ``LocalCluster`` on this machine.
    A client made here is closed at the end; one given is left open.
    """

    name = "dask"

    def __init__(self, scheduler=None):
        if scheduler is not None and not isinstance(scheduler, str) and not _is_client(scheduler):
            raise ArgumentTypeError(f"scheduler must be an address such as 'tcp://host:8786' or a "
                                    f"distributed.Client, got {type(scheduler).__name__}")
        self.scheduler = scheduler
        _distributed()

    def run(self, problem, jobs, settings, test_functions, finish) -> None:
        distributed = _distributed()
        _picklable(problem, test_functions, "executor='dask'")
        own = not _is_client(self.scheduler)
        if own:
            try:
                client = distributed.Client(self.scheduler) if self.scheduler else distributed.Client()
            except (OSError, TimeoutError) as err:
                raise InvalidParameterError(f"cannot reach the Dask scheduler {self.scheduler!r} ({err}); start "
                                            "one (dask scheduler) or give its address as tcp://host:port") from None
        else:
            client = self.scheduler
        futures = []
        try:
            threads = settings.threads or torch.get_num_threads()
            remote = client.scatter(problem, broadcast=True, hash=False)
            tests = client.scatter(dict(test_functions), broadcast=True, hash=False)
            contexts = {}
            for row, ctx, keep in jobs:
                if id(ctx) not in contexts:
                    contexts[id(ctx)] = client.scatter(ctx, hash=False)
                futures.append(client.submit(run_job, remote, row, contexts[id(ctx)], settings, tests, keep,
                                             threads, pure=False))
            for fut in distributed.as_completed(futures):
                finish(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        finally:
            if own:
                client.close()


def _distributed():
    try:
        import distributed
    except ImportError:
        raise InvalidParameterError("executor='dask' needs dask.distributed; pip install 'sdekit[dask]' "
                                    "(or dask[distributed])") from None
    return distributed


def _is_client(obj) -> bool:
    return type(obj).__name__ == "Client" and hasattr(obj, "submit") and hasattr(obj, "scatter")


def make_executor(executor=None, workers: Optional[int] = None, scheduler=None):
    """The executor of :func:`sdekit.study`'s ``executor=``, ``workers=`` and ``scheduler=``.

    ``executor``: ``"serial"``, ``"processes"``, ``"dask"``, a ``distributed.Client`` (the Dask executor on
    it), or ``None``: local processes when ``workers > 1``, else serial.  ``workers``: processes of
    ``"processes"`` (default: the CPU count).  ``scheduler``: the Dask scheduler's address (``"dask"`` only).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidParameterError(f"workers must be a positive integer, got {workers!r}")
    if _is_client(executor):
        executor, scheduler = "dask", executor if scheduler is None else scheduler
    if executor is None:
        executor = "processes" if (workers or 1) > 1 else "serial"
    if executor not in EXECUTORS:
        raise InvalidParameterError(f"executor must be one of {', '.join(EXECUTORS)} (or a distributed.Client), "
                                    f"got {executor!r}")
    if scheduler is not None and executor != "dask":
        raise InvalidParameterError(f"a scheduler address is for executor='dask', not {executor!r}; give "
                                    "executor='dask' or leave the scheduler out")
    if workers is not None and workers > 1 and executor != "processes":
        raise InvalidParameterError(f"workers={workers} sets the local processes of executor='processes'; "
                                    f"executor={executor!r} takes none (a Dask cluster has its own workers)")
    if executor == "serial":
        return SerialExecutor()
    if executor == "processes":
        return ProcessExecutor(workers or os.cpu_count() or 1)
    return DaskExecutor(scheduler)
