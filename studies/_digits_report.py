r"""What ``sdekit study --model digits`` writes beside the study's own report: the likelihood of the test split
against simple baselines, the Fréchet distances against a Gaussian's, and pictures of samples beside test images.

- :func:`gaussian_bpd`: a Gaussian fitted (mean and covariance) to the dequantised training split;
- :func:`mixture_bpd`: scikit-learn's ``GaussianMixture`` (full covariances) fitted to four dequantised copies of
  the training split, its number of components chosen among 2, 5, 10, 20 by BIC **on the training split**;
- :func:`model_bpd`: :func:`sdekit.bits_per_dim` through the model's probability flow (Hutchinson, dopri5 at
  ``rtol = atol = 1e-5``, from the model's own :math:`\epsilon`), and :func:`sdekit.losses.nll_bound`;

all on the same dequantised test images, in bits per pixel of the 17-level images (:mod:`sdekit.studies._digits`:
cells of width 1/8, offset 3 bits), each with its standard error over the 360 test images.

:func:`write_digits_report` writes ``digits.md`` (the tables), ``digits_samples.png`` (each method's samples at its
largest budget beside test images and a Gaussian's samples) and ``digits_fd.png`` (Fréchet distance against NFE,
with the floor and the Gaussian's distance).  The likelihoods are cached in ``digits_likelihood.json``, keyed by
the model's fingerprint, so a resumed study does not compute them again.
"""

import json
import math
import os

import torch

import sdekit
from sdekit._study_engine._results import atomic_write

from ._digits import BINS, BPD_OFFSET, DATA_RANGE, dequantise
from ._digits_problem import BOOTSTRAP, bootstrap_fd
from ._trained import _ModelScore, evaluate_bound

__all__ = ["gaussian_bpd", "mixture_bpd", "model_bpd", "write_digits_report", "fitted_gaussian"]

LN2 = math.log(2.0)
#: Seeds: the dequantisation of the test split for likelihoods, of the training copies, and the probes.
LIK_SEED, FIT_SEED = 11, 12


def _mean_se(bpd: torch.Tensor) -> dict:
    """The mean of per-image bits per pixel and its standard error over the images."""
    return dict(bpd=float(bpd.mean()), se=float(bpd.std() / math.sqrt(bpd.numel())))


def _per_pixel(nll: torch.Tensor) -> dict:
    """Bits per pixel (mean and standard error over images) of per-image negative log-densities in nats."""
    return _mean_se(nll.to(torch.float64) / (64 * LN2) + BPD_OFFSET)


def _training_copies(train_levels: torch.Tensor, copies: int = 4, seed: int = FIT_SEED) -> torch.Tensor:
    """``copies`` dequantised copies of the training images, flattened to ``(copies * n, 64)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([dequantise(train_levels, g) for _ in range(copies)]).reshape(-1, 64)


def fitted_gaussian(train_levels: torch.Tensor, copies: int = 4, seed: int = FIT_SEED):
    """``torch.distributions.MultivariateNormal`` fitted to ``copies`` dequantised copies of the training images."""
    x = _training_copies(train_levels, copies, seed)
    return torch.distributions.MultivariateNormal(x.mean(0), covariance_matrix=torch.cov(x.T))


def gaussian_bpd(train_levels, test_images) -> dict:
    """Test bits per pixel of the Gaussian fitted to the dequantised training split."""
    dist = fitted_gaussian(train_levels)
    return _per_pixel(-dist.log_prob(test_images.reshape(-1, 64)))


def mixture_bpd(train_levels, test_images, components=(2, 5, 10, 20)) -> dict:
    """Test bits per pixel of a Gaussian mixture fitted to the dequantised training split (components by BIC on
    the training data); ``"components"`` says how many."""
    from sklearn.mixture import GaussianMixture
    x = _training_copies(train_levels).numpy()
    best = None
    for k in components:
        gm = GaussianMixture(k, covariance_type="full", random_state=0, reg_covar=1e-6, max_iter=200).fit(x)
        bic = gm.bic(x)
        if best is None or bic < best[0]:
            best = (bic, k, gm)
    _, k, gm = best
    nll = -torch.as_tensor(gm.score_samples(test_images.reshape(-1, 64).numpy()))
    return dict(_per_pixel(nll), components=k)


def model_bpd(adapter, sde, test_levels, seed: int = LIK_SEED, batch: int = 120) -> dict:
    """Test bits per pixel through the probability flow of ``adapter`` (:func:`sdekit.bits_per_dim` with uniform
    dequantisation of the levels, ``bins=17``, ``data_range=(-17/16, 17/16)``) and the likelihood bound."""
    flow = sdekit.probability_flow(sde, _GradScore(adapter))
    parts, g = [], torch.Generator().manual_seed(seed)
    for lo in range(0, test_levels.shape[0], batch):
        r = sdekit.bits_per_dim(flow, test_levels[lo:lo + batch], bins=BINS, data_range=DATA_RANGE,
                                dequantize="uniform", generator=g, dtype=torch.float64, eps=sde.eps,
                                rtol=1e-5, atol=1e-5)
        parts.append(r.bpd.detach().to(torch.float64))
    x = dequantise(test_levels, torch.Generator().manual_seed(seed))
    bound = _per_pixel(evaluate_bound(adapter, sde, x, draws=8, seed=seed).values)
    return dict(_mean_se(torch.cat(parts)), bound=bound["bpd"], bound_se=bound["se"])


class _GradScore(_ModelScore):
    """:class:`_ModelScore` with autograd on (the flow's divergence needs it)."""

    def __call__(self, x, t):
        return self.adapter(x.to(self.dtype), t).to(x.dtype)


def likelihoods(problem, out: str, log=print) -> dict:
    """The test bits per pixel of the model, the Gaussian and the mixture, cached in ``digits_likelihood.json``."""
    path = os.path.join(out, "digits_likelihood.json")
    key = problem.fingerprint()["digest"]
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                cached = json.load(fh)
            if cached.get("key") == key:
                return cached
        except (OSError, ValueError):
            pass
    d = problem.data
    test = dequantise(d.test_levels, torch.Generator().manual_seed(LIK_SEED))
    log("likelihoods of the test split: Gaussian, Gaussian mixture, the model's probability flow ...")
    res = dict(key=key, gaussian=gaussian_bpd(d.train_levels, test), mixture=mixture_bpd(d.train_levels, test),
               model=model_bpd(problem.adapter, problem.sde, d.test_levels))
    atomic_write(path, lambda fh: fh.write(json.dumps(res, indent=1).encode("utf-8")))
    return res


def gaussian_fd(problem, n: int, seed: int = 0):
    """Fréchet distance (and its bootstrap standard error) of ``n`` samples of the fitted Gaussian, and the
    samples."""
    dist = fitted_gaussian(problem.data.train_levels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = dist.sample((n,)).reshape(n, 1, 8, 8)
    fd, se = bootstrap_fd(problem.classifier.features(x), problem.test_stats, BOOTSTRAP, seed)
    return fd, se, x


def _grid(ax, images, cols, title):
    import numpy as np
    images = images[: cols * 2].reshape(-1, 8, 8).clamp(-1, 1).numpy()
    rows = math.ceil(images.shape[0] / cols)
    canvas = np.full((rows * 9 - 1, cols * 9 - 1), -1.0)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = im
    ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def write_digits_report(problem, table, out: str, plots: bool = True, likelihood: bool = True, log=print):
    """Write ``digits.md`` and, with ``plots``, ``digits_samples.png`` and ``digits_fd.png`` into ``out``; returns
    the paths written.  ``likelihood=False`` leaves the bits per pixel out."""
    n = table.info["samples"]
    lik = likelihoods(problem, out, log) if likelihood else None
    g_fd, g_se, g_x = gaussian_fd(problem, n)
    shares = problem.class_shares(g_x)
    lines = [f"# Digits: {problem.name}", "",
             f"Fréchet distance to the {problem.data.test.shape[0]} test images in the features of the shipped "
             f"classifier (lower is better), ± 1.96 bootstrap standard errors; class shares by the same classifier.",
             "", "| sampler | budget | NFE | Fréchet distance | / floor | smallest class | largest class | "
                 "error vs reference | verdict |", "|---|---|---|---|---|---|---|---|---|",
             f"| training split (the floor) | - | - | {problem.floor:.3f} ± {1.96 * problem.floor_std:.2g} | 1.00 | "
             f"{float(problem.train_shares.min()):.3f} | {float(problem.train_shares.max()):.3f} | - | - |",
             f"| Gaussian fitted to the training split | - | - | {g_fd:.3f} ± {1.96 * g_se:.2g} | "
             f"{g_fd / problem.floor:.2f} | {float(shares.min()):.3f} | {float(shares.max()):.3f} | - | - |"]
    for r in table.rows:
        if r.get("fd") is None:
            continue
        err = r.get("ode", r.get("strong"))
        err_se = r.get("ode_se", r.get("strong_se"))
        err_text = "-" if err is None else f"{err:.3g} ± {1.96 * (err_se or 0):.2g}"
        lines.append(f"| {r['label']} | {r['budget']} | {r['nfe']} | {r['fd']:.3f} ± {1.96 * r['fd_se']:.2g} | "
                     f"{r['fd'] / problem.floor:.2f} | {r.get('class_min', float('nan')):.3f} | "
                     f"{r.get('class_max', float('nan')):.3f} | {err_text} | {r['verdict']} |")
    if lik is not None:
        lines += _likelihood_lines(lik)
    text = "\n".join(lines) + "\n"
    path = os.path.join(out, "digits.md")
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    paths = [path]
    if plots:
        paths += _plots(problem, table, out, g_fd, g_x)
    log(text)
    return paths


def _likelihood_lines(lik):
    m, ga, gm = lik["model"], lik["gaussian"], lik["mixture"]
    return ["", "Test bits per pixel (360 images, 17 grey levels, uniform dequantisation in cells of width 1/8, "
                  "offset 3 bits; ± 1.96 standard errors over the images):", "",
              "| model | bits per pixel |", "|---|---|",
              f"| score model, probability flow (exact likelihood of the flow) | {m['bpd']:.4f} ± "
              f"{1.96 * m['se']:.2g} |",
              f"| score model, likelihood bound (Song et al. 2021b, Theorem 3) | {m['bound']:.4f} ± "
              f"{1.96 * m['bound_se']:.2g} |",
              f"| Gaussian mixture ({gm['components']} components, by BIC on the training split) | "
              f"{gm['bpd']:.4f} ± {1.96 * gm['se']:.2g} |",
              f"| Gaussian fitted to the training split | {ga['bpd']:.4f} ± {1.96 * ga['se']:.2g} |"]


def _plots(problem, table, out, g_fd, g_x):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    paths = []
    shown = [(k, v) for k, v in table.samples.items() if tuple(v.shape[1:]) == (1, 8, 8)]
    panels = [("test images", problem.test_images)] + [
        (f"{k} ({next(r['budget'] for r in reversed(table.rows) if r['label'] == k)})", v) for k, v in shown] + [
        ("Gaussian fitted to the training split", g_x)]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 1.3 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (title, x) in zip(axes.flat, panels):
        _grid(ax, x.to(torch.float64), 12, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Samples (first 24 of each method at its largest budget): {problem.name}", fontsize=9)
    p = os.path.join(out, "digits_samples.png")
    atomic_write(p, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    paths.append(p)
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for label in table.labels:
        pts = sorted((r["nfe"], r["fd"], r["fd_se"]) for r in table.rows
                     if r["label"] == label and r.get("fd") is not None)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[1.96 * p[2] for p in pts], marker="o",
                        ms=4, capsize=2, lw=1, label=label)
    ax.axhline(problem.floor, color="k", ls="--", lw=1, label="training split (floor)")
    ax.axhline(g_fd, color="gray", ls=":", lw=1, label="Gaussian fit")
    ax.set(xscale="log", yscale="log", xlabel="score evaluations (NFE)", ylabel="Fréchet distance to the test split",
           title=f"Digits: {problem.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(out, "digits_fd.png")
    atomic_write(p, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    paths.append(p)
    return paths
