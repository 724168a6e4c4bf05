"""sdekit's overhead against hand-written torchsde / torchdiffeq calls (a script, never a test).

For each case the same score function (a Gaussian's exact score, or a small MLP) is integrated
with the same method, steps and tolerances three ways, timed in the same run:

- ``raw``:  what a user would write by hand: a torchsde module whose ``f``/``g`` compute
  ``-(f - g^2 score)(T - s)`` and ``g(T - s)`` directly, passed to ``torchsde.sdeint`` with a
  ``BrownianInterval`` built over the whole interval; or a plain function ``f - 1/2 g^2 score``
  passed to ``torchdiffeq.odeint``;
- ``proc``: the same backend call with sdekit's process object in place of the hand-written one;
- ``solve``: ``sdekit.reverse(...).solve(...)`` / ``sdekit.probability_flow(...).solve(...)``.

It checks that the three give the same NFE (``torchsde.sdeint`` makes one extra drift call to
check shapes before it starts, so its NFE is one more than sdekit's, which drives torchsde's
stepper itself) and the same samples (``allclose``), then prints the median wall time of several
interleaved repeats after a warm-up and the ratios ``solve / raw`` and ``solve / proc`` of the
medians; ``min s/r`` is ``solve / raw`` of the fastest repeats and ``us/eval`` sdekit's extra time
per score evaluation from them, ``(solve - raw) / nfe`` (both steadier on a busy machine).
Everything runs under ``torch.no_grad()`` in float32.

    python benchmarks/overhead.py                 # cuda if available, else cpu
    python benchmarks/overhead.py --device cpu --quick
    python benchmarks/overhead.py --device cpu --threads 1     # steadier on a shared CPU
"""

import argparse
import math
import platform
import statistics
import time

import torch
import torchdiffeq
import torchsde

import sdekit

T, BETA0, BETA1 = 1.0, 0.1, 20.0
EPS = 1e-3
SEED = 0


# -- score functions --------------------------------------------------------------------------
def vp_log_alpha(t):
    return -0.25 * t ** 2 * (BETA1 - BETA0) - 0.5 * t * BETA0


class GaussianScore:
    """Exact score of data N(mu, diag(std^2)) under the VP SDE: -(x - a mu) / (a^2 std^2 + 1 - a^2)."""

    def __init__(self, dim, device, dtype):
        g = torch.Generator().manual_seed(1)
        self.mu = torch.randn(dim, generator=g).to(device, dtype)
        self.var = (0.5 + torch.rand(dim, generator=g)).pow(2).to(device, dtype)

    def __call__(self, x, t):
        a = torch.exp(vp_log_alpha(t))[:, None]
        return -(x - a * self.mu) / (a * a * self.var + (1 - a * a))


class MLPScore(torch.nn.Module):
    """A small untrained network ``(x, t) -> score``: time enters as an extra input feature."""

    def __init__(self, dim, hidden):
        super().__init__()
        layers, width = [], dim + 1
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.SiLU()]
            width = h
        layers.append(torch.nn.Linear(width, dim))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


class Counted:
    """The score function with a call counter; every side of a comparison calls the same object."""

    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, x, t):
        self.n += 1
        return self.fn(x, t)


# -- hand-written baselines -------------------------------------------------------------------
class RawReverseSDE(torch.nn.Module):
    """The reverse VP SDE for torchsde as a user writes it: clock s = T - t, flattened state."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, score):
        super().__init__()
        self.score = score

    def f(self, s, y):
        t = T - s
        beta = BETA0 + t * (BETA1 - BETA0)
        score = self.score(y, t.to(y.dtype).expand(y.shape[0]))
        return 0.5 * beta * y + beta * score            # -(f - g^2 score), f = -beta x / 2, g^2 = beta

    def g(self, s, y):
        t = T - s
        return torch.sqrt(BETA0 + t * (BETA1 - BETA0)).to(y.dtype).expand_as(y)


def raw_pf_ode(score):
    """The probability-flow ODE for torchdiffeq as a user writes it: f - g^2 score / 2."""
    def pf(t, x):
        beta = BETA0 + t * (BETA1 - BETA0)
        return -0.5 * beta * (x + score(x, t.expand(x.shape[0])))
    return pf


# -- timing -----------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter


def timed(fn, device):
    sync(device)
    start = CLOCK()
    out = fn()
    sync(device)
    return CLOCK() - start, out


def compare(name, shape, score_name, score, variants, device, repeats, check_nfe):
    """Run each variant once (warm-up, NFE and output check), then ``repeats`` interleaved timings."""
    counted = Counted(score)
    outs, nfes = {}, {}
    for key, fn in variants.items():
        counted.n = 0
        _, (x, reported) = timed(lambda: fn(counted), device)
        outs[key], nfes[key] = x, counted.n
        if reported is not None and reported != counted.n:
            raise AssertionError(f"{name}: sdekit reports nfe={reported} but the score was called {counted.n} times")
    check_nfe(nfes)
    ref = outs["raw"]
    scale = ref.abs().max().item()
    diffs = {k: (v - ref).abs().max().item() for k, v in outs.items() if k != "raw"}
    for k, v in outs.items():
        if not torch.allclose(v, ref, rtol=1e-3, atol=1e-4 * max(1.0, scale)):
            raise AssertionError(f"{name} {shape}: {k} differs from raw by {diffs[k]:.3g} (max |x| {scale:.3g})")
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            counted.n = 0
            times[key].append(timed(lambda: fn(counted), device)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return dict(case=name, shape=f"{shape[0]} x {shape[1]}", score=score_name, nfe=nfes, time=med, best=best,
                diff=max(diffs.values()))


class TableNoise:
    """A noise source with torchsde's interface that hands out precomputed N(0, 1) draws in order.

    ``bm(ta, tb)`` returns ``sqrt(tb - ta) * z[k]`` for the k-th query: the same increments at the
    same cost on both sides, whatever the query times (Euler queries once a step).
    """

    levy_area_approximation = "none"

    def __init__(self, z):
        self.z, self.k = z, 0
        self.shape, self.dtype, self.device = tuple(z.shape[1:]), z.dtype, z.device

    def __call__(self, ta, tb, return_U=False, return_A=False):
        self.k += 1
        return self.z[self.k - 1] * math.sqrt(float(tb) - float(ta))


def sde_euler_case(x, steps, seed, table=False):
    """Reverse SDE, torchsde Euler–Maruyama, ``steps`` equal steps from T to eps.

    The Brownian motion is built as sdekit builds it: ``BrownianInterval`` over ``[0, T - eps]`` with
    entropy ``seed`` and the step as its ``dt`` hint.  torchsde steps by accumulating ``t += dt``; sdekit
    steps its float64 grid ``T - linspace(T, eps, steps + 1)``.  The two sets of times differ by ulps,
    which matters twice: for some step counts the sum lands a few ulps short of the end and sdeint takes
    one more, tiny step (200 and 1000 steps: 201 and 1001 steps, one more score call), and for others a
    time falls on the other side of one of BrownianInterval's split points, which then draws another
    (equally valid) path (100, 300, 400, 500 steps).  At 50, 150 and 250 steps neither happens, so both
    sides take the same steps on the same path; the NFE and ``allclose`` checks catch it if a change
    breaks that.  With ``table=True`` both sides get a :class:`TableNoise` instead (``solve`` through
    ``noise=``): the Brownian motion's own cost (most of a step at 64 x 3072) leaves the comparison.
    """
    span = T - EPS
    ts = torch.tensor([0.0, span], dtype=torch.float64, device=x.device)
    dt = span / steps
    y0 = x.reshape(x.shape[0], -1)
    sde = sdekit.VPSDE(BETA0, BETA1, T=T, eps=EPS)
    if table:
        z = torch.randn((steps,) + tuple(y0.shape), generator=torch.Generator().manual_seed(seed)).to(y0)

    def bm():
        if table:
            return TableNoise(z)
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=y0.shape, dtype=y0.dtype, device=y0.device,
                                         entropy=seed, levy_area_approximation="none", dt=span / steps)

    def raw(score):
        return torchsde.sdeint(RawReverseSDE(score), y0, ts, bm=bm(), method="euler", dt=dt)[-1], None

    def proc(score):
        rsde = sdekit.reverse(sde, score, event_shape=x.shape[1:])
        return torchsde.sdeint(rsde, y0, ts, bm=bm(), method="euler", dt=dt)[-1], None

    def solve(score):
        noise = dict(noise=bm()) if table else dict(seed=seed)
        sol = sdekit.reverse(sde, score).solve(x, method="euler", steps=steps, **noise)
        return sol.x.reshape(y0.shape), sol.nfe

    def check(nfe):  # sdeint evaluates the drift once more, to check its shape, before the first step
        if not (nfe["raw"] == nfe["proc"] == nfe["solve"] + 1 == steps + 1):
            raise AssertionError(f"unexpected NFE {nfe} for {steps} Euler steps")

    return dict(raw=raw, proc=proc, solve=solve), check


def ode_case(x, method, steps=None, tol=None):
    """Probability-flow ODE with torchdiffeq: fixed ``steps`` or adaptive with rtol = atol = ``tol``."""
    t = torch.tensor([T, EPS], dtype=torch.float64, device=x.device)
    sde = sdekit.VPSDE(BETA0, BETA1, T=T, eps=EPS)
    if steps is not None:
        options, kwargs, solve_kw = dict(step_size=(T - EPS) / steps), {}, dict(steps=steps)
    else:
        # sdekit stops adaptive steps exactly at t_end (step_t); the baseline is given the same option so
        # that both take the same steps (without it torchdiffeq steps past eps and interpolates back).
        options, kwargs, solve_kw = dict(step_t=t[-1:]), dict(rtol=tol, atol=tol), dict(rtol=tol, atol=tol)

    def raw(score):
        return torchdiffeq.odeint(raw_pf_ode(score), x, t, method=method, options=options, **kwargs)[-1], None

    def proc(score):
        pf = sdekit.probability_flow(sde, score)
        return torchdiffeq.odeint(pf, x, t, method=method, options=options, **kwargs)[-1], None

    def solve(score):
        sol = sdekit.probability_flow(sde, score).solve(x, method=method, **solve_kw)
        return sol.x, sol.nfe

    def check(nfe):
        if len(set(nfe.values())) != 1:
            raise AssertionError(f"NFE differ: {nfe}")
        if steps is not None and nfe["raw"] != 4 * steps:
            raise AssertionError(f"rk4 with {steps} steps should take {4 * steps} evaluations, got {nfe}")

    return dict(raw=raw, proc=proc, solve=solve), check


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 gives stable timings on a shared machine")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"],
                        help="wall time (default) or this process's CPU time (steadier on a busy CPU; not for cuda)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    device = torch.device(args.device)
    if args.clock == "process" and device.type == "cuda":
        parser.error("--clock process measures CPU time; use wall time on cuda")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    sde_steps, rk4_steps, tol = (50, 10, 1e-3) if args.quick else (150, 25, 1e-5)
    dtype = torch.float32

    shapes = [(4096, 2, (256, 256)), (64, 3072, (512,))]
    print(f"sdekit {sdekit.__version__}, torch {torch.__version__}, torchsde {torchsde.__version__}, "
          f"torchdiffeq {getattr(torchdiffeq, '__version__', '?')}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
          + f"; {dtype}; {args.clock} time, median of {repeats} after a warm-up")
    rows = []
    with torch.no_grad():
        for batch, dim, hidden in shapes:
            torch.manual_seed(SEED)
            x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(SEED), dtype=dtype).to(device)
            mlp = MLPScore(dim, hidden).to(device, dtype).eval()
            scores = [("gaussian", GaussianScore(dim, device, dtype)), (f"mlp{list(hidden)}", mlp)]
            for score_name, score in scores:
                cases = [
                    (f"reverse SDE  torchsde euler {sde_steps} steps", sde_euler_case(x, sde_steps, SEED)),
                    ("  same, precomputed noise (TableNoise)", sde_euler_case(x, sde_steps, SEED, table=True)),
                    (f"PF ODE  torchdiffeq rk4 {rk4_steps} steps", ode_case(x, "rk4", steps=rk4_steps)),
                    (f"PF ODE  torchdiffeq dopri5 tol {tol:g}", ode_case(x, "dopri5", tol=tol)),
                ]
                for name, (variants, check) in cases:
                    row = compare(name, (batch, dim), score_name, score, variants, device, repeats, check)
                    rows.append(row)
                    print_row(row, header=len(rows) == 1)
    worst = max(r["time"]["solve"] / r["time"]["raw"] for r in rows)
    mlp = [r["time"]["solve"] / r["time"]["raw"] for r in rows if r["score"].startswith("mlp")]
    print(f"\nsolve/raw: worst {worst:.3f} over all cases, {max(mlp):.3f} with the MLP score (target <= 1.05)")


def print_row(r, header):
    if header:
        print(f"\n{'case':<40} {'batch x dim':>11} {'score':<15} {'nfe raw/solve':>13} "
              f"{'raw s':>8} {'proc s':>8} {'solve s':>8} {'solve/raw':>9} {'solve/proc':>10} "
              f"{'min s/r':>7} {'us/eval':>7} {'max|diff|':>9}")
    n, t, b = r["nfe"], r["time"], r["best"]
    nfe = f"{n['raw']}/{n['solve']}"
    per_eval = (b["solve"] - b["raw"]) / n["solve"] * 1e6  # sdekit's extra time per score evaluation
    print(f"{r['case']:<40} {r['shape']:>11} {r['score']:<15} {nfe:>13} {t['raw']:8.4f} {t['proc']:8.4f} "
          f"{t['solve']:8.4f} {t['solve'] / t['raw']:9.3f} {t['solve'] / t['proc']:10.3f} "
          f"{b['solve'] / b['raw']:7.3f} {per_eval:7.0f} {r['diff']:9.2g}", flush=True)


if __name__ == "__main__":
    main()
