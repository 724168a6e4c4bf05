r"""Conditional generation on the 2-D mixture: classifier guidance, classifier-free guidance and imputation.

``python -m sdekit.adapters.example [--n 4000] [--figure docs/figures/conditional_mixture.png]`` samples
:meth:`sdekit.validation.GaussianMixture.default_2d` under a VP SDE with DPM-Solver++(2M), and prints, for each
row, the mode masses read through the exact component posterior and the mean and covariance error of the
chosen component in standard errors:

- unconditional (the exact score);
- classifier guidance towards each component, the exact posterior as the classifier, scale 1 (exact) and 4;
- classifier-free guidance, conditional = that component's exact score, unconditional = the mixture's, scale 1
  and 4 (two evaluations per step);
- imputation of the first coordinate at x1 = 2.2 (the replacement method).

The figure shows the samples over the exact density's contours.
"""

import argparse

import torch

import sdekit
from sdekit.adapters import Imputation, classifier_free_guidance, classifier_guidance
from sdekit.validation import GaussianMixture, mean_cov_error, mode_masses

__all__ = ["run", "main"]


def run(n: int = 4000, steps: int = 30, seed: int = 0):
    """Sample every row; returns ``(mixture, rows)`` with rows ``(name, samples, nfe, masses, component)``."""
    sde = sdekit.VPSDE()
    mix = GaussianMixture.default_2d(sde)
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def sample(score_fn, **options):
        sol = sdekit.probability_flow(sde, score_fn).solve(x_T, method="dpmpp_2m", steps=steps, seed=seed + 1,
                                                           options=options or None)
        return sol.x, sol.nfe
    rows = [("unconditional", *sample(mix.score), None)]
    for k in range(mix.n_components):
        for w in (1.0, 4.0):
            rows.append((f"classifier k={k} w={w:g}",
                         *sample(classifier_guidance(mix.score, mix.log_posterior, label=k, scale=w)), k))
    for w in (1.0, 4.0):
        rows.append((f"classifier-free k=1 w={w:g}",
                     *sample(classifier_free_guidance(mix.components[1].score, mix.score, w)), 1))
    hook = Imputation(sde, torch.tensor([2.2, 0.0], dtype=torch.float64), torch.tensor([True, False]))
    rows.append(("imputation x1=2.2", *sample(mix.score, hook=hook), None))
    return mix, [(name, x, nfe, mode_masses(x, mix), k) for name, x, nfe, k in rows]


def _table(mix, rows):
    sde = mix.sde
    lines = [f"{'row':28s} {'NFE':>4s}  {'masses (0.5 / 0.3 / 0.2 unconditional)':40s} {'moments of k (max |z|)':>22s}"]
    for name, x, nfe, m, k in rows:
        masses = " / ".join(f"{float(v):.4f}" for v in m.masses)
        z = ""
        if k is not None and name.endswith("w=1"):
            mean, cov = mix.components[k].marginal(sde.eps)
            err = mean_cov_error(x, mean, cov)
            z = f"{err.max_z:.2f}"
        lines.append(f"{name:28s} {nfe:4d}  {masses:40s} {z:>22s}")
    return "\n".join(lines)


def figure(mix, rows, path):
    """Samples of the unconditional, classifier-guided (w = 1 and 4), classifier-free and imputed rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    picks = ["unconditional", "classifier k=2 w=1", "classifier k=2 w=4", "classifier-free k=1 w=1",
             "classifier-free k=1 w=4", "imputation x1=2.2"]
    by_name = {r[0]: r for r in rows}
    g = torch.linspace(-5.5, 5.0, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    logp = mix.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1), mix.sde.eps).reshape(X.shape)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    for ax, name in zip(axes.flat, picks):
        x = by_name[name][1]
        ax.contour(X.numpy(), Y.numpy(), logp.exp().numpy(), levels=8, colors="0.6", linewidths=0.6)
        ax.scatter(x[:2000, 0].numpy(), x[:2000, 1].numpy(), s=2, alpha=0.4)
        if name.startswith("imputation"):
            ax.axvline(2.2, color="C3", lw=0.8)
        masses = " / ".join(f"{float(v):.2f}" for v in by_name[name][3].masses)
        ax.set_title(f"{name}\nmasses {masses}", fontsize=9)
    fig.suptitle("sdekit.adapters: conditional generation on the 2-D mixture (VP, dpmpp_2m, 30 steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--figure", default=None, help="write the figure here (PNG; needs matplotlib)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    mix, rows = run(args.n, args.steps)
    print(_table(mix, rows))
    if args.figure:
        figure(mix, rows, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
