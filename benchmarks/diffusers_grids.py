r"""sdekit's multistep samplers on diffusers' own grids, against diffusers' scheduler of the same algorithm.

A user who brings a diffusers schedule (``grid=`` the scheduler's levels) meets the grid's long last step:
with the linspace spacing on a VP model the last step jumps from :math:`\lambda \approx 1` to
:math:`\lambda \approx 4.6` at 10 steps.  For each problem (exact scores), spacing (linspace, leading,
trailing, Karras) and number of evaluations, this script runs diffusers' scheduler
(``benchmarks/diffusers_peers.py``) and sdekit's sampler of the same algorithm on the same levels, from the
same states at the first level, and prints the RMS error of each against the exact flow map (closed form for
Gaussians, dopri5 at rtol = atol = 1e-10 for mixtures) and their ratio.  A ratio below 1 is sdekit ahead.

    python benchmarks/diffusers_grids.py                 # every pair, 5/10/20 evaluations, 2,000 samples
    python benchmarks/diffusers_grids.py --nfe 10 20 --n 1000 --pairs dpmpp_3m unipc_bh2_3

The figures in docs/grids.md were made with the first command.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdekit  # noqa: E402
from diffusers_peers import SPACINGS, make, run, sdekit_grid  # noqa: E402
from samplers import problems, rms  # noqa: E402

#: diffusers' scheduler (a key of diffusers_peers.PEERS) -> sdekit's method and options of the same algorithm.
PAIRS = {
    "ddim": ("ddim", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_3m": ("dpmpp_3m", {}),
    "unipc_bh1": ("unipc", {"order": 2, "variant": "bh1"}),
    "unipc_bh2": ("unipc", {"order": 2, "variant": "bh2"}),
    "unipc_bh1_3": ("unipc", {"order": 3, "variant": "bh1"}),
    "unipc_bh2_3": ("unipc", {"order": 3, "variant": "bh2"}),
    "deis_2": ("deis", {"order": 2}),
    "deis_3": ("deis", {"order": 3}),
}


def exact_end(problem, x_start, grid):
    """The exact flow map from ``grid[0]`` to ``grid[-1]``."""
    t0, t1 = float(grid[0]), float(grid[-1])
    if not problem.is_mixture:
        return problem.data.flow_map(x_start, t0, t1)
    pf = sdekit.probability_flow(problem.sde, problem.score)
    return pf.solve(x_start, method="dopri5", t_start=t0, t_end=t1, rtol=1e-10, atol=1e-10).x


def compare(problem, pair, spacing, nfe, n, seed=0):
    """``(diffusers error, sdekit error, diffusers NFE, sdekit NFE)`` on one problem, spacing and budget."""
    method, options = PAIRS[pair]
    scheduler = make(pair, problem.sde, spacing=spacing)
    scheduler.set_timesteps(nfe)
    grid = sdekit_grid(scheduler, problem.sde)
    g = torch.Generator().manual_seed(seed)
    x_start = problem.data.sample(n, t=float(grid[0]), generator=g)
    truth = exact_end(problem, x_start, grid)
    x_d, nfe_d, t_end = run(scheduler, problem.sde, problem.score, x_start, nfe)
    assert abs(t_end - float(grid[-1])) <= 1e-6 * t_end, "the two must end at the same level"
    sol = sdekit.probability_flow(problem.sde, problem.score).solve(x_start, method=method, grid=grid,
                                                                     options=options)
    return rms(x_d - truth), rms(sol.x - truth), nfe_d, int(sol.nfe)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--n", type=int, default=2000, help="samples per cell")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--spacings", nargs="+", default=list(SPACINGS), choices=list(SPACINGS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import diffusers
    print(f"diffusers {diffusers.__version__}, sdekit {sdekit.__version__}; RMS error against the exact flow map, "
          f"{args.n} samples a cell; ratio = sdekit / diffusers\n")
    ratios = {nfe: [] for nfe in args.nfe}
    for problem in problems():
        print(f"## {problem.name}\n")
        print("| spacing | NFE | " + " | ".join(args.pairs) + " |")
        print("|---|---|" + "---|" * len(args.pairs))
        for spacing in args.spacings:
            for nfe in args.nfe:
                cells = []
                for pair in args.pairs:
                    e_d, e_s, n_d, n_s = compare(problem, pair, spacing, nfe, args.n)
                    ratios[nfe].append((e_s / e_d, problem.name, spacing, pair))
                    extra = "" if n_s == n_d else f" ({n_s} vs {n_d} NFE)"
                    cells.append(f"{e_d:.3g} / {e_s:.3g} = **{e_s / e_d:.2f}**{extra}")
                print(f"| {spacing} | {nfe} | " + " | ".join(cells) + " |", flush=True)
        print()
    for nfe, rs in ratios.items():
        worst = max(rs)
        print(f"{nfe} NFE: sdekit / diffusers at most {worst[0]:.2f} ({', '.join(worst[1:])}); "
              f"{sum(r <= 1.1 for r, *_ in rs)}/{len(rs)} cells within 1.1x, {sum(r < 1 for r, *_ in rs)} ahead")


if __name__ == "__main__":
    main()
