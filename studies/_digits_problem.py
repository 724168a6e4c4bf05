r"""The study problem of a digits model: samplers judged without an exact score.

A trained network has no exact score, so a row is judged three ways (docs/trained_models.md):

- **against a fine reference solve** from the same :math:`x_T` (and, for SDE rows, the same Brownian path): the
  study engine's pathwise error ``ode`` / ``strong``, the mean over samples of the mean absolute pixel
  difference, with its standard error (the measure of the DPM-Solver papers);
- **against the test split** in the features of the shipped classifier (:mod:`sdekit.studies._classifier`):
  ``fd``, the Fréchet distance of the samples' features to those of the dequantised test split, with a
  bootstrap standard error over the samples, its **floor** the distance of the dequantised training split to the
  same test split (real digits land there) and the floor's spread over bootstrap draws of the training split;
  ``ok`` when within ``floor + 3 floor_std + 3 se``;
- **the class balance**: ``classes``, the total variation between the classifier's class shares of the samples
  and of the training split, ``z`` the largest share's deviation in binomial standard errors; ``ok`` when every
  class holds 5–15 % of the samples; ``class_min`` and ``class_max``: the smallest and the largest share.

``exact_samples`` are draws of the dequantised test split with replacement: the engine reads them as the
problem's data (the weak errors use the coupled reference instead).
"""

import os
from functools import cached_property

import torch

from sdekit import Measure, StudyProblem

from ._classifier import class_frequencies, digits_classifier, frechet_distance, gaussian_stats
from ._digits import EVENT_SHAPE, dequantise, digits
from ._trained import _ModelScore, derived_seed, load_model

__all__ = ["DigitsProblem", "FD_K", "CLASS_BAND", "BOOTSTRAP"]

#: ``fd`` is ok within ``floor + FD_K * (floor_std + se)``.
FD_K = 3.0
#: Every class's share of the samples must lie in this band.
CLASS_BAND = (0.05, 0.15)
#: Bootstrap draws of the standard errors of ``fd`` and of its floor.
BOOTSTRAP = 16
#: Seeds of the fixed dequantisation of the test split and the training split.
TEST_SEED, TRAIN_SEED = 1, 2


def bootstrap_fd(features: torch.Tensor, target, draws: int, seed: int):
    """The Fréchet distance of ``features`` to ``target`` (:class:`GaussianStats`) and its bootstrap standard
    error over resamples of the rows of ``features``."""
    value = frechet_distance(gaussian_stats(features), target)
    g = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    boots = [frechet_distance(gaussian_stats(features[torch.randint(n, (n,), generator=g)]), target)
             for _ in range(draws)]
    return value, float(torch.tensor(boots, dtype=torch.float64).std())


class DigitsProblem(StudyProblem):
    r"""The samplers' problem on a digits model: the probability flow / reverse SDE of the network from
    :math:`x_T \sim \pi`, judged by :data:`measures <DigitsProblem.measures>` (see the module's docstring).

    ``model``: ``"digits"`` (the shipped model), the path of a model of ``sdekit train --data digits``, or an
    ``(adapter, metadata)`` pair of :func:`sdekit.studies.load_model`.  The network runs in its own dtype
    (float32), the states in the study's.
    """

    def __init__(self, model="digits"):
        adapter, meta = load_model(model) if isinstance(model, str) else model
        name = os.path.basename(str(meta.get("path", "model")))     # load_model records the file it read
        self.adapter, self.meta = adapter, meta
        super().__init__(meta["sde"], _ModelScore(adapter), name=f"digits {name}", event_shape=EVENT_SHAPE,
                         config=dict(model=name, model_info=meta["info"]))

    # The judge (data, classifier, floor) is built on first use: sampling the model needs none of it, nor
    # scikit-learn, which holds the data.
    @cached_property
    def data(self):
        return digits()

    @cached_property
    def classifier(self):
        return digits_classifier()

    @cached_property
    def test_images(self):
        return dequantise(self.data.test_levels, torch.Generator().manual_seed(TEST_SEED))

    @cached_property
    def test_stats(self):
        return gaussian_stats(self.classifier.features(self.test_images))

    @cached_property
    def train_shares(self):
        return class_frequencies(self.data.train_labels)

    @cached_property
    def _floor(self):
        train = dequantise(self.data.train_levels, torch.Generator().manual_seed(TRAIN_SEED))
        return bootstrap_fd(self.classifier.features(train), self.test_stats, BOOTSTRAP, TRAIN_SEED)

    @property
    def floor(self) -> float:
        """The training split's Fréchet distance to the test split (the floor a sampler is read against)."""
        return self._floor[0]

    @property
    def floor_std(self) -> float:
        return self._floor[1]

    def exact_samples(self, n, generator):
        idx = torch.randint(self.test_images.shape[0], (n,), generator=generator)
        return self.test_images[idx]

    def class_shares(self, x):
        """The classifier's share of each class 0–9 among the images ``x``."""
        return class_frequencies(self.classifier.predict(x))

    def measures(self, x, exact, seed):
        fd, se = bootstrap_fd(self.classifier.features(x), self.test_stats, BOOTSTRAP, derived_seed(seed, 7))
        shares = self.class_shares(x)
        q = self.train_shares
        z = float(((shares - q).abs() / (q * (1 - q) / x.shape[0]).sqrt()).max())
        lo, hi = CLASS_BAND
        return {
            "fd": Measure(fd, se, floor=self.floor, floor_std=self.floor_std,
                          ok=fd <= self.floor + FD_K * (self.floor_std + se)),
            "classes": Measure(0.5 * float((shares - q).abs().sum()), z=z,
                               ok=bool(((shares >= lo) & (shares <= hi)).all())),
            "class_min": Measure(float(shares.min())),
            "class_max": Measure(float(shares.max())),
        }
