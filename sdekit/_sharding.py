r"""Sharded sampling: the same samples whatever the batch, the number of processes, their order and restarts.

Sample ``i`` of a run with seed ``s`` is a function of ``(s, i)`` alone:

- its initial state is :math:`x_T^{(i)} = \sigma_{prior}\, z^{(i)}` with :math:`z^{(i)}` the keyed normals
  ``keyed_normal(s, i, INITIAL_COUNTER, d)`` (a counter no Brownian path uses), or the problem's own
  ``keyed_initial(seed, index)`` where it defines one, or, for a problem with its own ``initial(n,
  generator)`` and no prior (a forward SDE), ``initial(1, generator)`` with one generator per sample seeded
  by the key of ``(s, i)`` (as NVlabs/edm's ``generate.py`` seeds one generator per image);
- its Brownian path is :class:`sdekit.KeyedBrownian` keyed by ``(s, i)`` (``index=`` the global indices);
- every step is per sample: methods whose adaptive step is shared by the batch (torchdiffeq's, scipy's,
  torchsde's with a tolerance) are refused unless each sample is solved alone (``batch=1``), or run
  per sample where ``solve(..., per_sample=True)`` exists for them.

The indices ``0 .. n - 1`` are cut into fixed shards of ``shard_size`` (the last one shorter); the shards
not yet on disk are dealt to the ranks in turn (the ``j``-th unfinished one to rank ``j mod world``).  A
shard is solved in batches of ``batch`` samples and written, as soon as it finishes, to
``<out>.shards/shard-<k>.pt`` (a temporary file renamed into place, so a file that exists is whole), with
the sha256 of its samples and counts.  A restarted run reads ``<out>.shards/run.json``, refuses shards of a
run with other settings, skips the finished shards whose checksum holds, solves the rest (a shard changed on
disk among them, said on stderr); then rank 0 gathers the shards in index order into ``out``, checking each
checksum again.  Rank 0 holds an exclusive lock on the folder from its claim to the end (``fcntl.flock``), so
a second run given the same ``--out`` while one is under way is refused in one line instead of writing the
same shards twice or deleting them under the first.

What stays the same across runs is spelled out in docs/distributed.md: bit for bit for any world size,
rank order, restart and (for batch-invariant scores) batch size, on one kind of device and dtype.
"""

import datetime
import hashlib
import json
import math
import os
import time
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ._errors import InvalidParameterError, MethodArgumentError
from ._keyed import COUNTER_BITS, KeyedBrownian, keyed_bits, keyed_normal
from ._study_engine._results import atomic_write, warning

try:
    import fcntl
except ImportError:                   # Windows: no advisory locks; one run a folder at a time
    fcntl = None

__all__ = ["INITIAL_COUNTER", "keyed_initial", "batch_coupling", "Shard", "shards", "ShardStore", "sample_shard",
           "save_samples", "DistContext", "dist_context"]

#: The counter of the initial noise: the top of :func:`sdekit.keyed_normal`'s counters (a Brownian path's draws
#: live in other streams, so none ever meets it).
INITIAL_COUNTER = 2 ** COUNTER_BITS - 1
#: The counter that seeds the per-sample generators of a problem's own ``initial``.
GENERATOR_COUNTER = 2 ** COUNTER_BITS - 2
#: Format of the shard files and of run.json.
FORMAT = 1
#: The name of the lock file of a folder whose filesystem cannot lock a directory (NFS).
LOCK_FILE = "run.lock"


# -- keyed initial states ---------------------------------------------------------------------------------
def keyed_initial(problem, seed: int, index: torch.Tensor, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Initial states ``(len(index), *event_shape)`` of samples ``index``, a function of ``(seed, index)`` only.

    **Arguments**

    - ``problem``: a :class:`sdekit.StudyProblem` (or any object with its members).
    - ``seed``: an integer in ``[0, 2**64)``; ``index``: int64 global sample indices ``(batch,)``.
    - ``dtype``, ``device``: of the states (the normals are drawn in ``dtype`` on ``device``).

    In order of preference: the problem's ``keyed_initial(seed, index)``; for a reverse problem under a
    linear SDE the prior :math:`\mathcal N(0, \sigma_{prior}^2 I)` as :math:`\sigma_{prior}\,z`, ``z`` keyed
    normals of counter :data:`INITIAL_COUNTER` (what score_sde, k-diffusion and diffusers start from);
    otherwise ``problem.initial(1, g_i)`` with one ``torch.Generator`` per sample seeded from the key of
    ``(seed, i)`` (exact, one call per sample).
    """
    index = index.to(device=device, dtype=torch.int64)
    hook = getattr(problem, "keyed_initial", None)
    if callable(hook):
        x = hook(int(seed), index)
        if not isinstance(x, torch.Tensor) or x.shape[:1] != index.shape:
            raise InvalidParameterError(f"{problem!r}.keyed_initial(seed, index) must return a tensor with one "
                                        f"row per index ({index.numel()}); fix the problem's keyed_initial")
        return x.to(device=device, dtype=dtype)
    shape = tuple(getattr(problem, "event_shape", ()))
    prior_std = getattr(getattr(problem, "sde", None), "prior_std", None)
    if getattr(problem, "process", "reverse") == "reverse" and prior_std is not None and shape:
        z = keyed_normal(int(seed), index, torch.full_like(index, INITIAL_COUNTER), math.prod(shape), dtype=dtype)
        return (float(prior_std) * z).view((index.numel(),) + shape)
    keys = keyed_bits(int(seed), index.cpu(), GENERATOR_COUNTER)
    rows = [problem.initial(1, torch.Generator().manual_seed(key)) for key in keys.tolist()]
    return torch.cat(rows).to(device=device, dtype=dtype)


# -- which methods couple the samples of a batch -----------------------------------------------------------
def batch_coupling(info, adaptive: bool, batch: int) -> dict:
    """Extra ``solve`` arguments that keep each sample independent of its batch-mates, or a one-line error.

    A fixed-step method steps every sample on the same grid and touches each sample's numbers alone: it
    needs nothing.  An adaptive method picks one step size from the whole batch's error norm, so a sample
    would change with its batch-mates: it runs only with ``batch == 1`` (each sample solved alone), or per
    sample (``per_sample=True``) where sdekit's own adaptive loop offers it.
    """
    if not adaptive or batch == 1:
        return {}
    if info.backend == "sdekit":
        return dict(per_sample=True)
    raise MethodArgumentError(
        f"{info.name} ({info.backend}) adapts one step size for the whole batch, so a sample would depend on "
        f"its batch-mates and the shards would not reproduce; use sdekit's own (sdekit.dopri5, sdekit.bosh3: a "
        f"step size per sample), fixed steps (--steps N), or --batch 1 (each sample solved alone)")


# -- shards --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``k``: the sample indices ``start .. stop - 1``."""

    k: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def indices(self, device=None) -> torch.Tensor:
        return torch.arange(self.start, self.stop, dtype=torch.int64, device=device)


def shards(n: int, shard_size: int) -> List[Shard]:
    """The shards of ``0 .. n - 1``: pieces of ``shard_size`` indices, the last one shorter."""
    return [Shard(k, k * shard_size, min(n, (k + 1) * shard_size)) for k in range(-(-n // shard_size))]


def shard_checksum(rec: dict) -> str:
    """The sha256 of a shard record: its fields but ``x`` and the checksum (JSON, keys sorted), then the dtype,
    shape and bytes of ``x``."""
    x = rec["x"].detach().cpu().contiguous()
    meta = {k: v for k, v in rec.items() if k not in ("x", "sha256")}
    head = json.dumps(dict(meta, x_dtype=str(x.dtype), x_shape=list(x.shape)), sort_keys=True, default=repr)
    h = hashlib.sha256(head.encode("utf-8"))
    h.update(x.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _lock_holder(st) -> Optional[int]:
    """The process that holds a lock on the file of ``st`` where the system says (Linux's /proc/locks)."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev and parts[4].isdigit():
                    return int(parts[4])
    except OSError:
        pass
    return None


def run_hash(identity: dict) -> str:
    """A short digest of the settings that fix the samples."""
    text = json.dumps(identity, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class ShardStore:
    r"""The shard files of one run: ``<folder>/run.json`` (the settings) and ``<folder>/shard-<k>.pt``.

    ``identity`` is every setting that changes the samples (problem fingerprint, method and options, budget,
    seed, n, shard size, dtype, device type, sdekit's version); a folder made by other settings is refused,
    so a restart never mixes samples of two runs.  Each shard file carries the sha256 of its samples
    (:func:`shard_checksum`): a file whose checksum fails is solved again, never gathered.  :meth:`claim` locks
    the folder for this process until :meth:`remove` (or the end of the process): a second run on it is refused.
    """

    def __init__(self, folder: str, identity: dict):
        self.folder = os.fspath(folder)
        self.identity = dict(identity, format=FORMAT)
        self.key = run_hash(self.identity)
        self._unlock = None

    @property
    def manifest(self) -> str:
        return os.path.join(self.folder, "run.json")

    def path(self, k: int) -> str:
        return os.path.join(self.folder, f"shard-{k:06d}.pt")

    def claim(self) -> None:
        """Lock the folder for this process (:meth:`lock`), then create its run.json (or check that the one
        there is this run's)."""
        os.makedirs(self.folder, exist_ok=True)
        self.lock()
        if self.held():
            return
        text = json.dumps(dict(key=self.key, settings=self.identity), indent=1, sort_keys=True, default=repr)
        atomic_write(self.manifest, lambda fh: fh.write(text.encode()))

    def lock(self) -> None:
        """Create the folder and hold an exclusive lock on it until :meth:`remove`, :meth:`unlock` or the end of
        the process (a kill included); another process's run on the folder is refused in one line.

        The lock is ``fcntl.flock`` on the folder itself, or, on a filesystem that cannot lock a directory (NFS),
        on ``run.lock`` inside it; without either (Windows, a filesystem with no locks) the folder is not locked.
        """
        if self._unlock is not None or fcntl is None:
            return
        for _ in range(100):
            os.makedirs(self.folder, exist_ok=True)
            fd, path = self._lock_at(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            if fd is None and path is not None:            # no lock on a directory here: a lock file
                fd, path = self._lock_at(os.path.join(self.folder, LOCK_FILE), os.O_RDWR | os.O_CREAT)
            if fd is None:
                if path is None:
                    continue                               # removed as we opened it: again
                return                                     # no locks on this filesystem
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                self._unlock = weakref.finalize(self, os.close, fd)
                return
            os.close(fd)                                   # removed (a run that finished) and made again: again
        raise InvalidParameterError(f"cannot lock {self.folder}: it is removed and made again without end; give "
                                    f"another --out")

    def _lock_at(self, path: str, flags: int):
        """``(fd, path)`` locked; ``(None, path)`` where this filesystem cannot lock it; ``(None, None)`` when it
        vanished.  Another process holding it: the one-line refusal."""
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            return None, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, path
        except BlockingIOError:
            holder = _lock_holder(os.fstat(fd))
            os.close(fd)
            who = f" (process {holder})" if holder else ""
            raise InvalidParameterError(
                f"another sdekit sample{who} is writing {self.folder} now (the same --out); wait for it to finish "
                f"or stop it, or give another --out") from None
        except OSError:
            os.close(fd)
            return None, path

    def unlock(self) -> None:
        """Release the folder's lock (it is released too when this store is collected or the process ends)."""
        if self._unlock is not None:
            self._unlock()
            self._unlock = None

    def held(self) -> bool:
        """Whether the folder holds a run's shards (a run.json and shard files beside it), refused by
        :meth:`check` when that run is another."""
        if os.path.exists(self.manifest) and self.finished():
            self.check()
            return True
        return False

    def finished(self) -> List[str]:
        """The shard files in the folder (a run.json with none beside it holds nothing worth keeping)."""
        return sorted(f for f in os.listdir(self.folder) if f.startswith("shard-") and f.endswith(".pt"))

    def check(self) -> None:
        """Refuse a folder whose run.json describes another run, naming the settings that differ."""
        try:
            with open(self.manifest, encoding="utf-8") as fh:
                there = json.load(fh)
        except (OSError, ValueError) as err:
            raise InvalidParameterError(f"cannot read {self.manifest} ({type(err).__name__}); delete the folder "
                                        f"{self.folder} to start the run over") from None
        if there.get("key") == self.key:
            return
        old = there.get("settings") if isinstance(there.get("settings"), dict) else {}
        new = json.loads(json.dumps(self.identity, default=repr))
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["format"]
        raise InvalidParameterError(
            f"{self.folder} holds shards of another run (different {', '.join(differ)}); give another --out, "
            f"or delete {self.folder} to start over")

    def load(self, shard: Shard) -> Optional[dict]:
        """The finished shard's record (``x``, ``nfe``, ...), or ``None`` when it is not there, unreadable or
        its checksum fails (said on stderr; the next run solves it again)."""
        rec, why = self._read(shard)
        if why:
            warning(f"{self.path(shard.k)} {why}; run the same command to solve shard {shard.k} again")
        return None if why else rec

    def peek(self, shard: Shard) -> bool:
        """Whether the shard is finished and whole: read memory-mapped and its checksum checked; a damaged file
        (unreadable, or a checksum that fails) is deleted, said on stderr, so the shard is solved again."""
        rec, why = self._read(shard, mmap=True)
        if why:
            warning(f"{self.path(shard.k)} {why}: solving shard {shard.k} (samples {shard.start}..{shard.stop - 1}) "
                    f"again")
            rec = None                  # the memory map's file is closed before it is removed
            os.remove(self.path(shard.k))
        return rec is not None

    def _read(self, shard: Shard, mmap: bool = False):
        """``(record, what is wrong with it)`` of the shard's file: ``(None, None)`` when there is none; a file
        that cannot be read (a disk full, an edit) is damaged, a record of another run is refused."""
        path = self.path(shard.k)
        if not os.path.exists(path):
            return None, None
        try:
            rec = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return rec, self._damage(path, shard, rec)
        except InvalidParameterError:
            raise
        except Exception as err:
            return None, f"cannot be read ({type(err).__name__})"

    def _damage(self, path: str, shard: Shard, rec) -> Optional[str]:
        """What is wrong with a shard record read from disk (``None``: nothing); a whole record of another run
        or of other samples is refused."""
        if not isinstance(rec, dict) or not isinstance(rec.get("x"), torch.Tensor):
            return "does not hold a shard record"
        if "sha256" not in rec:
            return "has no checksum (written by an older sdekit)"
        if rec["sha256"] != shard_checksum(rec):
            return "fails its checksum (the file was changed on disk)"
        if rec.get("run") != self.key:
            raise InvalidParameterError(f"{path} belongs to another run; delete it (or the folder {self.folder}) "
                                        "to solve that shard again")
        if (rec.get("start"), rec.get("stop")) != (shard.start, shard.stop) or rec["x"].shape[:1] != (shard.size,):
            raise InvalidParameterError(f"{path} does not hold samples {shard.start}..{shard.stop - 1}; delete it "
                                        "to solve that shard again")
        return None

    def save(self, shard: Shard, x: torch.Tensor, **info) -> None:
        """Write the shard with its checksum atomically: a temporary file in the same folder, fsynced, renamed
        into place."""
        rec = dict(run=self.key, k=shard.k, start=shard.start, stop=shard.stop, x=x.detach().cpu().contiguous(),
                   **info)
        rec["sha256"] = shard_checksum(rec)
        atomic_write(self.path(shard.k), lambda fh: torch.save(rec, fh))

    def remove(self) -> None:
        """Delete the shard files, run.json and the lock file, then the folder if nothing else is in it; then
        release the lock."""
        try:
            for name in os.listdir(self.folder):
                if name in ("run.json", LOCK_FILE) or name.startswith("shard-"):
                    os.remove(os.path.join(self.folder, name))
            try:
                os.rmdir(self.folder)
            except OSError:
                pass
        finally:
            self.unlock()


# -- solving a shard ------------------------------------------------------------------------------------------
def sample_shard(problem, spec, shard: Shard, seed: int, budget: dict, batch: int, dtype, device,
                 extra: Optional[dict] = None) -> Dict:
    """Solve the samples of ``shard`` in batches of at most ``batch``: ``{"x", "nfe", "calls", "steps",
    "wall_time"}``, ``nfe`` the score evaluations a sample saw (the largest over the batches), ``calls`` those
    of all the batches.

    Each batch starts from :func:`keyed_initial` and, for an SDE method, is driven by the
    :class:`sdekit.KeyedBrownian` of its global indices.
    """
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    lo, hi = sorted((problem.t_start, problem.t_end))
    kwargs = dict(budget, **(extra or {}))
    if spec.schedule is not None and "steps" in kwargs:
        kwargs["schedule"] = spec.schedule
    out, nfe, calls, steps, wall = [], 0, 0, 0, 0.0
    for a in range(shard.start, shard.stop, batch):
        index = torch.arange(a, min(a + batch, shard.stop), dtype=torch.int64, device=device)
        x0 = keyed_initial(problem, seed, index, dtype=dtype, device=device)
        if spec.process == "sde":
            kwargs["noise"] = KeyedBrownian(lo, hi, tuple(x0.shape), seed=int(seed), index=index, dtype=dtype,
                                            device=device)
        with torch.no_grad():
            sol = process.solve(x0, method=spec.method, options=spec.options or None, t_start=problem.t_start,
                                t_end=problem.t_end, **kwargs)
        out.append(sol.x.detach().cpu())
        nfe, calls = max(nfe, int(sol.nfe)), calls + int(sol.nfe)
        steps, wall = max(steps, int(sol.steps)), wall + float(sol.wall_time)
    return dict(x=torch.cat(out), nfe=nfe, calls=calls, steps=steps, wall_time=wall)


# -- the gathered file ---------------------------------------------------------------------------------------
def save_samples(path: str, x: torch.Tensor, meta: dict) -> None:
    """Write ``x`` and ``meta`` atomically to ``path``: a ``.pt`` dict or a ``.npz`` archive."""
    if path.endswith(".pt"):
        atomic_write(path, lambda fh: torch.save(dict(x=x, **meta), fh))
    else:
        import numpy as np
        arrays = {k: np.asarray(str(v) if v is None or isinstance(v, (dict, list)) else v) for k, v in meta.items()}
        atomic_write(path, lambda fh: np.savez(fh, x=x.numpy(), **arrays))


# -- torch.distributed ---------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world``, its device, and whether it set up a group."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    group: bool = False

    def barrier(self) -> None:
        if self.group:
            import torch.distributed as dist
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.device(self.device).index or 0])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.group = False


def dist_context(device: str, environ=None) -> DistContext:
    """Under torchrun (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` set): join the process group, NCCL for CUDA
    devices and gloo otherwise; ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``.  Elsewhere one process, rank 0.

    Variables of a process group that are set in part (``WORLD_SIZE`` > 1 without ``RANK``, ``MASTER_ADDR`` or
    ``MASTER_PORT``) are refused in one line that names the missing one, before any rendezvous."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return DistContext(device=device)
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise InvalidParameterError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); "
                                    "launch with torchrun or unset them") from None
    if world > 1 and not _group_ready():
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not str(env.get(v, "")).strip()]
        if missing:
            raise InvalidParameterError(
                f"WORLD_SIZE={world} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
                f"launch with torchrun (it sets them all), set {', '.join(missing)}, or unset WORLD_SIZE and RANK "
                f"to run on one process")
        if not 0 <= rank < world:
            raise InvalidParameterError(f"RANK={rank} is not in 0..{world - 1} (WORLD_SIZE={world}); launch with "
                                        "torchrun or fix RANK")
        try:
            port = int(env["MASTER_PORT"])
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise InvalidParameterError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number (1..65535); "
                                        "launch with torchrun or fix MASTER_PORT")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        device = f"cuda:{local}"
    if world <= 1:
        return DistContext(0, 1, device)
    import torch.distributed as dist
    if dev.type == "cuda":
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():      # ranks wait at the end for the slowest (a resumed run is uneven): long timeout
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(days=7))
    return DistContext(rank, world, device, group=True)


def _group_ready() -> bool:
    """Whether this process already joined a process group (then the caller's rendezvous needs no variables)."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def wait_for(paths: List[str], timeout: float) -> None:
    """Wait until every path exists (rank 0 gathering shards written by others on a shared folder)."""
    end = time.monotonic() + timeout
    while any(not os.path.exists(p) for p in paths):
        if time.monotonic() > end:
            missing = [p for p in paths if not os.path.exists(p)]
            raise InvalidParameterError(f"{len(missing)} shard files never appeared (first: {missing[0]}); the "
                                        "folder must be shared by every rank (one filesystem for all nodes)")
        time.sleep(0.2)
