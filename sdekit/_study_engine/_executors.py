r"""Where a study's rows run: here one after another, in local processes, or on a Dask cluster.

A row is a pure function of its configuration (its seed keys its initial states and its Brownian path,
see :mod:`sdekit._study_engine._runner`), so where it runs changes none of its numbers: an executor only hands
out the pending rows and gives each finished record back to the caller, which appends it to the results
file and, at the end, writes the file in the plan's order.  Three executors:

- :class:`SerialExecutor`: the rows in plan order, in this process;
- :class:`ProcessExecutor`: ``workers`` spawned local processes (``concurrent.futures``), each with the
  study's torch thread count;
- :class:`DaskExecutor`: the seeds' shared contexts and the rows as tasks of a ``dask.distributed``
  cluster, given as a scheduler address (``"tcp://host:8786"``), a ``Client``, or nothing (dask's
  configured scheduler, else a new ``LocalCluster``).  The problem goes to each worker once; each seed's
  context (initial states, exact samples, references) is computed on the cluster, kept there, and read by
  the rows of that seed, which run as soon as it is ready.

The serial and process executors compute the seeds' contexts here, in seed order, before the rows.  Each
executor's ``run(problem, seeds, jobs, settings, test_functions, finish, stage)`` takes ``seeds`` (seed to
the reference families its rows need) and ``jobs`` (``(row, keep samples)`` pairs), and calls
``finish(record)`` for each row and ``stage(text)`` to name what it is doing.
"""

import numbers
import os
import pickle
import weakref
from typing import Optional

import torch

from .._errors import ArgumentTypeError, InvalidParameterError, SDEKitError
from ._runner import run_row, seed_context

__all__ = ["EXECUTORS", "ExecutorError", "SerialExecutor", "ProcessExecutor", "DaskExecutor", "make_executor"]

#: The executors by name, as ``sdekit study --executor`` takes them.
EXECUTORS = ("serial", "processes", "dask")


class ExecutorError(SDEKitError, RuntimeError):
    """A worker died (killed, out of memory, the cluster gone) while it ran rows; the finished rows are saved."""


def _lost(err, where: str) -> ExecutorError:
    return ExecutorError(f"{where} lost a worker ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                         "finished rows are saved: run the same command to resume")


def run_job(problem, row, ctx, settings, test_functions, keep, threads=None):
    """One row, wherever it runs: the study's thread count, the problem's per-seed preparation (cached),
    then :func:`run_row`."""
    _use_threads(threads)
    _prepare(problem, settings.samples, row.seed)
    return run_row(problem, row, ctx, settings, test_functions, keep)


def _use_threads(threads) -> None:
    """The study's torch thread count in this process (a worker's included); ``None`` keeps the current one."""
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


#: The (samples, seed) pairs each problem object has been prepared for in this process.
_PREPARED = weakref.WeakKeyDictionary()


def _prepared(problem) -> set:
    """The ``(samples, seed)`` pairs ``problem`` has been prepared for in this process; an empty set every time
    for a problem that is not weakly referable (it is prepared every time)."""
    try:
        return _PREPARED.setdefault(problem, set())
    except TypeError:
        return set()


def _prepare(problem, n: int, seed: int) -> None:
    """``problem.prepare(n, seed)`` once per problem object and process (a worker's copy included)."""
    done = _prepared(problem)
    if (n, seed) not in done:
        problem.prepare(n, seed)
        done.add((n, seed))


def context_job(problem, seed, settings, families, threads=None):
    """One seed's shared context (initial states, exact samples, references), wherever it runs."""
    _use_threads(threads)
    ctx = seed_context(problem, seed, settings, families)        # it prepares the problem for the seed
    _prepared(problem).add((settings.samples, int(seed)))
    return ctx


def local_contexts(problem, seeds, settings, stage) -> dict:
    """The contexts of ``seeds`` computed here, in seed order."""
    stage("references")
    out = {seed: context_job(problem, seed, settings, fams) for seed, fams in seeds.items()}
    stage("rows")
    return out


class SerialExecutor:
    """The rows one after another in this process, in plan order."""

    name = "serial"

    def run(self, problem, seeds, jobs, settings, test_functions, finish, stage=lambda text: None) -> None:
        contexts = local_contexts(problem, seeds, settings, stage)
        for row, keep in jobs:
            finish(run_job(problem, row, contexts[row.seed], settings, test_functions, keep))


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

    def run(self, problem, seeds, jobs, settings, test_functions, finish, stage=lambda text: None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool
        _picklable(problem, test_functions, f"executor='processes' ({self.workers} workers)")
        contexts = local_contexts(problem, seeds, settings, stage)
        threads = settings.threads or torch.get_num_threads()
        mp = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp) as pool:
            futures = [pool.submit(run_job, problem, row, contexts[row.seed], settings, dict(test_functions), keep,
                                   threads) for row, keep in jobs]
            try:
                for fut in as_completed(futures):
                    finish(fut.result())
            except BrokenProcessPool as err:
                raise _lost(err, "executor='processes'") from None
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

    def run(self, problem, seeds, jobs, settings, test_functions, finish, stage=lambda text: None) -> None:
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
            stage("dask")
            threads = settings.threads or torch.get_num_threads()
            remote = client.scatter(problem, broadcast=True, hash=False)
            tests = client.scatter(dict(test_functions), broadcast=True, hash=False)
            contexts = {seed: client.submit(context_job, remote, seed, settings, fams, threads, pure=False)
                        for seed, fams in seeds.items()}
            futures = list(contexts.values())
            rows = [client.submit(run_job, remote, row, contexts[row.seed], settings, tests, keep, threads,
                                  pure=False) for row, keep in jobs]
            futures += rows
            for fut in distributed.as_completed(rows):
                finish(fut.result())
        except BaseException as err:
            for fut in futures:
                fut.cancel()
            if isinstance(err, (distributed.KilledWorker, distributed.comm.CommClosedError)):
                raise _lost(err, "executor='dask'") from None
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
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 1):
        raise InvalidParameterError(f"workers must be a positive integer, got {workers!r}")
    workers = None if workers is None else int(workers)
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
