r"""sdekit's diffusion samplers side by side with k-diffusion's (a script, never a test).

Both libraries run in this process on the same exact score, from the same x_T, at the same number of
score evaluations (NFE 5, 10, 20, 50), and are measured against exact answers:

- problems: a sharp 2-D Gaussian mixture (five modes, weights 0.5 to 0.03, standard deviations 0.03 to
  0.1) and a 64-D anisotropic Gaussian (variances 1e-3 to 10 in a random orthonormal basis), each under
  ``VPSDE()`` and ``VESDE(0.01, 50)``, with the exact score of ``sdekit.validation``; float64 throughout;
- ODE samplers: RMS error (over all entries) against the exact probability-flow map from the same x_T to
  ``eps``.  The Gaussian's map is closed-form; the mixture's is torchdiffeq's ``dopri5`` at
  ``rtol = atol = 1e-10``, checked against sdekit's ``dpm_solver_3`` at 1000 steps (the difference is printed);
- stochastic samplers: sliced W2 against an exact sample set at ``eps`` of the same size, with the Monte
  Carlo floor (the same distance between independent exact sets, 5 pairs: mean +- std), and a second
  measure: on the mixture, the mode-mass error (total variation between the masses read through the exact
  component posterior and the weights; its floor likewise), on the Gaussian, the W2 between the fitted
  and the exact Gaussian (its floor likewise);
- speed: the time per step of ``dpmpp_2m`` and ``euler_ancestral`` in sdekit's loop over k-diffusion's,
  same score, same grid, float32, one thread, interleaved repeats (target <= 1.05); and the cost of
  sdekit's keyed noise (one ``KeyedBrownian`` query, and one ``keyed_normal`` draw) over ``torch.randn``.

Grids.  sdekit's samplers end at ``eps``; k-diffusion's are given the same grid as VE-frame noise levels
``sigma(t)/alpha(t)`` at the grid times, from ``T`` down to ``eps`` with no zero appended, and x_T / alpha(T)
as their start (their result is multiplied back by alpha(eps)).  Every method runs on a uniform-in-t, a
log-SNR and a Karras (rho = 7) grid; its own default is marked ``*`` (sdekit: ``sdekit.methods()``;
k-diffusion: Karras, the schedule its examples use; ``dpm_fast`` builds its own log-SNR grid from
``sigma_min``, ``sigma_max`` and the NFE).  A method taking 2 or 3 evaluations a step runs NFE/2 or NFE/3
steps and is skipped at a budget it does not divide (``dpm_solver_fast``'s steps= is its budget).  Three sdekit
rows below the table run with an option: ``dpm_solver_3`` at 3, 9, 18, 48 evaluations (it divides no budget;
never compared), ``dpmpp_2m`` without its lower-order final steps (k-diffusion's ``dpmpp_2m`` has none) and
``ipndm`` of third order (its default is fourth); the last two count only in the targets' "with options" line.
Where both libraries implement the same algorithm (DDIM = Euler in sigma, EDM Heun, LMS, DPM-Solver-2, DPM-Solver-fast,
DPM-Solver++(2S), DPM-Solver++(2M)) their results on the same grid are compared to rounding.
Stochastic samplers run on their default grid, at NFE 5, 10, 20 (``--full``: 50 too): 50 000 samples on
the mixtures, 2 000 on the Gaussians.

k-diffusion is wrapped as its samplers expect, a denoiser in the VE frame:
``D(x~, s) = (x + sigma(t)^2 score(x, t)) / alpha(t)`` with ``t = sde.t_of_log_snr(-log s)`` and
``x = alpha(t) x~``; its NFE are the wrapper's calls.  Its ODE samplers: ``euler``, ``heun``, ``lms``,
``dpm_2``, ``dpmpp_2s_ancestral`` (eta=0), ``dpmpp_2m``, ``dpmpp_3m_sde`` (eta=0), ``dpm_fast``;
stochastic: ``euler_ancestral``, ``dpmpp_2m_sde``, ``dpmpp_sde`` (both with a seeded
``BrownianTreeNoiseSampler``), ``dpm_2_ancestral``, ``heun`` with ``s_churn=40``.

Install k-diffusion for the comparison (only its ``k_diffusion.sampling`` module is used; when the package's
``__init__`` needs heavy dependencies that are absent, the module file is loaded on its own)::

    pip install --no-deps k-diffusion
    pip install tqdm matplotlib        # tqdm: imported by k_diffusion.sampling; matplotlib: --figures only

Without k-diffusion the script prints sdekit's numbers alone, with a note.

    python benchmarks/samplers.py                          # about 5 minutes of one CPU thread
    python benchmarks/samplers.py --quick                  # about a minute: fewer samples, NFE 10 and 20
    python benchmarks/samplers.py --full                   # stochastic samplers at NFE 50 too
    python benchmarks/samplers.py --figures docs/figures   # also the work-precision plots (PNG and SVG)
"""

import argparse
import datetime
import importlib.util
import math
import platform
import statistics
import sys
import time
import types
import warnings

import torch

import sdekit
from sdekit.validation import (GaussianData, GaussianMixture, fitted_gaussian_w2, mode_masses, monte_carlo_floor,
                               sliced_wasserstein)

GRIDS = ("uniform", "logsnr", "karras")
GRID_MARK = {"uniform": "U", "logsnr": "L", "karras": "K", "own": "L"}
SD_ODE = ("ddim", "dpm_solver_2", "dpm_solver_fast", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun", "lms",
          "ipndm", "deis")
# shown below the table, never in a comparison: dpm_solver_3 at the NFE below each budget it does not divide,
# and dpmpp_2m without its lower-order final steps (what k-diffusion's dpmpp_2m does)
SD_EXTRA = {"dpm_solver_3": ("dpm_solver_3", {}),
            "dpmpp_2m, lower_order_final=False": ("dpmpp_2m", {"lower_order_final": False}),
            "ipndm, order=3": ("ipndm", {"order": 3})}
# rows with a documented option: the "with options" line of the targets counts them (dpm_solver_3 never: it
# takes 3 evaluations a step and fits no budget)
SD_OPTIONS = ("dpmpp_2m, lower_order_final=False", "ipndm, order=3")
# the same algorithm in both libraries: on the same grid their results agree to rounding
SAME = (("ddim", "euler"), ("edm_heun", "heun"), ("lms", "lms"), ("dpm_solver_2", "dpm_2"),
        ("dpmpp_2s", "dpmpp_2s_ancestral"), ("dpmpp_2m, lower_order_final=False", "dpmpp_2m"),
        ("dpm_solver_fast", "dpm_fast"))   # dpm_fast on its own log-SNR grid, which it builds in float32
SD_SDE = ("ddim", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "edm_stochastic", "pc")
PER_STEP = {"dpm_solver_2": 2, "dpm_solver_3": 3, "dpmpp_2s": 2, "edm_heun": 2, "dpmpp_sde": 2,
            "edm_stochastic": 2, "pc": 2, "heun": 2, "dpm_2": 2, "dpmpp_2s_ancestral": 2, "dpm_2_ancestral": 2}
KD_ODE = ("euler", "heun", "lms", "dpm_2", "dpmpp_2s_ancestral", "dpmpp_2m", "dpmpp_3m_sde", "dpm_fast")
KD_SDE = ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "dpm_2_ancestral", "heun")
SEED = 0


# -- k-diffusion --------------------------------------------------------------------------------
def load_k_diffusion():
    """``(k_diffusion.sampling, version)``, or ``(None, reason)`` when it is not installed."""
    try:
        from importlib.metadata import version
        kd_version = version("k-diffusion")
    except Exception:
        kd_version = "?"
    try:
        import k_diffusion.sampling as ks
        return ks, kd_version
    except ImportError as e:
        first_error = e
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, f"k-diffusion is not installed ({first_error})"
    # the package's __init__ imports its training code (skimage, wandb, ...): load sampling.py alone
    path = f"{list(spec.submodule_search_locations)[0]}/sampling.py"
    pkg = types.ModuleType("_kdiff")
    pkg.__path__ = []
    utils = types.ModuleType("_kdiff.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules.update({"_kdiff": pkg, "_kdiff.utils": utils})
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        return None, "k_diffusion.sampling needs tqdm: pip install tqdm"
    mspec = importlib.util.spec_from_file_location("_kdiff.sampling", path)
    ks = importlib.util.module_from_spec(mspec)
    sys.modules["_kdiff.sampling"] = ks
    mspec.loader.exec_module(ks)
    return ks, kd_version + " (sampling.py loaded alone)"


class Denoiser:
    r"""The exact score as k-diffusion's VE-frame denoiser :math:`D(\tilde x, \tilde\sigma)`, counting calls."""

    def __init__(self, sde, score):
        self.sde, self.score, self.nfe = sde, score, 0

    def __call__(self, x_ve, s):
        self.nfe += 1
        t = self.sde.t_of_log_snr(-torch.log(s.to(torch.float64)))
        alpha, sigma = self.sde.alpha(t).to(x_ve.dtype)[:, None], self.sde.sigma(t).to(x_ve.dtype)[:, None]
        x = alpha * x_ve
        return (x + sigma * sigma * self.score(x, t.to(x_ve.dtype))) / alpha


def sigma_ve(sde, t):
    return sde.sigma(t) / sde.alpha(t)


def run_kd(ks, name, problem, x_T, grid, nfe, seed=None):
    """A k-diffusion sampler from x_T over ``grid`` (times; None for dpm_fast); ``(x at eps, NFE)``."""
    sde = problem.sde
    model = Denoiser(sde, problem.score)
    T, eps = torch.tensor(sde.T, dtype=torch.float64), torch.tensor(sde.eps, dtype=torch.float64)
    x = x_T / sde.alpha(T).to(x_T.dtype)
    if name == "dpm_fast":
        out = ks.sample_dpm_fast(model, x, float(sigma_ve(sde, eps)), float(sigma_ve(sde, T)), n=nfe, disable=True)
    else:
        sigmas = sigma_ve(sde, grid).to(x_T.dtype)
        kw = {}
        if name in ("dpmpp_2s_ancestral", "dpmpp_3m_sde") and seed is None:
            kw = {"eta": 0.0, "noise_sampler": lambda s, s1: 0.0}   # eta = 0: no noise drawn
        if seed is not None:
            torch.manual_seed(seed)
            if name in ("dpmpp_2m_sde", "dpmpp_sde"):
                kw["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigmas[-1], sigmas[0], seed=seed)
            if name == "heun":
                kw["s_churn"] = 40.0
        out = getattr(ks, f"sample_{name}")(model, x, sigmas, disable=True, **kw)
    return out * sde.alpha(eps).to(x_T.dtype), model.nfe


# -- problems -----------------------------------------------------------------------------------
class Problem:
    """An SDE, exact data and what the benchmark needs of it: score, exact flow map, exact samples at eps."""

    def __init__(self, name, sde, data):
        self.name, self.sde, self.data = name, sde, data
        self.score = data.score
        self.is_mixture = isinstance(data, GaussianMixture)
        self.dim = data.dim

    def x_T(self, n, seed):
        return self.data.sample(n, t=self.sde.T, generator=torch.Generator().manual_seed(seed))

    def exact_samples(self, n, generator):
        return self.data.sample(n, t=self.sde.eps, generator=generator)

    def flow(self, x_T, ref_check):
        """The exact flow map from x_T at T to eps, and a line saying how it was obtained."""
        if not self.is_mixture:
            return self.data.flow_map(x_T, self.sde.T, self.sde.eps), "closed form"
        pf = sdekit.probability_flow(self.sde, self.score)
        ref = pf.solve(x_T, method="dopri5", rtol=1e-10, atol=1e-10)
        note = f"dopri5 rtol=atol=1e-10 ({ref.nfe} NFE)"
        if ref_check:
            other = pf.solve(x_T, method="dpm_solver_3", steps=1000).x
            diff = other - ref.x
            note += (f"; against dpm_solver_3 at 1000 steps: RMS difference {rms(diff):.1e}, "
                     f"max {float(diff.abs().max()):.1e}")
        return ref.x, note


def sharp_mixture(sde):
    def cov(sx, sy, r):
        return [[sx * sx, r * sx * sy], [r * sx * sy, sy * sy]]
    weights = [0.5, 0.25, 0.15, 0.07, 0.03]
    means = [[-2.0, -1.5], [2.0, 2.0], [1.5, -2.5], [-1.5, 2.5], [0.0, 0.0]]
    covs = [cov(0.08, 0.05, 0.5), cov(0.04, 0.1, -0.6), cov(0.05, 0.03, 0.0), cov(0.1, 0.03, 0.8), cov(0.03, 0.03, 0.0)]
    return GaussianMixture(weights, means, covs, sde)


def anisotropic_gaussian(sde, dim=64):
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    variances = torch.logspace(-3, 1, dim, dtype=torch.float64)
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return GaussianData(mean, (q * variances) @ q.T, sde)


def problems():
    out = []
    for sde_name, sde in (("VP", sdekit.VPSDE()), ("VE", sdekit.VESDE(0.01, 50))):
        out.append(Problem(f"mixture 2-D, {sde_name}", sde, sharp_mixture(sde)))
        out.append(Problem(f"Gaussian 64-D, {sde_name}", sde, anisotropic_gaussian(sde)))
    return out


def rms(d):
    return float(d.pow(2).mean().sqrt())


def steps_for(name, nfe):
    per = PER_STEP.get(name, 1)
    return nfe // per if nfe % per == 0 else None


def grid_of(sde, schedule, steps):
    """The times of a ``schedule`` grid of ``steps`` steps from T to eps, as ``solve(schedule=)`` builds it."""
    return sdekit.schedule_grid(sde, schedule, steps, sde.T, sde.eps)


def sd_default(name):
    """The grid an sdekit method builds for ``steps=`` when no schedule is given."""
    return next(m.schedule for m in sdekit.methods(backend="sdekit") if m.name == name)


# -- ODE ----------------------------------------------------------------------------------------
def ode_study(problem, ks, budgets, n, ref_check):
    x_T = problem.x_T(n, SEED)
    exact, note = problem.flow(x_T, ref_check)
    pf = sdekit.probability_flow(problem.sde, problem.score)
    rows = []      # (lib, method, grid, budget, nfe, rms)
    outputs = {}   # (lib, method, grid, budget) -> x, for the cross-check of identical algorithms
    for nfe in budgets:
        for label in SD_ODE + tuple(SD_EXTRA):
            name, options = SD_EXTRA.get(label, (label, {}))
            steps = nfe // 3 if label == "dpm_solver_3" else steps_for(name, nfe)
            if not steps:
                continue
            for grid in GRIDS:
                sol = pf.solve(x_T, method=name, steps=steps, schedule=grid, options=options)
                rows.append(("sdekit", label, grid, nfe, int(sol.nfe), rms(sol.x - exact)))
                outputs["sdekit", label, grid, nfe] = sol.x
        if ks is None:
            continue
        for name in KD_ODE:
            if name == "dpm_fast":
                x, used = run_kd(ks, name, problem, x_T, None, nfe)
                rows.append(("k-diffusion", name, "own", nfe, used, rms(x - exact)))
                outputs["k-diffusion", name, "logsnr", nfe] = x
                continue
            steps = steps_for(name, nfe)
            if not steps:
                continue
            for grid in GRIDS:
                x, used = run_kd(ks, name, problem, x_T, grid_of(problem.sde, grid, steps), nfe)
                rows.append(("k-diffusion", name, grid, nfe, used, rms(x - exact)))
                outputs["k-diffusion", name, grid, nfe] = x
    scale = rms(exact)
    same = {}
    for mine, theirs in SAME:
        diffs = [rms(outputs["sdekit", mine, g, b] - outputs["k-diffusion", theirs, g, b]) / scale
                 for g in GRIDS for b in budgets if ("sdekit", mine, g, b) in outputs
                 and ("k-diffusion", theirs, g, b) in outputs]
        if diffs:
            same[mine, theirs] = max(diffs)
    note = (note, same)
    return rows, note


def is_default(lib, name, grid):
    if lib == "k-diffusion":
        return grid in ("karras", "own")
    return grid == sd_default(SD_EXTRA.get(name, (name,))[0])


def best_cells(rows, lib, name, budgets, describe):
    """A table row's cells, one per budget: ``describe(top, mine)`` of ``lib``'s ``name`` at that budget, ``top`` its
    lowest-error row over grids and ``mine`` all its rows there, then ``@n`` where ``top`` took n evaluations
    instead; ``-`` where it has none.  Rows are ``(lib, method, grid, budget, nfe, error, ...)``."""
    cells = []
    for b in budgets:
        mine = [r for r in rows if r[0] == lib and r[1] == name and r[3] == b]
        if not mine:
            cells.append("-")
            continue
        top = min(mine, key=lambda r: r[5])
        cells.append(describe(top, mine) + (f" @{top[4]}" if top[4] != b else ""))
    return cells


def ode_cell(top, mine):
    """An ODE table's cell: the best error, its grid (``*`` the method's default) and, in brackets, the error on
    the default grid where another one won."""
    lib, name = top[0], top[1]
    dflt = [r for r in mine if is_default(lib, name, r[2])]
    cell = f"{top[5]:.2e} {GRID_MARK[top[2]]}" + ("*" if is_default(lib, name, top[2]) else "")
    if dflt and dflt[0] is not top:
        cell += f" ({dflt[0][5]:.2e})"
    return cell


def best(rows, lib, nfe, grid=None, options=False):
    """The lowest error of ``lib`` at exactly ``nfe`` evaluations (over methods and grids, or on one grid);
    ``options``: sdekit's rows with a documented option (:data:`SD_OPTIONS`) count too."""
    cand = [r for r in rows if r[0] == lib and r[4] == nfe and r[3] == nfe and (grid is None or r[2] == grid)
            and (r[1] not in SD_EXTRA or options and r[1] in SD_OPTIONS)]
    return min(cand, key=lambda r: r[5]) if cand else None


def print_ode(problem, rows, note, budgets, have_kd):
    note, same = note
    print(f"\n### {problem.name}: probability-flow ODE, RMS error against the exact flow map\n")
    print(f"Exact map: {note}.  Each cell: the method's best grid (U uniform, L log-SNR, K Karras; `*` its own "
          "default) and, in brackets, its error on its default grid; `@n`: it took n evaluations.  The last three "
          "sdekit rows run with an option: dpm_solver_3 is never compared, the other two only in the targets' "
          "`with options` line.\n")
    head = "| library | method | " + " | ".join(f"NFE {b}" for b in budgets) + " |"
    print(head)
    print("|" + "---|" * (2 + len(budgets)))
    libs = ("sdekit", "k-diffusion") if have_kd else ("sdekit",)
    for lib in libs:
        names = (SD_ODE + tuple(SD_EXTRA)) if lib == "sdekit" else KD_ODE
        for name in names:
            print(f"| {lib} | {name} | " + " | ".join(best_cells(rows, lib, name, budgets, ode_cell)) + " |")
    if not have_kd:
        return
    print("\nSame algorithm in both libraries, same grid (every grid and budget): largest RMS difference of the "
          "results relative to the RMS of the exact result: " + "; ".join(
              f"{a} / {b} {d:.0e}" for (a, b), d in same.items()) + ".")
    print("\nBest of each library per budget (over methods and grids; then on the same grid):\n")
    print("| NFE | sdekit best | k-diffusion best | ratio | same Karras grid: sdekit / k-diff | "
          "same log-SNR grid: sdekit / k-diff |")
    print("|---|---|---|---|---|---|")
    for b in budgets:
        s, k = best(rows, "sdekit", b), best(rows, "k-diffusion", b)
        same = []
        for g in ("karras", "logsnr"):
            sg, kg = best(rows, "sdekit", b, g), best(rows, "k-diffusion", b, g)
            same.append(f"{sg[5]:.2e} ({sg[1]}) / {kg[5]:.2e} ({kg[1]}) = {sg[5] / kg[5]:.2f}" if sg and kg else "-")
        print(f"| {b} | {s[5]:.2e} {s[1]} {GRID_MARK[s[2]]} | {k[5]:.2e} {k[1]} {GRID_MARK[k[2]]} | "
              f"{s[5] / k[5]:.2f} | {same[0]} | {same[1]} |")


# -- stochastic ---------------------------------------------------------------------------------
class Measures:
    """The two distribution measures of a problem, each with its Monte Carlo floor at sample size n."""

    def __init__(self, problem, n):
        self.problem, self.n = problem, n
        self.projections = 64 if problem.dim <= 2 else 256
        self.reference = problem.exact_samples(n, torch.Generator().manual_seed(10_000))
        sampler = problem.exact_samples
        self.sw_floor = monte_carlo_floor(self.sliced, sampler, n, repeats=5, seed=20_000)
        if problem.is_mixture:
            self.second_name = "mode-mass TV"
            self.second_floor = monte_carlo_floor(lambda x: mode_masses(x, problem.data).total_variation,
                                                  sampler, n, repeats=5, seed=30_000, two_sample=False)
        else:
            self.second_name = "fitted-Gaussian W2"
            self.mean, self.cov = problem.data.marginal(problem.sde.eps)
            self.second_floor = monte_carlo_floor(self.fitted, sampler, n, repeats=5, seed=30_000, two_sample=False)

    def sliced(self, x, y):
        return sliced_wasserstein(x, y, n_projections=self.projections).value

    def fitted(self, x):
        return fitted_gaussian_w2(x, self.mean, self.cov, repeats=0).value

    def __call__(self, x):
        second = mode_masses(x, self.problem.data).total_variation if self.problem.is_mixture else self.fitted(x)
        return self.sliced(x, self.reference), second


def sde_study(problem, ks, budgets, n):
    x_T = problem.x_T(n, SEED + 1)
    measure = Measures(problem, n)
    rev = sdekit.reverse(problem.sde, problem.score)
    rows = []      # (lib, method, grid, budget, nfe, sw2, second)
    for nfe in budgets:
        for name in SD_SDE:
            steps = steps_for(name, nfe)
            if steps:
                sol = rev.solve(x_T, method=name, steps=steps, seed=SEED + 2)
                rows.append(("sdekit", name, sd_default(name), nfe, int(sol.nfe)) + measure(sol.x))
        if ks is None:
            continue
        for name in KD_SDE:
            steps = steps_for(name, nfe)
            if steps:
                x, used = run_kd(ks, name, problem, x_T, grid_of(problem.sde, "karras", steps), nfe, seed=SEED + 2)
                rows.append(("k-diffusion", name, "karras", nfe, used) + measure(x))
    return rows, measure


def print_sde(problem, rows, measure, budgets, have_kd):
    f1, f2 = measure.sw_floor, measure.second_floor
    print(f"\n### {problem.name}: stochastic samplers, {measure.n} samples\n")
    print(f"Sliced W2 ({measure.projections} directions) against an exact set; floor {f1.mean:.2e} +- {f1.std:.1e}.  "
          f"{measure.second_name}: floor {f2.mean:.2e} +- {f2.std:.1e} (5 exact sets each).  "
          "Each cell: sliced W2 / second measure, on the method's default grid.\n")
    print("| library | method | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
    print("|" + "---|" * (3 + len(budgets)))
    libs = ("sdekit", "k-diffusion") if have_kd else ("sdekit",)
    for lib in libs:
        for name in (SD_SDE if lib == "sdekit" else KD_SDE):
            mine = {r[3]: r for r in rows if r[0] == lib and r[1] == name}
            if not mine:
                continue
            grid = next(iter(mine.values()))[2]
            cells = [f"{mine[b][5]:.2e} / {mine[b][6]:.2e}" + (f" @{mine[b][4]}" if mine[b][4] != b else "")
                     if b in mine else "-" for b in budgets]
            label = name + (" (s_churn=40)" if lib == "k-diffusion" and name == "heun" else "")
            print(f"| {lib} | {label} | {GRID_MARK[grid]} | " + " | ".join(cells) + " |")
    if not have_kd:
        return
    print("\nBest of each library per budget (sdekit / k-diffusion; ratio):\n")
    print(f"| NFE | sliced W2 | ratio | {measure.second_name} | ratio |")
    print("|---|---|---|---|---|")
    for b in budgets:
        cells = []
        for k in (5, 6):
            s, kd = sde_best(rows, "sdekit", b, k), sde_best(rows, "k-diffusion", b, k)
            cells += [f"{s[k]:.2e} ({s[1]}) / {kd[k]:.2e} ({kd[1]})", f"{s[k] / kd[k]:.2f}"]
        print(f"| {b} | " + " | ".join(cells) + " |")


def judge(mine, theirs, floor=None):
    """``holds`` when sdekit's value is not above k-diffusion's (ODE: equal to 1e-6 counts), else
    ``within noise`` (stochastic: the gap below 3 sqrt(2) floor std) or ``MISSED``."""
    if mine <= theirs * (1 + 1e-6):
        return "holds"
    if floor is not None and mine - theirs <= 3 * math.sqrt(2) * floor.std:
        return "within noise"
    return "MISSED"


def sde_best(rows, lib, nfe, k):
    cand = [r for r in rows if r[0] == lib and r[3] == nfe and r[4] == nfe]
    return min(cand, key=lambda r: r[k]) if cand else None


# -- targets ------------------------------------------------------------------------------------
def targets(results, budgets):
    print("\n## Targets: at NFE 5, 10, 20 sdekit's best at least as good as k-diffusion's best\n")
    print("Ratio = sdekit best / k-diffusion best (<= 1 holds; <= 0.5 is the moonshot).  `ODE RMS` compares "
          "sdekit's methods with their default options; `ODE RMS, with options` also counts sdekit's documented "
          f"option rows ({', '.join(SD_OPTIONS)}).  A stochastic measure "
          "above 1 is `within noise` when the difference is below 3 sqrt(2) times the floor's std (two values "
          "that each vary about that much from seed to seed), else `MISSED`.\n")
    print("| problem | measure | " + " | ".join(f"NFE {b}" for b in budgets if b <= 20) + " |")
    print("|---|---|" + "---|" * len([b for b in budgets if b <= 20]))
    missed = []
    for problem, ode_rows, sde_rows, measure in results:
        lines = [("ODE RMS", lambda b: (best(ode_rows, "sdekit", b), best(ode_rows, "k-diffusion", b), 5, None)),
                 ("ODE RMS, with options", lambda b: (best(ode_rows, "sdekit", b, options=True),
                                                      best(ode_rows, "k-diffusion", b), 5, None))]
        for k, name, floor in ((5, "sliced W2", measure.sw_floor), (6, measure.second_name, measure.second_floor)):
            lines.append((name, lambda b, k=k, floor=floor: (sde_best(sde_rows, "sdekit", b, k),
                                                             sde_best(sde_rows, "k-diffusion", b, k), k, floor)))
        for label, get in lines:
            cells = []
            for b in budgets:
                if b > 20:
                    continue
                s, kd, k, floor = get(b)
                if s is None or kd is None:
                    cells.append("-")
                    continue
                ratio = s[k] / kd[k]
                verdict = judge(s[k], kd[k], floor)
                if verdict != "holds":
                    missed.append(f"{problem.name}, {label}, NFE {b}: sdekit {s[1]} {s[k]:.3g} against "
                                  f"k-diffusion {kd[1]} {kd[k]:.3g} ({ratio:.2f}x; {verdict})")
                verdict += " (moonshot)" if ratio <= 0.5 else ""
                cells.append(f"{ratio:.2f} {verdict}")
            print(f"| {problem.name} | {label} | " + " | ".join(cells) + " |")
    print("\nNot held: " + ("none" if not missed else ""))
    for m in missed:
        print(f"- {m}")


# -- speed --------------------------------------------------------------------------------------
def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class NetworkCost:
    r"""The exact score plus a small fixed MLP term, :math:`s(x, t) + 10^{-3}\tanh(\mathrm{MLP}(x, t))` (two hidden
    layers of ``width``): a score that costs what a small network's evaluation does, for the speed table."""

    def __init__(self, score, dim, width=256):
        g = torch.Generator().manual_seed(5)
        self.score = score
        self.layers = [(torch.randn(dim + 1, width, generator=g) / math.sqrt(dim + 1), torch.zeros(width)),
                       (torch.randn(width, width, generator=g) / math.sqrt(width), torch.zeros(width)),
                       (torch.randn(width, dim, generator=g) / math.sqrt(width), torch.zeros(dim))]

    def __call__(self, x, t):
        h = torch.cat((x, t.to(x.dtype)[:, None]), 1)
        for k, (w, b) in enumerate(self.layers):
            h = torch.addmm(b.to(x.dtype), h, w.to(x.dtype))
            h = torch.nn.functional.silu(h) if k < len(self.layers) - 1 else torch.tanh(h)
        return self.score(x, t) + 1e-3 * h


class NearFree:
    r"""The exact score of data :math:`N(0, I)`, :math:`-x/(\alpha^2 + \sigma^2)`: a score that costs almost nothing, so
    that the time per step is the loop's own (its coefficients, its checks, the update's passes over the state)."""

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, x, t):
        log_alpha, sigma = self.sde.log_alpha_sigma(t.to(torch.float64))
        return -x / (torch.exp(2 * log_alpha) + sigma * sigma).to(x.dtype)[:, None]


def speed(ks, problems_, repeats, steps=20, loop_batch=65536):
    print(f"\n## Speed: time per step, sdekit's loop / k-diffusion's, same score and grid "
          f"({steps} Karras steps, float32, one thread, median of {repeats} interleaved repeats)\n")
    print("Score `exact`: the analytic score alone (a fraction of a millisecond: the loops' own costs dominate); "
          "`+ MLP 256`: the exact score plus a small fixed MLP term (two hidden layers of 256), which costs what a "
          "small network's evaluation does; `near-free`: the score of N(0, I) data, so that the time is the loop's "
          "own, at a large batch.\n")
    print("| problem | batch | score | method | sdekit ms/step | k-diffusion ms/step | ratio (median) | "
          "ratio (fastest) |")
    print("|---|---|---|---|---|---|---|---|")
    cases = ([(p, b, "exact") for p, b in problems_] + [(p, b, "+ MLP 256") for p, b in problems_]
             + [(problems_[0][0], loop_batch, "near-free")])
    for problem, batch, score_name in cases:
        sde = problem.sde
        x_T = problem.x_T(batch, 7).float()
        grid = grid_of(sde, "karras", steps)
        if score_name != "exact":
            problem = Problem(problem.name, sde, problem.data)
            problem.score = NetworkCost(problem.data.score, problem.dim) if score_name == "+ MLP 256" else NearFree(sde)
        for name, kind in (("dpmpp_2m", "ode"), ("euler_ancestral", "sde")):
            proc = (sdekit.probability_flow if kind == "ode" else sdekit.reverse)(sde, problem.score)
            opts = {} if kind == "ode" else {"seed": 3}

            def run_sd():
                proc.solve(x_T, method=name, grid=grid, **opts)

            def run_k():
                run_kd(ks, name, problem, x_T, grid, steps, seed=None if kind == "ode" else 3)

            run_sd(), run_k()
            ts, tk = [], []
            for _ in range(repeats):
                ts.append(timed(run_sd))
                tk.append(timed(run_k))
            ms, mk = statistics.median(ts) / steps * 1e3, statistics.median(tk) / steps * 1e3
            print(f"| {problem.name} | {batch} | {score_name} | {name} | {ms:.3f} | {mk:.3f} | {ms / mk:.2f} | "
                  f"{min(ts) / min(tk):.2f} |")


def keyed_cost(shapes, repeats=3):
    from sdekit import KeyedBrownian, keyed_normal
    print("\n## Keyed noise: cost over torch.randn (float32, one thread, fastest of "
          f"{repeats})\n")
    print("| shape | torch.randn ms | keyed_normal ms (one draw) | ratio | KeyedBrownian query ms "
          "(depth 24) | ratio |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        path = KeyedBrownian(0.0, 1.0, shape, seed=0, dtype=torch.float32)
        t = torch.full((shape[0],), 0.37, dtype=torch.float64)
        index = torch.arange(shape[0])
        size = math.prod(shape[1:])
        fns = (lambda: torch.randn(shape),
               lambda: keyed_normal(0, index, torch.full_like(index, 5), size),
               lambda: path.value(t))
        best_t = []
        for fn in fns:
            fn()
            best_t.append(min(timed(fn) for _ in range(repeats)))
        r, k, q = (v * 1e3 for v in best_t)
        print(f"| {shape} | {r:.2f} | {k:.1f} | {k / r:.0f} | {q:.0f} | {q / r:.0f} |")


# -- figures ------------------------------------------------------------------------------------
def figures(results, budgets, directory, have_kd):
    """Work-precision plots: ``samplers_ode`` (RMS error) and ``samplers_sde`` (both measures), PNG and SVG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        print("\n(figures skipped: pip install matplotlib)")
        return
    import os
    os.makedirs(directory, exist_ok=True)
    libs = ("sdekit", "k-diffusion") if have_kd else ("sdekit",)
    colours = {"sdekit": "tab:blue", "k-diffusion": "tab:orange"}

    def panel(ax, lines, envelope, title, ylabel, floor=None):
        for lib, pts in lines:
            ax.plot(*zip(*pts), color=colours[lib], alpha=0.35, lw=0.8, ls="-" if lib == "sdekit" else "--")
        for lib, env in envelope:
            if env:
                ax.plot([e[0] for e in env], [e[1] for e in env], color=colours[lib], lw=2.5, marker="o",
                        label=f"{lib} best")
                for x, y, name in env:
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4 if lib == "sdekit" else -10),
                                fontsize=6.5, color=colours[lib])
        if floor is not None:
            ax.axhspan(max(floor.mean - floor.std, 1e-12), floor.mean + floor.std, color="0.85",
                       label="Monte Carlo floor (mean +- std)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        values = [y for _, pts in lines for _, y in pts] + [e[1] for _, env in envelope for e in env]
        tops = [e[1] for _, env in envelope for e in env]
        if tops:   # a 1-step sampler can be off by 100: keep the best curves readable
            ax.set_ylim(0.5 * min(values), min(30 * max(tops), 1.5 * max(values)))
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (score evaluations per sample)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)

    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    for ax, (problem, ode_rows, _, _) in zip(axes.flat, results):
        lines = []
        for lib in libs:
            for name in (SD_ODE + ("dpm_solver_3",) if lib == "sdekit" else KD_ODE):
                pts = sorted({r[4]: r[5] for r in ode_rows if r[0] == lib and r[1] == name
                              and is_default(lib, name, r[2]) and r[4] >= min(budgets)}.items())
                if pts:
                    lines.append((lib, pts))
        envelope = [(lib, [(b, r[5], r[1]) for b in budgets for r in [best(ode_rows, lib, b)] if r]) for lib in libs]
        panel(ax, lines, envelope, problem.name, "RMS error against the exact flow map")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Probability-flow ODE samplers: thin lines each method on its default grid; thick the best over "
                 "methods and grids at each NFE", fontsize=10)
    save(fig, directory, "samplers_ode")

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 8), squeeze=False)
    for col, (problem, _, sde_rows, measure) in enumerate(results):
        for row, (k, ylabel, floor) in enumerate(((5, "sliced W2 against exact samples", measure.sw_floor),
                                                  (6, measure.second_name, measure.second_floor))):
            lines = [(lib, sorted((r[4], r[k]) for r in sde_rows if r[0] == lib and r[1] == name))
                     for lib in libs for name in (SD_SDE if lib == "sdekit" else KD_SDE)]
            envelope = [(lib, [(b, r[k], r[1]) for b in budgets for r in [sde_best(sde_rows, lib, b, k)] if r])
                        for lib in libs]
            panel(axes[row][col], [line for line in lines if line[1]], envelope, problem.name, ylabel, floor)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Stochastic samplers on their default grids ({results[0][3].n} samples for the mixtures, "
                 f"{results[1][3].n} for the Gaussians): thin lines each method; thick the best at each NFE",
                 fontsize=10)
    save(fig, directory, "samplers_sde")


def save(fig, directory, stem):
    import os
    import matplotlib.pyplot as plt
    fig.tight_layout()
    for ext in ("png", "svg"):
        path = os.path.join(directory, f"{stem}.{ext}")
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and budgets: about a minute")
    p.add_argument("--full", action="store_true", help="stochastic samplers at NFE 50 too (about 10 minutes more)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--figures", default=None, help="directory for the work-precision plots (PNG and SVG)")
    p.add_argument("--speed", action="store_true", help="only the speed table (the loops' time per step)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # k-diffusion's Brownian tree asks torchsde for sigma_max + 4e-14 (float rounding): harmless, said each step
    warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
    ks, kd_note = load_k_diffusion()
    budgets = (10, 20) if args.quick else (5, 10, 20, 50)
    sde_budgets = budgets if args.quick or args.full else (5, 10, 20)
    n_ode = {True: 1000, False: 400} if args.quick else {True: 2000, False: 1000}
    n_sde = {True: 5000, False: 500} if args.quick else {True: 50_000, False: 2000}
    started, cpu_started = time.perf_counter(), time.process_time()
    print(f"# sdekit {sdekit.__version__} against k-diffusion {kd_note if ks else '(absent)'}\n")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s); "
          f"command: python {' '.join(sys.argv)}")
    if ks is None:
        print(f"\nNote: {kd_note}.  `pip install --no-deps k-diffusion tqdm` for the comparison; "
              "sdekit's numbers alone follow.")
    if args.speed:
        probs = {p.name: p for p in problems()}
        speed(ks, [(probs["mixture 2-D, VE"], 4096), (probs["Gaussian 64-D, VP"], 1024)], repeats=11)
        return
    results = []
    for problem in problems():
        ode_rows, note = ode_study(problem, ks, budgets, n_ode[problem.is_mixture], ref_check=not args.quick)
        print_ode(problem, ode_rows, note, budgets, ks is not None)
        sde_rows, measure = sde_study(problem, ks, sde_budgets, n_sde[problem.is_mixture])
        print_sde(problem, sde_rows, measure, sde_budgets, ks is not None)
        results.append((problem, ode_rows, sde_rows, measure))
        sys.stdout.flush()
    if ks is not None:
        targets(results, budgets)
        probs = {p.name: p for p, *_ in results}
        speed(ks, [(probs["mixture 2-D, VE"], 4096), (probs["Gaussian 64-D, VP"], 1024)],
              repeats=3 if args.quick else 11)
    keyed_cost([(64, 3072), (10 ** 5, 2)] if args.quick else [(64, 3072), (10 ** 6, 2)], repeats=2 if args.quick else 3)
    if args.figures:
        figures(results, budgets, args.figures, ks is not None)
    print(f"\n(total {time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU)")


if __name__ == "__main__":
    main()
