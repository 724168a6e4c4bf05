"""sdekit's log_likelihood against the reference approach (a script, never a test).

The reference is score_sde's ``likelihood.py`` as written: ``scipy.integrate.solve_ivp(method="RK45")``
over the flattened float64 numpy state ``[x, delta]``; at every evaluation the state is copied to the
device as float32, the drift is computed (one forward pass of the score) and the Hutchinson divergence
(a second forward pass with autograd, then one backward pass), and both are copied back to numpy.
The probe is drawn once per solve (Rademacher).  sdekit runs ``sdekit.log_likelihood`` (torchdiffeq's
dopri5 through ``sdekit.solve``, float32, the state on the device) in up to three forms:

- ``sdekit rms``: ``error_norm="rms"``, the same error norm as the reference (RMS over the whole batch);
- ``sdekit``: the default ``error_norm="sample"`` (each sample and its log-density within the tolerance);
- ``sdekit per-sample``: sdekit's own dopri5 with a step size per sample, where that method is registered;
  ``sdekit per-sample I`` the same with ``options=dict(beta1=0.2, beta2=0.0)``, an I step-size controller
  (the kind torchdiffeq and scipy use) in place of its default PI controller.

Same score function, same rtol/atol (1e-5), same start time (1e-5), batch 256.  Cases:

- ``D=2``: the default 2-D Gaussian mixture under VP with its exact score, exact divergence in sdekit
  (also Rademacher, to compare like with like); the error against the exact model log-density
  (``log p_eps(x) - log p_T(z) + log pi(z)``, ``z`` from a 1e-9 solve) is printed for every row;
- ``D=3072``: 3x32x32 Gaussian "images" with a diagonal covariance and their exact score (cheap: the
  solver's own cost shows), Rademacher probe for both;
- ``D=3072 net``: the same plus a small time-conditioned convolutional network added to the score
  (network cost dominates).

Prints the wall time (minimum and median of ``--repeats`` interleaved rounds after a warm-up), NFE, and the
ratio reference / sdekit of the minima.

    python benchmarks/likelihood.py --device cpu --threads 1
    python benchmarks/likelihood.py --device cuda
    python benchmarks/likelihood.py --quick          # batch 64, one repeat
"""

import argparse
import math
import platform
import statistics
import time

import numpy as np
import torch
from scipy import integrate

import sdekit
from sdekit.validation import GaussianMixture

EPS = 1e-5
SEED = 0


class DiagonalGaussianScore:
    """Exact score of N(mu, diag(var)) data of shape (3, 32, 32) under a linear SDE: -(x - a mu)/(a^2 var + sigma^2)."""

    def __init__(self, sde, shape, device, dtype):
        g = torch.Generator().manual_seed(1)
        self.sde = sde
        self.mu = (0.5 * torch.randn(shape, generator=g)).to(device, dtype)
        self.var = (0.1 + 0.3 * torch.rand(shape, generator=g)).pow(2).to(device, dtype)

    def sample(self, n, generator):
        e = torch.randn((n,) + tuple(self.mu.shape), generator=generator).to(self.mu.device, self.mu.dtype)
        return self.mu + self.var.sqrt() * e

    def __call__(self, x, t):
        shape = (-1,) + (1,) * (x.dim() - 1)
        a, s = self.sde.alpha(t).view(shape), self.sde.sigma(t).view(shape)
        return -(x - a * self.mu) / (a * a * self.var + s * s)


class NetScore(torch.nn.Module):
    """The Gaussian score plus a small time-conditioned conv net (3+1 -> 32 -> 3 channels, SiLU), scaled by 0.1."""

    def __init__(self, base, device, dtype):
        super().__init__()
        torch.manual_seed(2)
        self.base = base
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, 32, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(32, 3, 3, padding=1)).to(device, dtype)

    def forward(self, x, t):
        tt = t.view(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return self.base(x, t) + 0.1 * self.net(torch.cat([x, tt], 1))


# -- the reference: score_sde's likelihood.py ----------------------------------------------------
def reference_loglik(sde, score_fn, x, rtol, atol, generator):
    """score_sde's get_likelihood_fn: scipy RK45 on the flattened float64 state, torch at every call."""
    shape, device = tuple(x.shape), x.device
    epsilon = (torch.randint(0, 2, shape, generator=generator).float() * 2 - 1).to(device)
    nfe = [0]

    def drift_fn(xx, t):
        a = sde.drift_coef(t).view(-1, *([1] * (xx.dim() - 1)))
        g = sde.diffusion_coef(t).view(-1, *([1] * (xx.dim() - 1)))
        return a * xx - 0.5 * g * g * score_fn(xx, t)

    def div_fn(xx, t, eps):
        with torch.enable_grad():
            xx = xx.detach().requires_grad_(True)
            fn_eps = torch.sum(drift_fn(xx, t) * eps)
            grad_fn_eps = torch.autograd.grad(fn_eps, xx)[0]
        return torch.sum(grad_fn_eps * eps, dim=tuple(range(1, len(xx.shape))))

    def ode_func(t, y):
        nfe[0] += 1
        sample = torch.from_numpy(y[:-shape[0]].reshape(shape)).to(device).type(torch.float32)
        vec_t = torch.ones(sample.shape[0], device=device) * t
        with torch.no_grad():
            drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape((-1,))
        logp_grad = div_fn(sample, vec_t, epsilon).detach().cpu().numpy().reshape((-1,))
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([x.detach().cpu().numpy().reshape((-1,)), np.zeros((shape[0],))], axis=0)
    solution = integrate.solve_ivp(ode_func, (EPS, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zp = solution.y[:, -1]
    z = torch.from_numpy(zp[:-shape[0]].reshape(shape)).to(device).type(torch.float32)
    delta = torch.from_numpy(zp[-shape[0]:].reshape((shape[0],))).to(device).type(torch.float32)
    return sde.prior_logp(z) + delta, nfe[0]


def _clock(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def run_case(name, sde, score, x, divergence, exact, args, device):
    """Every variant once as a warm-up, then ``repeats`` rounds over all variants, interleaved (a busy machine
    slows them alike); the minimum and the median of each variant's times are printed."""
    flow = sdekit.probability_flow(sde, score)
    variants = [("reference (scipy RK45)", "rademacher",
                 lambda: reference_loglik(sde, score, x, args.rtol, args.atol, torch.Generator().manual_seed(SEED)))]
    plan = [("sdekit rms", "dopri5", dict(error_norm="rms")), ("sdekit", "dopri5", {})]
    if any(m.qualified_name == "sdekit.dopri5" for m in sdekit.methods()):
        plan.append(("sdekit per-sample", "sdekit.dopri5", {}))
        # the same with an I controller (torchdiffeq's and scipy's kind) in place of its default PI controller
        plan.append(("sdekit per-sample I", "sdekit.dopri5", dict(options=dict(beta1=0.2, beta2=0.0))))
    for label, method, kw in plan:
        for div in divergence:
            def go(method=method, kw=kw, div=div):
                res = flow.log_likelihood(x, method, rtol=args.rtol, atol=args.atol, divergence=div, seed=SEED, **kw)
                return res.log_likelihood, res.nfe
            variants.append((label, div, go))
    outs = [fn() for _, _, fn in variants]                     # warm-up, and the results
    times = [[] for _ in variants]
    for _ in range(args.repeats):
        for i, (_, _, fn) in enumerate(variants):
            times[i].append(_clock(fn, device)[0])
    print(f"\n{name}: batch {x.shape[0]}, D={math.prod(x.shape[1:])}, rtol=atol={args.rtol:g}, device {device}")
    head = (f"  {'':24s}{'divergence':>11s}{'min s':>8s}{'median s':>9s}{'NFE':>5s}{'ref/this':>9s}"
            f"{'mean log p':>12s}")
    if exact is not None:
        head += f"{'max |err|/D':>13s}"
    print(head)
    ref_min = min(times[0])
    for (label, div, _), (ll, nfe), ts in zip(variants, outs, times):
        line = (f"  {label:24s}{div:>11s}{min(ts):8.3f}{statistics.median(ts):9.3f}{nfe:5d}{ref_min / min(ts):9.2f}"
                f"{float(ll.double().mean()):12.5f}")
        if exact is not None:
            line += f"{float((ll.double() - exact).abs().max()) / math.prod(x.shape[1:]):13.2e}"
        print(line, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default="2,3072,3072net")
    p.add_argument("--quick", action="store_true", help="batch 64, one repeat")
    args = p.parse_args()
    if args.quick:
        args.batch, args.repeats = 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}")
    sde = sdekit.VPSDE()
    cases = args.cases.split(",")
    if "2" in cases:
        mix = GaussianMixture.default_2d(sde)
        x64 = mix.sample(args.batch, t=EPS, generator=torch.Generator().manual_seed(SEED))
        flow64 = sdekit.probability_flow(sde, mix.score)
        z = flow64.encode(x64, rtol=1e-9, atol=1e-9).x
        exact = (mix.log_prob(x64, EPS) - mix.log_prob(z, sde.T) + sde.prior_logp(z)).to(device)
        run_case("D=2 mixture, exact score", sde, mix.score, x64.float().to(device), ["exact", "rademacher"], exact,
                 args, device)
    base = DiagonalGaussianScore(sde, (3, 32, 32), device, torch.float32)
    ximg = base.sample(args.batch, torch.Generator().manual_seed(SEED))
    if "3072" in cases:
        run_case("D=3072 diagonal Gaussian images, exact score", sde, base, ximg, ["rademacher"], None, args, device)
    if "3072net" in cases:
        net = NetScore(base, device, torch.float32)
        run_case("D=3072 images, score + conv net", sde, net, ximg, ["rademacher"], None, args, device)


if __name__ == "__main__":
    main()
