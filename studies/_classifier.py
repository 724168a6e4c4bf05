r"""A digits classifier trained on the training split, shipped with sdekit, and the Fréchet distance in its features.

The FID of Heusel et al. (2017) compares two sets of images through the Gaussians fitted to their Inception
features; an 8×8 digit needs no Inception network, only features that separate digits.
:func:`train_digits_classifier` trains a small CNN on the **training split** (never the test split); the result
ships as ``studies/models/digits_classifier.safetensors`` and :func:`digits_classifier` loads it, so every study
measures in the same features (training it again takes a minute or two on one core:
``python -m sdekit.studies._classifier``, seed 0, rewrites the file).

- The network: conv 3×3 (1 → 16), SiLU, conv 3×3 stride 2 (16 → 32), SiLU, linear 512 → 16, SiLU, linear 16 → 10;
  the **features** are :math:`\log(1 + h)` of the 16 units :math:`h` before the last layer (fewer features, less
  Monte Carlo noise in a covariance fitted to the 360 test images).  The units are SiLU outputs, at least
  :math:`-0.28` and heavy-tailed (up to about 80 for a confident prediction), and a Gaussian fitted to them is
  ruled by those tails; the logarithm tames them: over four sets of 1000 samples of the shipped model, the
  model's and a fitted Gaussian's distances are 3.7 spreads apart in these features and 2.4 in the raw units.
- Training: Adam (lr 1e-2, weight decay 1e-4, cosine decay) for 300 full-batch steps of cross-entropy on the
  1,437 training images in float32, each step with fresh dequantisation noise
  (:func:`sdekit.studies._digits.dequantise`), so the classifier sees the continuous images a score model makes.
- :func:`frechet_distance`: :math:`\|\mu_1-\mu_2\|^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1^{1/2}\Sigma_2
  \Sigma_1^{1/2})^{1/2})` of the feature means and covariances, in float64 through symmetric eigendecompositions.
"""

import math
import os
from dataclasses import dataclass

import torch

from sdekit import InvalidParameterError, ShapeError
from sdekit.validation._linalg import psd_sqrt

from ._digits import EVENT_SHAPE, dequantise, digits

__all__ = ["DigitsClassifier", "digits_classifier", "train_digits_classifier", "frechet_distance",
           "gaussian_stats", "class_frequencies", "CLASSIFIER_FILE"]

#: The shipped classifier.
CLASSIFIER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "digits_classifier.safetensors")
_CACHE = {}


class DigitsClassifier(torch.nn.Module):
    r"""The CNN of :func:`train_digits_classifier`: ``features(x)`` ``(n, 16)`` (:math:`\log(1 + h)` of the
    penultimate units, float64) and ``forward(x)`` logits ``(n, 10)`` of images ``(n, 1, 8, 8)`` in the model space
    (any float dtype; computed in the network's)."""

    def __init__(self, features: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(512, features), torch.nn.SiLU())
        self.head = torch.nn.Linear(features, 10)

    def features(self, x):
        if tuple(x.shape[1:]) != EVENT_SHAPE:
            raise ShapeError(f"the digits classifier takes images (n, 1, 8, 8), got {tuple(x.shape)}")
        p = next(self.parameters())
        with torch.no_grad():
            return torch.log1p(self.body(x.to(device=p.device, dtype=p.dtype)).to(torch.float64))

    def forward(self, x):
        return self.head(self.body(x))

    def predict(self, x):
        """The most likely class of each image (int64)."""
        p = next(self.parameters())
        with torch.no_grad():
            return self(x.to(device=p.device, dtype=p.dtype)).argmax(1).cpu()


def train_digits_classifier(steps: int = 300, seed: int = 0) -> DigitsClassifier:
    """The classifier trained on the training split (see the module's docstring), in float32 on the CPU."""
    d = digits(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    for _ in range(steps):
        x = dequantise(d.train_levels, gen, dtype=torch.float32)
        loss = torch.nn.functional.cross_entropy(net(x), d.train_labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def digits_classifier(path: str = CLASSIFIER_FILE) -> DigitsClassifier:
    """The shipped classifier (cached), read from ``path`` (safetensors, tensors only)."""
    if path not in _CACHE:
        from safetensors.torch import load_file
        if not os.path.isfile(path):
            raise InvalidParameterError(f"no digits classifier at {path}; reinstall sdekit, or write one with "
                                        f"python -m sdekit.studies._classifier")
        net = DigitsClassifier()
        net.load_state_dict(load_file(path))
        _CACHE[path] = net.eval().requires_grad_(False)
    return _CACHE[path]


def save_classifier(net: DigitsClassifier, path: str = CLASSIFIER_FILE) -> str:
    """Write ``net``'s weights to ``path`` with how they were made in the metadata."""
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path,
              metadata=dict(format="sdekit.digits_classifier/1", made_by="python -m sdekit.studies._classifier",
                            steps="300", seed="0", data="training split of sklearn.datasets.load_digits"))
    return path


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a set of feature vectors (float64), and its size."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int


def gaussian_stats(features: torch.Tensor) -> GaussianStats:
    """The mean and the unbiased covariance of ``features`` ``(n, k)``."""
    f = features.detach().to(torch.float64).cpu()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ShapeError(f"features must be (n, k) with n >= 2, got {tuple(f.shape)}")
    return GaussianStats(f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1]), f.shape[0])


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    r"""The Fréchet distance between the Gaussians of two :class:`GaussianStats` (squared units of the features):
    :math:`\|\mu_a-\mu_b\|^2 + \mathrm{tr}\,\Sigma_a + \mathrm{tr}\,\Sigma_b - 2\,\mathrm{tr}(\Sigma_a^{1/2}
    \Sigma_b\Sigma_a^{1/2})^{1/2}`."""
    root = psd_sqrt(a.cov)
    cross = torch.linalg.eigvalsh(root @ b.cov @ root).clamp(min=0).sqrt().sum()
    d = a.mean - b.mean
    return float(d @ d + a.cov.trace() + b.cov.trace() - 2 * cross)


def class_frequencies(labels: torch.Tensor) -> torch.Tensor:
    """The share of each class 0–9 among ``labels`` (float64, sums to 1)."""
    return torch.bincount(labels.reshape(-1).cpu(), minlength=10).to(torch.float64) / labels.numel()


if __name__ == "__main__":            # python -m sdekit.studies._classifier: train the shipped classifier again
    torch.set_num_threads(1)
    classifier = train_digits_classifier()
    d = digits(torch.float32)
    test = dequantise(d.test_levels, torch.Generator().manual_seed(1), dtype=torch.float32)
    accuracy = float((classifier.predict(test) == d.test_labels).double().mean())
    print(f"test accuracy {accuracy:.4f}; wrote {save_classifier(classifier)}")
