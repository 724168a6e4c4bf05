r"""What sdekit's keyed noise costs: time per step against k-diffusion's ``torch.randn`` loop (a script, never a test).

Both libraries run in this process on the same score, from the same x_T, over the same 20-step Karras
grid, in float32 on one thread (``--device cuda`` on a GPU); the time per step is the median of
interleaved repeats.  k-diffusion is wrapped as in ``benchmarks/samplers.py`` (its VE-frame denoiser
over sdekit's exact score), and its ``euler_ancestral`` draws its noise with ``torch.randn_like``;
sdekit's draws Philox4x32-10 normals keyed by (seed, sample index, step).  ``dpmpp_2m`` draws no noise:
it measures the loops alone.  ``dpmpp_2m_sde`` reads a Brownian tree in both: k-diffusion's
``BrownianTreeNoiseSampler`` (torchsde's ``BrownianTree``), sdekit's ``KeyedBrownian`` (24 levels).

Cases (the score's cost sets how much of a step the noise is):

- ``mixture 2-D``: the sharp five-mode mixture of ``benchmarks/samplers.py`` under ``VESDE(0.01, 50)``,
  4096 samples, its exact score;
- ``Gaussian 3072-D``: N(mu, diag(v)) with variances from 1e-2 to 1 under ``VPSDE()``, 64 samples (a
  CIFAR-sized state), its exact score (a few elementwise operations);
- ``+ MLP 256``: either score plus a small fixed MLP term (two hidden layers of 256), which costs what a
  small network's evaluation does.

Then the generator alone: one ``keyed_normal`` draw and one ``KeyedBrownian`` query over ``torch.randn``
of the same shape.  Targets: ``euler_ancestral`` <= 1.5 (exact scores) and <= 1.1 (network score),
``dpmpp_2m`` <= 1.10.

Run: ``python benchmarks/keyed_noise.py`` (``--quick`` for fewer repeats).
"""

import argparse
import math
import os
import statistics
import sys
import time
import warnings

import torch

import sdekit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplers import NetworkCost, grid_of, load_k_diffusion, run_kd, sharp_mixture  # noqa: E402


class DiagonalGaussian:
    r"""Data :math:`N(\mu, \mathrm{diag}(v))` under a linear SDE: score
    :math:`-(x - \alpha\mu)/(\alpha^2 v + \sigma^2)`."""

    def __init__(self, sde, dim, device):
        g = torch.Generator().manual_seed(11)
        self.sde, self.dim = sde, dim
        self.mean = (0.5 * torch.randn(dim, generator=g)).to(device)
        self.var = torch.logspace(-2, 0, dim).to(device)

    def score(self, x, t):
        a = self.sde.alpha(t).to(x.dtype)[:, None]
        s = self.sde.sigma(t).to(x.dtype)[:, None]
        return (a * self.mean.to(x.dtype) - x) / (a * a * self.var.to(x.dtype) + s * s)


class Case:
    def __init__(self, name, sde, score, dim, batch, x_T):
        self.name, self.sde, self.score, self.dim, self.batch, self.x_T = name, sde, score, dim, batch, x_T


def cases(device):
    ve, vp = sdekit.VESDE(0.01, 50), sdekit.VPSDE()
    mixture = sharp_mixture(ve)
    g = torch.Generator().manual_seed(7)
    x_mix = mixture.sample(4096, t=ve.T, generator=g).float().to(device)
    gauss = DiagonalGaussian(vp, 3072, device)
    x_gauss = torch.randn(64, 3072, generator=g).to(device)
    out = [Case("mixture 2-D, VE", ve, mixture.score, 2, 4096, x_mix),
           Case("Gaussian 3072-D, VP", vp, gauss.score, 3072, 64, x_gauss)]
    for c in list(out):
        net = NetworkCost(c.score, c.dim)
        if device != "cpu":
            net.layers = [(w.to(device), b.to(device)) for w, b in net.layers]
        out.append(Case(c.name + " + MLP 256", c.sde, net, c.dim, c.batch, c.x_T))
    return out


def timed(fn, device):
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class KDProblem:
    """What ``run_kd`` reads of a problem: the SDE and the score."""

    def __init__(self, sde, score):
        self.sde, self.score = sde, score


def speed(ks, device, repeats, steps=20):
    print(f"\n## Time per step, sdekit / k-diffusion ({steps} Karras steps, float32, {device}, "
          f"median of {repeats} interleaved repeats)\n")
    print("| case | batch | method | sdekit ms/step | k-diffusion ms/step | ratio (median) | ratio (fastest) |")
    print("|---|---|---|---|---|---|---|")
    for case in cases(device):
        grid = grid_of(case.sde, "karras", steps)
        for name, kind in (("dpmpp_2m", "ode"), ("euler_ancestral", "sde"), ("dpmpp_2m_sde", "sde")):
            proc = (sdekit.probability_flow if kind == "ode" else sdekit.reverse)(case.sde, case.score)
            opts = {} if kind == "ode" else {"seed": 3}

            def run_sd():
                proc.solve(case.x_T, method=name, grid=grid, **opts)

            def run_k():
                run_kd(ks, name, KDProblem(case.sde, case.score), case.x_T, grid, steps,
                       seed=None if kind == "ode" else 3)

            run_sd(), run_k()
            ts, tk = [], []
            for _ in range(repeats):
                ts.append(timed(run_sd, device))
                tk.append(timed(run_k, device))
            ms, mk = statistics.median(ts) / steps * 1e3, statistics.median(tk) / steps * 1e3
            print(f"| {case.name} | {case.batch} | {name} | {ms:.3f} | {mk:.3f} | {ms / mk:.2f} | "
                  f"{min(ts) / min(tk):.2f} |")
            sys.stdout.flush()


def generator_cost(device, repeats):
    print(f"\n## The generator alone over torch.randn (float32, {device}, fastest of {repeats})\n")
    print("| shape | torch.randn ms | keyed_normal ms | ratio | KeyedBrownian query ms | ratio |")
    print("|---|---|---|---|---|---|")
    for shape in ((4096, 2), (64, 3072), (10 ** 6, 2)):
        path = sdekit.KeyedBrownian(0.0, 1.0, shape, seed=0, dtype=torch.float32, device=device)
        t = torch.full((shape[0],), 0.37, dtype=torch.float64, device=device)
        index = torch.arange(shape[0], device=device)
        size = math.prod(shape[1:])
        fns = (lambda: torch.randn(shape, device=device),
               lambda: sdekit.keyed_normal(0, index, torch.full_like(index, 5), size),
               lambda: path.value(t))
        best = []
        for fn in fns:
            fn()
            best.append(min(timed(fn, device) for _ in range(repeats)))
        r, k, q = (v * 1e3 for v in best)
        print(f"| {shape} | {r:.3f} | {k:.3f} | {k / r:.1f} | {q:.3f} | {q / r:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # k-diffusion's Brownian tree asks torchsde for times a rounding outside its span: harmless, said each step
    warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
    ks, note = load_k_diffusion()
    print(f"# sdekit {sdekit.__version__}: keyed noise against k-diffusion {note if ks else '(absent)'}\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); command: python {' '.join(sys.argv)}")
    repeats = 3 if args.quick else 9
    if ks is None:
        print(f"\nNote: {note}.  `pip install --no-deps k-diffusion tqdm` for the comparison.")
    else:
        speed(ks, args.device, repeats)
    generator_cost(args.device, repeats)


if __name__ == "__main__":
    main()
