r"""Predictor–corrector sampling of the reverse SDE (Song et al. 2021, Algorithms 2–5), any pair.

At each grid time the corrector runs ``n_steps`` Langevin steps at :math:`t`, then the predictor steps
to :math:`t'`.  With :math:`a = \alpha(t)/\alpha(t')` and :math:`G^2 = \sigma(t)^2 - a^2\sigma(t')^2` (the
exact transition of the forward SDE over the step; DDPM's :math:`\beta_i` for VP, SMLD's
:math:`\sigma_i^2 - \sigma_{i-1}^2` for VE):

- predictors: ``"euler_maruyama"`` :math:`x' = x + (f - g^2 s)\,(t' - t) + g\,\Delta W`;
  ``"reverse_diffusion"`` :math:`x' = x - (a - 1)x + G^2 s + G z`;
  ``"ancestral"`` :math:`x' = (x + G^2 s)/a + (\sigma' G/\sigma)\,z` (the exact posterior variance;
  score_sde's VE ancestral step, and DDPM's with :math:`\tilde\beta` for VP); ``"none"``.
- correctors: ``"langevin"`` :math:`x \leftarrow x + \epsilon s + \sqrt{2\epsilon}\,z` with
  :math:`\epsilon = 2a^2(r\|z\|/\|s\|)^2` for signal-to-noise ratio ``snr`` :math:`r`;
  ``"annealed_langevin"`` with :math:`\epsilon = 2a^2(r\sigma(t))^2`; ``"none"``.

The Langevin norms are per sample by default (``norm="sample"``); score_sde averages them over the
batch (``norm="batch"``), which couples the samples.  The Euler–Maruyama predictor's normals are the step's
keyed Brownian increments (a finer grid refines the path); the other predictors' are fresh keyed normals of
the step, and the corrector's come from the keyed source at ``(t, step)``.
"""

from .._broadcast import per_sample
from ._model import Coef
from ._stepper import Stepper, check_choice, check_number

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "annealed_langevin", "none")


class PredictorCorrector(Stepper):
    name = "pc"
    description = "predictor–corrector (Song et al. 2021): any predictor with Langevin or annealed Langevin"
    kind = "sde"
    order = None
    frame = "t"
    needs = "score"
    schedule = "uniform"
    defaults = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "n_steps": 1,
                "norm": "sample"}

    def setup(self, predictor, corrector, snr, n_steps, norm):
        self.predictor = check_choice("predictor", predictor, PREDICTORS)
        self.corrector = check_choice("corrector", corrector, CORRECTORS)
        self.norm = check_choice("norm", norm, ("sample", "batch"))
        self.snr = check_number("snr", snr, 0.0)
        self.n_steps = check_number("n_steps", n_steps, 0, 1000, integer=True)

    def step(self, x, t, t_next, i, n):
        a = self.model.alpha(t) / self.model.alpha(t_next)
        if self.corrector != "none":
            for j in range(self.n_steps):
                x = self._langevin(x, t, a, j)
        return self._predict(x, t, t_next, a)

    def _langevin(self, x, t, a, j):
        s = self.model.score(x, t)
        z = self.brownian.normal(t, tag=j).to(x.dtype)
        if self.corrector == "annealed_langevin":
            eps = 2 * a * a * (self.snr * self.model.sigma(t)) ** 2
        else:
            s_norm = s.reshape(s.shape[0], -1).norm(dim=1).double()
            z_norm = z.reshape(z.shape[0], -1).norm(dim=1).double()
            if self.norm == "batch":
                s_norm, z_norm = s_norm.mean().expand_as(s_norm), z_norm.mean().expand_as(z_norm)
            eps = 2 * a * a * Coef((self.snr * z_norm / s_norm) ** 2)
        return x + eps * s + (2 * eps).sqrt() * z

    def _predict(self, x, t, t_next, a):
        if self.predictor == "none":
            return x
        model = self.model
        draw = self.brownian_normal if self.predictor == "euler_maruyama" else self.fresh_normal
        z = draw(t, t_next, x)
        if self.predictor == "euler_maruyama":
            tx = t.to(x.dtype)
            dt = Coef(t_next - t)
            g = per_sample(model.process.diffusion(tx, x), x)   # g(t) in x's dtype: per sample, or shaped like x
            return x + dt * model.process.drift(tx, x) + dt.abs().sqrt() * g * z
        sigma, sigma1 = model.sigma(t), model.sigma(t_next)
        G2 = (sigma * sigma - a * a * sigma1 * sigma1).clamp_min(0)
        s = model.score(x, t)
        if self.predictor == "reverse_diffusion":
            return x - (a - 1) * x + G2 * s + G2.sqrt() * z
        return (x + G2 * s) / a + sigma1 * G2.sqrt() / sigma * z
