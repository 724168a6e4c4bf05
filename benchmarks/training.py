r"""The cost of ``sdekit.losses.score_matching_loss`` against a hand-written DDPM loss (a script, never a test).

The peer is what diffusers' training examples and score_sde's ``losses.py`` do for an ε-predicting model on the
VP SDE, written inline: ``t ~ U[eps, T]``, ``noise = randn``, ``x_t = alpha x0 + sigma noise`` with the VP closed
form, ``loss = ((net(x_t, t) - noise) ** 2).sum(dims).mean()``.  sdekit's is
``score_matching_loss(sde, Adapter(net, sde, "eps"), x0)`` with the ``"variance"`` weighting, the same number in
distribution (the ε-loss is the σ²-weighted score loss); it adds the checks that make a bad input or a diverged
model an error instead of a silent NaN (finite data, finite model output, valid weights: host reads per call).

Each row times one training step (forward, backward, Adam step) in this process on the same network, batch and
device, the median of ``--reps`` steps after a warm-up, the two losses' steps interleaved so that both see the
same machine load, and prints the ratio sdekit / peer.  Two problems:

- ``mlp``: the ``ScoreMLP`` of ``sdekit train`` (3 x 128) on 2-D points, batch 512;
- ``conv``: a small convolutional ε-network on (64, 3, 32, 32) states.

It also measures what importance sampling buys for the likelihood weighting on the default 2-D mixture with the
exact score (per-sample variance, uniform t against t uniform in log-SNR).

    python benchmarks/training.py                 # about a minute of one CPU thread
    python benchmarks/training.py --device cuda   # on a GPU
"""

import argparse
import math
import platform
import statistics
import time

import torch

import sdekit
from sdekit.adapters import Adapter
from sdekit.losses import score_matching_loss
from sdekit.studies import MixtureProblem, ScoreMLP


class ConvEps(torch.nn.Module):
    """A small ε-network on images: three 3x3 convolutions with the time added as a channel bias."""

    def __init__(self, channels=3, width=32):
        super().__init__()
        self.a = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.b = torch.nn.Conv2d(width, width, 3, padding=1)
        self.c = torch.nn.Conv2d(width, channels, 3, padding=1)
        self.t = torch.nn.Linear(1, width)

    def forward(self, x, tau):
        h = torch.nn.functional.silu(self.a(x) + self.t(tau.reshape(-1, 1).to(x.dtype))[:, :, None, None])
        return self.c(torch.nn.functional.silu(self.b(h)))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time_steps(steps, reps, device):
    """Median seconds per call of each of ``steps``, the calls interleaved so both see the same machine load."""
    for step in steps:
        for _ in range(3):
            step()
    times = [[] for _ in steps]
    for _ in range(reps):
        for step, ts in zip(steps, times):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def peer_loss(sde, net, x0, generator):
    """The inline DDPM/score_sde ε-loss on the VP SDE (closed-form alpha and sigma)."""
    n = x0.shape[0]
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
    log_alpha = -0.25 * t ** 2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
    shape = (n,) + (1,) * (x0.dim() - 1)
    alpha, sigma = log_alpha.exp().reshape(shape), torch.sqrt(-torch.expm1(2 * log_alpha)).reshape(shape)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    out = net(alpha * x0 + sigma * noise, t)
    return (out - noise).pow(2).flatten(1).sum(1).mean()


def bench(name, net, x0, reps, device):
    sde = sdekit.VPSDE()
    model = Adapter(net, sde, "eps")
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)

    def step_with(loss_fn):
        def step():
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    ours, peer = _time_steps([step_with(lambda: score_matching_loss(sde, model, x0, generator=g)),
                              step_with(lambda: peer_loss(sde, net, x0, g))], reps, device)
    with torch.no_grad():
        a = torch.stack([score_matching_loss(sde, model, x0, generator=g) for _ in range(20)])
        b = torch.stack([peer_loss(sde, net, x0, g) for _ in range(20)])
    print(f"| {name} | {tuple(x0.shape)} | {1e3 * ours:.2f} | {1e3 * peer:.2f} | {ours / peer:.2f} | "
          f"{float(a.mean()):.4g} ± {float(a.std()) / math.sqrt(20):.2g} | {float(b.mean()):.4g} ± "
          f"{float(b.std()) / math.sqrt(20):.2g} |")


def importance(device, n):
    sde = sdekit.VPSDE()
    mix = MixtureProblem(sde).mixture
    g = torch.Generator().manual_seed(1)
    x0 = mix.sample(n, t=0.0, generator=g).to(device)
    gd = torch.Generator(device=device).manual_seed(2)
    out = {}
    for s in ("uniform", "importance"):
        v = score_matching_loss(sde, mix.score, x0, weighting="likelihood", t_sampler=s, reduce="none", generator=gd)
        c = (v - v.mean()).double()
        var = float(c.pow(2).mean())
        out[s] = (float(v.mean()), float(v.std()) / math.sqrt(n), var,
                  math.sqrt(max(float(c.pow(4).mean()) - var ** 2, 0.0) / n))
    (mu, su, vu, svu), (mi, si, vi, svi) = out["uniform"], out["importance"]
    ratio = vu / vi
    print(f"likelihood-weighted loss, exact score, 2-D mixture, VP, {n} samples: uniform t {mu:.4g} ± {su:.2g} "
          f"(variance {vu:.4g} ± {svu:.2g}), importance t {mi:.4g} ± {si:.2g} (variance {vi:.4g} ± {svi:.2g}): "
          f"variance reduced {ratio:.1f}x ± {ratio * math.hypot(svu / vu, svi / vi):.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--samples", type=int, default=200000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# training-step cost: sdekit.losses against an inline DDPM loss ({platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), median of {args.reps} steps)")
    print("| problem | batch | sdekit ms/step | inline ms/step | ratio | sdekit loss | inline loss |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    bench("mlp", ScoreMLP((2,)).to(args.device), torch.randn(512, 2, generator=g).to(args.device), args.reps,
          args.device)
    bench("conv", ConvEps().to(args.device), torch.randn(64, 3, 32, 32, generator=g).to(args.device), args.reps,
          args.device)
    importance(args.device, args.samples)


if __name__ == "__main__":
    main()
