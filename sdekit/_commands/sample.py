"""``sdekit sample``: draw samples of a problem with one method, in shards, on one process or under torchrun.

``sdekit sample --n 50000 --seed 0 --method ode:dpmpp_2m --steps 20 --out samples.pt`` draws the samples
on one process; ``torchrun --nproc-per-node 8 -m sdekit sample ...`` (same options) splits them between
the processes (NCCL on GPUs, gloo on the CPU).  Sample ``i`` comes from ``(seed, i)`` alone
(:mod:`sdekit._sharding`), so the file is the same bit for bit whatever the number of processes; each
finished shard is saved under ``<out>.shards/`` at once, and the same command resumes a killed run.
"""

import os

from . import COMMANDS
from ._common import UsageError, _device, _dtype, _problem, _say, _shape, _threads, check_seed, count

#: Samples per shard file unless ``--shard-size`` says otherwise.
DEFAULT_SHARD = 1000
#: Samples of one run at most: rank 0 gathers them into one file, in memory.
MAX_SAMPLES = 10 ** 8
#: Fixed steps at most (as :func:`sdekit.solve`'s ``MAX_GRID_STEPS``: each step is kept in memory).
MAX_STEPS = 10 ** 7


def add_parser(sub):
    s = sub.add_parser("sample", help=COMMANDS["sample"],
                       description="Draw samples of a problem with one method and save them as .pt or .npz. "
                                   "Under torchrun the samples are split between the processes; sample i comes "
                                   "from (seed, i) alone, so the file is the same whatever the number of "
                                   "processes. Finished shards are kept in OUT.shards/; run the same command to "
                                   "resume a killed run.")
    s.add_argument("--sde", help="vp (default), subvp, ve; a --model or --score that carries its SDE uses its own")
    s.add_argument("--problem", metavar="NAME|MODULE:ATTR",
                   help="mixture (default), gaussian, exact:NAME, or your StudyProblem (or a function returning one)")
    s.add_argument("--score", metavar="MODULE:ATTR", help="your score(x, t) (a float32 network is fine)")
    s.add_argument("--model", metavar="FILE|digits", help="a model saved by sdekit train, or digits (the shipped "
                                                          "digits U-Net), sampled under the SDE it was trained with")
    s.add_argument("--shape", help="event shape for --score (default 2)")
    s.add_argument("--method", default="sde:euler", help="e.g. euler, sde:ddim, ode:dpmpp_2m (default sde:euler)")
    s.add_argument("--steps", type=count, help=f"fixed steps, 1 to {MAX_STEPS:.0e}")
    s.add_argument("--tol", type=float, help="adaptive tolerance (rtol = atol); batch-coupled methods need --batch 1")
    s.add_argument("-n", "--n", "--samples", dest="n", type=count, default=1000,
                   help=f"number of samples, 1 to {MAX_SAMPLES:.0e} (default 1000); under torchrun write -n or "
                        "--samples (torchrun reads --n as one of its own options)")
    s.add_argument("--seed", type=int, default=0, help="in [0, 2**64) (default 0)")
    s.add_argument("--batch", type=count, help="samples per solve (default: the shard size); memory, not results")
    s.add_argument("--shard-size", dest="shard_size", type=count, default=DEFAULT_SHARD,
                   help=f"samples per shard file (default {DEFAULT_SHARD}); fixed for a run and its restarts")
    s.add_argument("--keep-shards", dest="keep_shards", action="store_true",
                   help="keep OUT.shards/ after gathering (default: delete it)")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda (under torchrun: cuda:LOCAL_RANK), ...")
    s.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    s.add_argument("--threads", type=int)
    s.add_argument("--out", default="samples.pt", help="file ending in .pt or .npz (default samples.pt)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(run=run)


def _checked(args):
    if (args.steps is None) == (args.tol is None):
        raise UsageError("give --steps N (fixed steps) or --tol T (adaptive), one of them")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be from 1 to {MAX_STEPS:.0e} (each step is kept in memory and calls the "
                         f"score), got {args.steps}; take fewer steps, or an adaptive method with --tol")
    if args.tol is not None and not args.tol > 0:
        raise UsageError(f"--tol must be positive, got {args.tol}")
    if not args.out.endswith((".pt", ".npz")):
        raise UsageError(f"--out must end in .pt or .npz, got {args.out!r}")
    if not 1 <= args.n <= MAX_SAMPLES:
        raise UsageError(f"-n must be from 1 to {MAX_SAMPLES:.0e} (rank 0 gathers the samples into one file in "
                         f"memory), got {args.n}; split a larger set into runs of other seeds")
    check_seed(args.seed)
    if args.shard_size < 1 or (args.batch is not None and args.batch < 1):
        raise UsageError("--shard-size and --batch must be at least 1")


def run(args) -> int:
    import torch

    import sdekit
    from .._sharding import ShardStore, batch_coupling, dist_context, sample_shard, save_samples, shards, wait_for
    from .._study_engine import MethodSpec
    _checked(args)
    spec = MethodSpec(args.method)          # a misspelt method fails here, with the library's suggestion
    problem = _problem(args.sde, args.problem, args.score, _shape(args.shape or "2"), model=args.model)
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    if process is None:
        raise UsageError(f"{problem.name} has no probability flow; use an SDE method")
    dtype = _dtype(args.dtype)
    _device(args.device)
    shard_size = min(args.shard_size, args.n)
    batch = min(args.batch or shard_size, shard_size)
    adaptive = args.tol is not None and spec.info.stepping in ("adaptive", "either")
    extra = batch_coupling(spec.info, adaptive, batch)
    budget = dict(steps=args.steps) if args.steps is not None else dict(rtol=args.tol, atol=args.tol)
    ctx = dist_context(args.device)
    threads_before = torch.get_num_threads()      # restored at the end: main() may run inside a user's process
    try:
        device = _device(ctx.device)
        tag = f"[rank {ctx.rank}/{ctx.world}] " if ctx.world > 1 else ""
        say = (lambda m: _say(args.quiet, tag + m))
        numel = batch * problem.initial(1, torch.Generator().manual_seed(0))[0].numel()
        threads, why = _threads(args.threads, numel, device)
        torch.set_num_threads(threads)
        identity = dict(problem=problem.fingerprint(), method=spec.config(), budget=budget, seed=int(args.seed),
                        n=int(args.n), shard_size=int(shard_size), dtype=args.dtype,
                        device=torch.device(device).type, sdekit=sdekit.__version__)
        store = ShardStore(args.out + ".shards", identity)
        every = shards(args.n, shard_size)
        store.held()                        # every rank refuses another run's shards, none waits for rank 0
        if ctx.rank == 0:
            store.claim()
            done = sum(store.peek(s) for s in every)
            if done:
                say(f"resuming: {done} of {len(every)} shards already in {store.folder}")
        ctx.barrier()
        store.check()
        todo = [s for s in every if not os.path.exists(store.path(s.k))]
        mine = todo[ctx.rank::ctx.world]
        say(f"{len(mine)} of {len(every)} shards of {shard_size} samples to solve here ({spec.label}, batch "
            f"{batch}, {args.dtype} on {device}, threads {threads}: {why})")
        for s in mine:
            rec = sample_shard(problem, spec, s, args.seed, budget, batch, dtype, device, extra)
            store.save(s, rec.pop("x"), **rec)
            say(f"shard {s.k}: samples {s.start}..{s.stop - 1} ({rec['nfe']} NFE, {rec['wall_time']:.2f} s) -> "
                f"{store.path(s.k)}")
        ctx.barrier()
        if ctx.rank == 0:
            wait_for([store.path(s.k) for s in every], timeout=60.0)
            recs = [store.load(s) for s in every]
            missing = [s.k for s, r in zip(every, recs) if r is None]
            if missing:
                raise UsageError(f"shards {missing[:5]} of {store.folder} could not be read; run the same command "
                                 "again to solve them")
            x = torch.cat([r["x"] for r in recs])
            nfe, calls = max(int(r["nfe"]) for r in recs), sum(int(r["calls"]) for r in recs)
            meta = dict(problem=problem.name, method=spec.label, seed=int(args.seed), n=int(args.n), nfe=nfe,
                        calls=calls, steps=max(int(r["steps"]) for r in recs), t_end=problem.t_end,
                        shard_size=int(shard_size), dtype=args.dtype, run=store.key)
            save_samples(args.out, x, meta)
            if not args.keep_shards:
                store.remove()
            say(f"{args.n} samples of {problem.name} by {spec.label} ({nfe} NFE a sample, {calls} score calls, "
                f"{sum(float(r['wall_time']) for r in recs):.2f} s of solving) -> {args.out}")
    finally:
        torch.set_num_threads(threads_before)
        ctx.close()
    return 0
