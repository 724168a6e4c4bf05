r"""The main job: sample a 2-D Gaussian mixture with its exact score through methods of every backend.

Each method starts from the same exact samples of :math:`p_T` (so every error is the solver's, not
the prior's) and is compared with exact samples of :math:`p_{\epsilon}`: the sliced 2-Wasserstein
distance against its Monte Carlo floor (the same distance between independent exact sets of the
same size, over several seeds), and the mode masses read through the exact component posterior,
with their binomial standard errors.  Each row gets a verdict by the rule :data:`VERDICT_RULE`.
Run ``python -m sdekit.validation.demo --help``.

The demo chooses torch's intra-op thread count for the problem size (one thread for small states,
where more threads only wait for each other) and says so; ``--threads N`` overrides it.  The library
itself never changes torch's global settings.
"""

import argparse
import contextlib
import sys
from typing import Optional

import torch

import sdekit

from ._metrics import mode_masses, monte_carlo_floor, sliced_wasserstein
from ._mixture import GaussianMixture

SDES = {"vp": sdekit.VPSDE, "subvp": sdekit.SubVPSDE, "ve": sdekit.VESDE}

# (label, process, method, solve options): reverse SDEs through torchsde, the flow through
# torchdiffeq and scipy, fixed and adaptive.
RUNS = [
    ("reverse", "euler", dict(steps=1000)),
    ("reverse", "heun", dict(steps=250)),
    ("reverse", "srk", dict(steps=100)),
    ("reverse", "euler", dict(rtol=1e-2, atol=1e-2)),
    ("flow", "rk4", dict(steps=50)),
    ("flow", "dopri5", dict(rtol=1e-5, atol=1e-5)),
    ("flow", "RK45", dict(rtol=1e-5, atol=1e-5)),
]

#: Floor standard deviations above the floor's mean that a sampler's SW2 may reach, and mode-mass standard errors.
SW2_K, MODE_K = 3.0, 3.0
VERDICT_RULE = (f"ok if SW2 <= floor mean + {SW2_K:g} floor std (the spread between exact sets) "
                f"and every mode mass within {MODE_K:g} standard errors; otherwise CHECK")

#: States with fewer elements than this run on one thread by default (measured: 12-28x faster on two busy cores).
SMALL_STATE = 1 << 16


def default_threads(numel: int) -> int:
    """The demo's thread count for a state of ``numel`` elements: 1 if small, else torch's current count."""
    return 1 if numel < SMALL_STATE else torch.get_num_threads()


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(sde_name: str = "vp", n: int = 4000, seed: int = 0, device: str = "cpu", dtype=torch.float64,
        out=sys.stdout, threads: Optional[int] = None, runs=None):
    """Run every method of ``runs`` (default :data:`RUNS`) on the default 2-D mixture and print the table.

    Returns one dict per row, with the verdict (``"ok"`` or ``"CHECK"``, by :data:`VERDICT_RULE`) and the SW2
    limit it used.  ``threads``: torch's intra-op thread count for the run (restored afterwards); ``None``
    leaves it as it is.
    """
    with _threads(threads):
        return _run(sde_name, n, seed, device, dtype, out, threads, RUNS if runs is None else runs)


def _run(sde_name, n, seed, device, dtype, out, threads, runs):
    sde = SDES[sde_name]()
    mix = GaussianMixture.default_2d(sde)
    gen = torch.Generator().manual_seed(seed)
    x_T = mix.sample(n, t=sde.T, generator=gen).to(device=device, dtype=dtype)
    exact = mix.sample(n, t=sde.eps, generator=gen).to(device=device, dtype=dtype)

    def draw(k, g):
        return mix.sample(k, t=sde.eps, generator=g).to(dtype=dtype)

    floor = monte_carlo_floor(sliced_wasserstein, draw, n, repeats=8, seed=seed + 100)
    print(f"{type(sde).__name__}: 2-D mixture of 3 Gaussians (weights 0.5/0.3/0.2), {n} samples from the exact "
          f"p_T, solved from T={sde.T} to eps={sde.eps:g}, {dtype}, {device}", file=out)
    limit = floor.mean + SW2_K * floor.std
    if threads is not None:
        how = "small problem" if n * 2 < SMALL_STATE else "large problem"
        print(f"threads: {threads} ({how}; --threads N to change)", file=out)
    print(f"sliced W2 between two exact sample sets: mean {floor.mean:.4f}, std {floor.std:.4f}, "
          f"max {floor.max:.4f} over {floor.repeats} pairs", file=out)
    print(f"verdict: {VERDICT_RULE} (SW2 <= {limit:.4f})", file=out)
    head = f"{'process':8} {'method':9} {'backend':11} {'stepping':22} {'NFE':>6} {'steps':>6} {'wall s':>7} " \
           f"{'SW2':>7} {'SW2/floor':>9} {'mode |z| max':>12} {'verdict':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    rows = []
    for kind, method, opts in runs:
        make = sdekit.reverse if kind == "reverse" else sdekit.probability_flow
        sol = make(sde, mix.score).solve(x_T, method=method, seed=seed + 1, **opts)
        sw = sliced_wasserstein(sol.x, exact, floor=floor)
        masses = mode_masses(sol.x, mix)
        stepping = ", ".join(f"{k}={v:g}" for k, v in opts.items())
        verdict = "ok" if sw.value <= limit and masses.max_z <= MODE_K else "CHECK"
        rows.append(dict(process=kind, method=method, backend=sol.backend, stepping=stepping, nfe=sol.nfe,
                         steps=sol.steps, wall_time=sol.wall_time, sw2=sw.value, sw2_ratio=sw.ratio,
                         sw2_limit=limit, sw2_ratio_limit=limit / floor.mean, mode_z=masses.max_z,
                         verdict=verdict))
        steps = "-" if sol.steps is None else sol.steps
        print(f"{kind:8} {method:9} {sol.backend:11} {stepping:22} {sol.nfe:>6} {steps:>6} {sol.wall_time:>7.2f} "
              f"{sw.value:>7.4f} {sw.ratio:>9.2f} {masses.max_z:>12.2f} {verdict:>7}", file=out)
    bad = [f"{r['process']} {r['method']} ({r['stepping']})" for r in rows if r["verdict"] != "ok"]
    print(f"{len(rows) - len(bad)} of {len(rows)} rows ok: their samples are as good as exact ones at n={n}"
          + ("." if not bad else "; CHECK: " + ", ".join(bad)), file=out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sdekit.validation.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--sde", choices=sorted(SDES), default="vp", help="forward SDE (default vp)")
    parser.add_argument("--n", type=int, default=4000, help="samples per method (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 for small states on the CPU, else torch's own)")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    threads = args.threads
    if threads is None and args.device == "cpu":
        threads = default_threads(2 * args.n)
    run(args.sde, args.n, args.seed, args.device, torch.float32 if args.float32 else torch.float64,
        threads=threads)


if __name__ == "__main__":
    main()
