r"""Grids optimized for the model (``sdekit.optimize_schedule``) beside sdekit's stock schedules and every peer
(a script, never a test).

At 5 and 10 score evaluations (NFE), on problems with exact scores, each sampler runs from the same test states
x_T and is measured by the RMS error (over all entries) against the exact probability-flow map from x_T to the
sampler's own end time (closed form for the Gaussians; torchdiffeq's ``dopri5`` at ``rtol = atol = 1e-10`` for
the mixtures):

- problems, each under ``VPSDE()`` and ``VESDE(0.01, 50)``: a sharp 2-D mixture of five modes (weights 0.5 to
  0.03, standard deviations 0.03 to 0.1: ``samplers.sharp_mixture``); a low-rank mixture in 64-D (six modes on a
  random 4-D subspace, standard deviations 0.05 to 0.3 in it, 0.01 across it); an image-sized Gaussian
  (3 x 32 x 32, flattened to 3072: a power-law spectrum in each channel's 2-D DCT basis, as natural images have);
- sdekit stock: every fixed-step ODE sampler of ``samplers.SD_ODE`` that fits the budget, on each of the uniform,
  log-SNR and Karras grids (the best is shown, its own default marked);
- sdekit optimized: ``optimize_schedule`` with its defaults for the samplers of :data:`OPTIMIZED` (the
  single-evaluation multistep ``dpmpp_3m``, ``unipc``, UniPC's bh1 variant of order 2 (diffusers' default) and
  ``ipndm``, and at 10 NFE the single-step ``dpm_solver_2``; ``--methods`` takes any others), calibrated on
  states drawn with seed 1 (``--calibration`` of them) and tested on states drawn with seed 2: two independent
  draws of the exact law at T, so the test states are never the calibration ones.  An option row is also shown
  on its stock schedule;
- k-diffusion: every ODE sampler of ``samplers.KD_ODE`` on the uniform, log-SNR (= k-diffusion's exponential) and
  Karras grids, and ``dpm_fast`` on its own;
- diffusers: every ODE scheduler of ``diffusers_peers.PEERS`` with each spacing of ``diffusers_peers.SPACINGS``
  (linspace, leading, trailing, Karras); a scheduler whose steps do not give exactly the budget's NFE runs with
  the count that comes closest below it (marked ``@n``).

The target (docs/optimized_schedules.md): sdekit's best optimized row at most half the error of the best peer.

    python benchmarks/optimized_schedules.py                           # every problem: about 2 hours of one CPU thread
    python benchmarks/optimized_schedules.py --problems "sharp mixture"  # one family (docs/optimized_schedules.md)
    python benchmarks/optimized_schedules.py --quick                   # 2-D mixtures, three samplers, fewer states
"""

import argparse
import datetime
import math
import os
import platform
import sys
import time
import warnings

import torch

import sdekit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplers import (GRIDS, KD_ODE, PER_STEP, SD_ODE, Problem, best_cells, grid_of, load_k_diffusion,  # noqa: E402
                      rms, run_kd, sharp_mixture)

try:
    import diffusers_peers
except ImportError as err:            # diffusers absent: the script says so and goes on without it
    diffusers_peers, DIFFUSERS_ERROR = None, str(err)

#: The samplers optimized: label -> (method, options).  UniPC's B(h) = h variant (bh1) is diffusers' default.
OPTIMIZED = {"dpmpp_3m": ("dpmpp_3m", {}), "unipc": ("unipc", {}),
             "unipc, bh1 order 2": ("unipc", {"variant": "bh1", "order": 2}),
             "ipndm": ("ipndm", {}), "dpm_solver_2": ("dpm_solver_2", {})}
QUICK = ("dpmpp_3m", "unipc", "unipc, bh1 order 2")
BUDGETS = (5, 10)
CAL_SEED, TEST_SEED = 1, 2


# -- problems -----------------------------------------------------------------------------------
class LowRankMixture:
    r"""Six Gaussian modes on a random 4-D subspace of :math:`\mathbb{R}^{64}`, sharp across it.

    Mode :math:`k` is :math:`N(U\mu_k,\ U A_k U^\top + \delta I)` with :math:`U` a fixed orthonormal
    :math:`64 \times 4` basis, :math:`A_k` of standard deviations 0.05 to 0.3 and :math:`\delta = 10^{-4}`.  At time
    t, with :math:`c = \alpha^2\delta + \sigma^2`, :math:`x = Uz + r` (:math:`r \perp U`) and
    :math:`B_k = \alpha^2 A_k + cI`, the score is :math:`-\sum_k w_k(z)\,U B_k^{-1}(z - \alpha\mu_k) - r/c`, with
    :math:`w_k` the posterior of mode :math:`k` from the 4-D part alone (the rest is common to every mode): exact,
    and a few 4 x 4 solves a sample instead of 64 x 64 ones.
    """

    def __init__(self, sde, dim=64, rank=4, modes=6):
        g = torch.Generator().manual_seed(11)
        self.sde, self.dim, self.rank, self.delta = sde, dim, rank, 1e-4
        self.basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))
        self.weights = torch.softmax(torch.randn(modes, generator=g, dtype=torch.float64), 0)
        self.mu = 2.0 * torch.randn(modes, rank, generator=g, dtype=torch.float64)
        inner = []
        for _ in range(modes):
            q, _ = torch.linalg.qr(torch.randn(rank, rank, generator=g, dtype=torch.float64))
            scales = 0.05 + 0.25 * torch.rand(rank, generator=g, dtype=torch.float64)
            inner.append((q * scales ** 2) @ q.T)
        self.A = torch.stack(inner)                                            # (modes, rank, rank)

    def score(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        alpha, sigma = self.sde.alpha(t).to(torch.float64), self.sde.sigma(t).to(torch.float64)
        c = alpha ** 2 * self.delta + sigma ** 2                               # (n,)
        x64 = x.to(torch.float64)
        z = x64 @ self.basis                                                   # (n, rank)
        r = x64 - z @ self.basis.T
        B = alpha[:, None, None, None] ** 2 * self.A + c[:, None, None, None] * torch.eye(self.rank,
                                                                                          dtype=torch.float64)
        diff = z[:, None, :] - alpha[:, None, None] * self.mu                   # (n, modes, rank)
        chol = torch.linalg.cholesky(B)
        sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]               # B^-1 (z - alpha mu)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = torch.log(self.weights) - 0.5 * ((diff * sol).sum(-1) + logdet)
        w = torch.softmax(logp, dim=1)
        return (-(w[..., None] * sol).sum(1) @ self.basis.T - r / c[:, None]).to(x.dtype)

    def sample(self, n, t=0.0, generator=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        e4 = torch.randn(n, self.rank, 1, generator=generator, dtype=torch.float64)
        z0 = self.mu[k] + (torch.linalg.cholesky(self.A)[k] @ e4)[..., 0]
        x0 = z0 @ self.basis.T + math.sqrt(self.delta) * torch.randn(n, self.dim, generator=generator,
                                                                      dtype=torch.float64)
        tt = torch.full((1,), float(t), dtype=torch.float64)
        alpha, sigma = self.sde.alpha(tt), self.sde.sigma(tt)
        return alpha * x0 + sigma * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)


class ImageGaussian:
    r"""A Gaussian on 3 x 32 x 32 images, flattened to 3072: independent coefficients in each channel's orthonormal
    2-D DCT basis with variances :math:`v_{kl} = 0.5 / (1 + (k^2 + l^2)/4) + 10^{-4}` and a smooth mean.

    With :math:`V_t = \alpha_t^2 v + \sigma_t^2` per coefficient, the score is :math:`-(c - \alpha_t\mu_c)/V_t` in
    the basis, and the probability-flow map from t to s is :math:`c_s - \alpha_s\mu_c = \sqrt{V_s/V_t}\,(c_t -
    \alpha_t\mu_c)`, both exact.
    """

    shape = (3, 32, 32)

    def __init__(self, sde):
        self.sde, self.dim = sde, 3 * 32 * 32
        n = torch.arange(32, dtype=torch.float64)
        dct = torch.cos(math.pi * (n[None, :] + 0.5) * n[:, None] / 32) * math.sqrt(2 / 32)
        dct[0] /= math.sqrt(2)
        self.dct = dct                                            # orthonormal: rows are the basis
        k2 = n[:, None] ** 2 + n[None, :] ** 2
        self.var = (0.5 / (1 + k2 / 4) + 1e-4).expand(3, 32, 32).contiguous()
        yy, xx = torch.meshgrid(n / 31, n / 31, indexing="ij")
        mean = torch.stack([0.3 * xx - 0.1, 0.2 * yy, 0.25 * (xx * yy) - 0.05])
        self.mean_c = self._to(mean[None]).reshape(-1)

    def _to(self, x):
        return self.dct @ x.reshape(-1, 3, 32, 32) @ self.dct.T

    def _back(self, c):
        return (self.dct.T @ c.reshape(-1, 3, 32, 32) @ self.dct).reshape(c.shape[0], -1)

    def _moments(self, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        alpha, sigma = self.sde.alpha(t).to(torch.float64), self.sde.sigma(t).to(torch.float64)
        var = alpha[:, None] ** 2 * self.var.reshape(1, -1) + sigma[:, None] ** 2
        return alpha[:, None], var

    def score(self, x, t):
        alpha, var = self._moments(t)
        c = self._to(x.to(torch.float64)).reshape(x.shape[0], -1)
        return self._back(-(c - alpha * self.mean_c) / var).to(x.dtype)

    def sample(self, n, t=0.0, generator=None):
        alpha, var = self._moments(torch.full((n,), float(t), dtype=torch.float64))
        c = alpha * self.mean_c + var.sqrt() * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self._back(c)

    def flow_map(self, x, t, s):
        at, vt = self._moments(torch.full((x.shape[0],), float(t), dtype=torch.float64))
        as_, vs = self._moments(torch.full((x.shape[0],), float(s), dtype=torch.float64))
        c = self._to(x.to(torch.float64)).reshape(x.shape[0], -1)
        return self._back(as_ * self.mean_c + (vs / vt).sqrt() * (c - at * self.mean_c)).to(x.dtype)


def problems(quick):
    out = []
    for sde_name, sde in (("VP", sdekit.VPSDE()), ("VE", sdekit.VESDE(0.01, 50))):
        out.append(Problem(f"sharp mixture 2-D, {sde_name}", sde, sharp_mixture(sde)))
        if not quick:
            mix = Problem(f"low-rank mixture 64-D (rank 4), {sde_name}", sde, LowRankMixture(sde))
            mix.is_mixture = True                  # no closed-form flow map: the reference is dopri5
            out.append(mix)
            out.append(Problem(f"image Gaussian 3x32x32, {sde_name}", sde, ImageGaussian(sde)))
    return out


class Exact:
    """The exact flow map from the test states to any end time (cached per end time): the closed form, or for a
    mixture (``problem.is_mixture``) dopri5 at ``rtol = atol = tol``."""

    def __init__(self, problem, x_T, tol=1e-10):
        self.problem, self.x_T, self.tol, self.cache = problem, x_T, tol, {}

    def __call__(self, t_end):
        key = round(float(t_end), 15)
        if key not in self.cache:
            p = self.problem
            if p.is_mixture:
                pf = sdekit.probability_flow(p.sde, p.score)
                self.cache[key] = pf.solve(self.x_T, method="dopri5", rtol=self.tol, atol=self.tol,
                                           t_end=float(t_end)).x
            else:
                self.cache[key] = p.data.flow_map(self.x_T, p.sde.T, float(t_end))
        return self.cache[key]


# -- rows ---------------------------------------------------------------------------------------
def sdekit_rows(problem, x_T, exact, budgets):
    pf = sdekit.probability_flow(problem.sde, problem.score)
    rows = []      # (lib, method, grid, nfe budget, nfe used, rms)
    for nfe in budgets:
        for name in SD_ODE:
            per = PER_STEP.get(name, 1)
            steps = nfe if name == "dpm_solver_fast" else (nfe // per if nfe % per == 0 else None)
            if not steps:
                continue
            for grid in GRIDS:
                sol = pf.solve(x_T, method=name, steps=steps, schedule=grid)
                rows.append(("sdekit", name, grid, nfe, int(sol.nfe), rms(sol.x - exact(problem.sde.eps))))
    return rows


def optimized_rows(problem, x_cal, x_T, exact, budgets, methods, log):
    pf = sdekit.probability_flow(problem.sde, problem.score)
    rows, costs = [], []
    for nfe in budgets:
        for label in methods:
            name, options = OPTIMIZED.get(label, (label, {}))
            per = PER_STEP.get(name, 1)
            if nfe % per:
                continue
            s = sdekit.optimize_schedule(pf, name, nfe // per, x_cal, options=options)
            sol = pf.solve(x_T, method=name, grid=s.grid, options=options)
            stock = pf.solve(x_T, method=name, steps=nfe // per, options=options)
            eps = exact(problem.sde.eps)
            rows.append(("sdekit optimized", label, s.start, nfe, int(sol.nfe), rms(sol.x - eps)))
            if options:     # the option row on its stock schedule, for comparison
                rows.append(("sdekit", label, s.stock_schedule, nfe, int(stock.nfe), rms(stock.x - eps)))
            costs.append((label, nfe, s))
            log(f"  optimized {label} at {nfe} NFE: calibration {s.stock_error:.3g} -> {s.error:.3g}, test "
                f"{rms(stock.x - eps):.3g} -> {rms(sol.x - eps):.3g}; {s.score_calls} calls, {s.seconds:.0f} s")
    return rows, costs


def kd_rows(ks, problem, x_T, exact, budgets):
    rows = []
    for nfe in budgets:
        for name in KD_ODE:
            if name == "dpm_fast":
                x, used = run_kd(ks, name, problem, x_T, None, nfe)
                rows.append(("k-diffusion", name, "own", nfe, used, rms(x - exact(problem.sde.eps))))
                continue
            per = PER_STEP.get(name, 1)
            if nfe % per:
                continue
            for grid in GRIDS:
                x, used = run_kd(ks, name, problem, x_T, grid_of(problem.sde, grid, nfe // per), nfe)
                rows.append(("k-diffusion", name, grid, nfe, used, rms(x - exact(problem.sde.eps))))
    return rows


def diffusers_rows(problem, x_T, exact, budgets):
    dp = diffusers_peers
    rows = []
    for nfe in budgets:
        for name, (_, _, family) in dp.PEERS.items():
            for spacing in (dp.SPACINGS if family != "edm" else ("karras",)):
                best = None
                for steps in sorted({nfe, nfe // 2, (nfe + 1) // 2, nfe - 1} - {0}, reverse=True):
                    try:
                        sched = dp.make(name, problem.sde, spacing)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            x, used, t_end = dp.run(sched, problem.sde, problem.score, x_T, steps)
                    except Exception:     # a spacing or a step count the scheduler refuses
                        continue
                    if used <= nfe and (best is None or used > best[0]):
                        best = (used, x, t_end)
                    if used == nfe:
                        break
                if best is None or best[2] == 0.0:      # ends at sigma = 0: no flow map to compare with
                    continue
                used, x, t_end = best
                if not bool(torch.isfinite(x).all()):
                    continue
                rows.append(("diffusers", name, spacing, nfe, used, rms(x - exact(t_end))))
    return rows


# -- report -------------------------------------------------------------------------------------
def best(rows, lib, nfe):
    cand = [r for r in rows if r[0] == lib and r[3] == nfe]
    return min(cand, key=lambda r: r[5]) if cand else None


def report(problem, rows, budgets, costs):
    print(f"\n### {problem.name}\n")
    print("| library | method | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
    print("|" + "---|" * (2 + len(budgets)))
    for lib in ("sdekit optimized", "sdekit", "k-diffusion", "diffusers"):
        for name in dict.fromkeys(r[1] for r in rows if r[0] == lib):      # in the order of the rows
            cells = best_cells(rows, lib, name, budgets, lambda top, mine: f"{top[5]:.2e} ({top[2]})")
            print(f"| {lib} | {name} | " + " | ".join(cells) + " |")
    print("\n| NFE | sdekit optimized best | sdekit stock best | best peer | optimized / peer | stock / peer |")
    print("|---|---|---|---|---|---|")
    out = []
    for b in budgets:
        o, s = best(rows, "sdekit optimized", b), best(rows, "sdekit", b)
        peers = [r for r in (best(rows, "k-diffusion", b), best(rows, "diffusers", b)) if r]
        p = min(peers, key=lambda r: r[5]) if peers else None
        if o is None or s is None or p is None:
            continue
        print(f"| {b} | {o[5]:.2e} {o[1]} | {s[5]:.2e} {s[1]} ({s[2]}) | {p[5]:.2e} {p[0]} {p[1]} ({p[2]}) | "
              f"{o[5] / p[5]:.2f} | {s[5] / p[5]:.2f} |")
        out.append((problem.name, b, o[5] / p[5], s[5] / p[5]))
    if costs:
        calls = sum(c[2].score_calls for c in costs)
        secs = sum(c[2].seconds for c in costs)
        print(f"\nOptimization cost: {len(costs)} grids, {calls} score calls and {secs:.0f} s in all "
              f"(median {sorted(c[2].seconds for c in costs)[len(costs) // 2]:.1f} s a grid).")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-D mixtures only, three methods, fewer samples")
    p.add_argument("--methods", default=None, help="the samplers to optimize, separated by ';' (labels of OPTIMIZED "
                                                   "or method names)")
    p.add_argument("--calibration", type=int, default=None,
                   help="calibration states (default 4096 in 2-D, 1024 in 64-D, 128 for the images)")
    p.add_argument("--problems", default=None, help="only the problems whose name contains this text")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
    ks, kd_note = load_k_diffusion()
    methods = tuple(m.strip() for m in args.methods.split(";")) if args.methods else (QUICK if args.quick
                                                                                     else tuple(OPTIMIZED))
    started = time.perf_counter()
    print(f"# Optimized schedules: sdekit {sdekit.__version__}, k-diffusion {kd_note if ks else '(absent)'}, "
          f"diffusers {__import__('diffusers').__version__ if diffusers_peers else '(absent)'}\n")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s); "
          f"command: python {' '.join(sys.argv)}")
    if diffusers_peers is None:
        print(f"\nNote: diffusers peers absent ({DIFFUSERS_ERROR}).")
    summary = []
    if diffusers_peers is not None:
        import diffusers
        diffusers.utils.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)
    for problem in problems(args.quick):
        if args.problems and args.problems not in problem.name:
            continue
        big = problem.dim > 1000
        n_test = 256 if big else (1000 if args.quick else 2000)
        n_cal = args.calibration or (128 if big else (1024 if args.quick or problem.dim > 2 else 4096))
        x_cal, x_T = problem.x_T(n_cal, CAL_SEED), problem.x_T(n_test, TEST_SEED)
        exact = Exact(problem, x_T)
        print(f"\n({problem.name}: {n_cal} calibration states, seed {CAL_SEED}; {n_test} test states, seed "
              f"{TEST_SEED})", file=sys.stderr, flush=True)
        rows, costs = optimized_rows(problem, x_cal, x_T, exact, BUDGETS, methods,
                                     lambda m: print(m, file=sys.stderr, flush=True))
        rows += sdekit_rows(problem, x_T, exact, BUDGETS)
        if ks is not None:
            rows += kd_rows(ks, problem, x_T, exact, BUDGETS)
        if diffusers_peers is not None:
            rows += diffusers_rows(problem, x_T, exact, BUDGETS)
        print(f"\nCalibration: {n_cal} states (seed {CAL_SEED}); test: {n_test} states (seed {TEST_SEED}).")
        summary += report(problem, rows, BUDGETS, costs)
        sys.stdout.flush()
    print("\n## Target: optimized at most half the best peer's error\n")
    print("| problem | NFE | optimized / best peer | stock / best peer | target |")
    print("|---|---|---|---|---|")
    for name, b, ro, rs in summary:
        print(f"| {name} | {b} | {ro:.2f} | {rs:.2f} | {'holds' if ro <= 0.5 else 'missed'} |")
    print(f"\n(total {time.perf_counter() - started:.0f} s wall)")


if __name__ == "__main__":
    main()
