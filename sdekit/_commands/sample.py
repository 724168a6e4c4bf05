"""``sdekit sample``: draw samples of a problem with one method and save them (.pt or .npz)."""

import torch

from ._common import UsageError, _device, _dtype, _problem, _say, _shape, _threads


def add_parser(sub):
    s = sub.add_parser("sample", help="draw samples with one method and save them (.pt or .npz)",
                       description="Draw samples of a problem with one method; save them as .pt or .npz.")
    s.add_argument("--sde", help="vp (default), subvp, ve")
    s.add_argument("--problem", metavar="MODULE:ATTR")
    s.add_argument("--score", metavar="MODULE:ATTR")
    s.add_argument("--shape", help="event shape for --score (default 2)")
    s.add_argument("--method", default="sde:euler", help="e.g. euler, sde:ddim, ode:dpmpp_2m (default sde:euler)")
    s.add_argument("--steps", type=int)
    s.add_argument("--tol", type=float)
    s.add_argument("--samples", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float64")
    s.add_argument("--threads", type=int)
    s.add_argument("--out", default="samples.pt", help="file ending in .pt or .npz (default samples.pt)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(run=run)


def run(args) -> int:
    from .._study import MethodSpec
    problem = _problem(args.sde or "vp", args.problem, args.score, _shape(args.shape or "2"))
    spec = MethodSpec(args.method)
    if (args.steps is None) == (args.tol is None):
        raise UsageError("give --steps N (fixed steps) or --tol T (adaptive), one of them")
    if not args.out.endswith((".pt", ".npz")):
        raise UsageError(f"--out must end in .pt or .npz, got {args.out!r}")
    if args.samples < 1 or args.seed < 0:
        raise UsageError("need --samples >= 1 and --seed >= 0")
    _device(args.device)
    threads, why = _threads(args.threads, args.samples * problem.initial(1, torch.Generator())[0].numel(),
                            args.device)
    torch.set_num_threads(threads)
    x0 = problem.initial(args.samples, torch.Generator().manual_seed(args.seed))
    x0 = x0.to(device=args.device, dtype=_dtype(args.dtype))
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    if process is None:
        raise UsageError(f"{problem.name} has no probability flow; use an SDE method")
    budget = dict(steps=args.steps) if args.steps is not None else dict(rtol=args.tol, atol=args.tol)
    noise = dict(seed=args.seed) if spec.process == "sde" else {}
    sol = process.solve(x0, method=spec.method, t_start=problem.t_start, t_end=problem.t_end, **budget, **noise)
    x = sol.x.detach().cpu()
    meta = dict(problem=problem.name, method=spec.label, seed=args.seed, nfe=sol.nfe, steps=sol.steps,
                t_end=problem.t_end)
    if args.out.endswith(".pt"):
        torch.save(dict(x=x, **meta), args.out)
    else:
        import numpy as np
        np.savez(args.out, x=x.numpy(), **{k: np.asarray(str(v) if v is None else v) for k, v in meta.items()})
    _say(args.quiet, f"{args.samples} samples of {problem.name} by {spec.label} ({sol.nfe} NFE, "
                     f"{sol.wall_time:.2f} s, threads {threads}: {why}) -> {args.out}")
    return 0
