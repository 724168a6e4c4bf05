r"""What a network predicts, and how each prediction becomes the score, :math:`\hat x_0` and :math:`\hat\varepsilon`.

For a linear SDE, :math:`x_t = \alpha x_0 + \sigma\varepsilon`; with :math:`\tilde\sigma = \sigma/\alpha` and
:math:`\tilde x = x/\alpha` (the VE frame, where :math:`\tilde x = x_0 + \tilde\sigma\varepsilon`):

- ``"eps"``: :math:`\hat\varepsilon`; :math:`s = -\hat\varepsilon/\sigma`.
- ``"x0"``: :math:`\hat x_0`; :math:`s = (\alpha\hat x_0 - x)/\sigma^2`.
- ``"v"``: :math:`v = \alpha\varepsilon - \sigma x_0` (Salimans & Ho 2022);
  :math:`\hat x_0 = (\alpha x - \sigma v)/(\alpha^2 + \sigma^2)`,
  :math:`\hat\varepsilon = (\sigma x + \alpha v)/(\alpha^2 + \sigma^2)`.
- ``"score"``: :math:`s` itself.
- ``"denoiser"``: :math:`D(\tilde x; \tilde\sigma) = \hat x_0`, called on the VE-frame state (k-diffusion, EDM's D).
- ``"edm"``: EDM's raw network :math:`F`, :math:`D = c_{skip}\tilde x + c_{out} F(c_{in}\tilde x; c_{noise})`,
  :math:`c_{skip} = \sigma_d^2/(\tilde\sigma^2 + \sigma_d^2)`,
  :math:`c_{out} = \tilde\sigma\sigma_d/\sqrt{\tilde\sigma^2 + \sigma_d^2}`,
  :math:`c_{in} = 1/\sqrt{\tilde\sigma^2 + \sigma_d^2}` (Karras et al. 2022, Table 1).
- ``"flow"``: the velocity :math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon` of :math:`x_t` in :math:`t`
  (flow matching, rectified flow); :math:`\hat x_0 = (\dot\sigma x - \sigma u)/(\dot\sigma\alpha - \sigma\dot\alpha)`.

and always :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`, :math:`\hat\varepsilon = -\sigma s`.  Each
:class:`Parameterisation` converts a network output to all three and back (``output_of_score``), so the
conversions are invertible and tested both ways.  diffusers' names (``epsilon``, ``sample``,
``v_prediction``) are accepted.
"""

from typing import NamedTuple

import torch

from sdekit import InvalidParameterError

__all__ = ["Coefficients", "Parameterisation", "PARAMETERISATIONS", "parameterisation"]


class Coefficients(NamedTuple):
    r"""Per-sample coefficients at the times of a batch, each shaped to broadcast against ``x``, in x's dtype.

    ``alpha``, ``sigma``; ``dalpha``, ``dsigma`` their time derivatives (only for ``"flow"``, else ``None``).
    """
    alpha: torch.Tensor
    sigma: torch.Tensor
    dalpha: object = None
    dsigma: object = None


class Parameterisation:
    """One network output convention: ``score``, ``data`` and ``noise`` from an output, and the output of a score.

    ``network_state(x, c)`` is the state the network is called on (the VE-frame state for the denoisers).
    """

    name = ""
    needs_derivatives = False

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def network_state(self, x, c):
        return x

    # conversions: output -> (x0, eps) and the score; each class defines one natural pair
    def data(self, out, x, c):
        return (x - c.sigma * self.noise(out, x, c)) / c.alpha

    def noise(self, out, x, c):
        return (x - c.alpha * self.data(out, x, c)) / c.sigma

    def score(self, out, x, c):
        return -self.noise(out, x, c) / c.sigma

    def output_of_score(self, s, x, c):
        """The output this parameterisation's network would give where the score is ``s``."""
        raise NotImplementedError

    def __repr__(self):
        return f"Parameterisation({self.name!r})"


class _Eps(Parameterisation):
    name = "eps"

    def noise(self, out, x, c):
        return out

    def output_of_score(self, s, x, c):
        return -c.sigma * s


class _X0(Parameterisation):
    name = "x0"

    def data(self, out, x, c):
        return out

    def score(self, out, x, c):
        return (c.alpha * out - x) / (c.sigma * c.sigma)

    def output_of_score(self, s, x, c):
        return (x + c.sigma * c.sigma * s) / c.alpha


class _V(Parameterisation):
    name = "v"

    def data(self, out, x, c):
        return (c.alpha * x - c.sigma * out) / (c.alpha * c.alpha + c.sigma * c.sigma)

    def noise(self, out, x, c):
        return (c.sigma * x + c.alpha * out) / (c.alpha * c.alpha + c.sigma * c.sigma)

    def output_of_score(self, s, x, c):
        eps = -c.sigma * s
        return c.alpha * eps - c.sigma * (x - c.sigma * eps) / c.alpha


class _Score(Parameterisation):
    name = "score"

    def score(self, out, x, c):
        return out

    def data(self, out, x, c):
        return (x + c.sigma * c.sigma * out) / c.alpha

    def noise(self, out, x, c):
        return -c.sigma * out

    def output_of_score(self, s, x, c):
        return s


class _Denoiser(_X0):
    name = "denoiser"

    def network_state(self, x, c):
        return x / c.alpha


class _EDM(_X0):
    name = "edm"

    def _precond(self, c):
        sd = self.sigma_data
        s = c.sigma / c.alpha
        root = torch.sqrt(s * s + sd * sd)
        return sd * sd / (root * root), s * sd / root, 1 / root          # c_skip, c_out, c_in

    def network_state(self, x, c):
        return self._precond(c)[2] * (x / c.alpha)

    def data(self, out, x, c):
        c_skip, c_out, _ = self._precond(c)
        return c_skip * (x / c.alpha) + c_out * out

    def score(self, out, x, c):
        return _X0.score(self, self.data(out, x, c), x, c)

    def output_of_score(self, s, x, c):
        c_skip, c_out, _ = self._precond(c)
        return (_X0.output_of_score(self, s, x, c) - c_skip * (x / c.alpha)) / c_out


class _Flow(Parameterisation):
    name = "flow"
    needs_derivatives = True

    def data(self, out, x, c):
        return (c.dsigma * x - c.sigma * out) / (c.dsigma * c.alpha - c.sigma * c.dalpha)

    def noise(self, out, x, c):
        return (c.alpha * out - c.dalpha * x) / (c.dsigma * c.alpha - c.sigma * c.dalpha)

    def output_of_score(self, s, x, c):
        eps = -c.sigma * s
        return c.dalpha * (x - c.sigma * eps) / c.alpha + c.dsigma * eps


PARAMETERISATIONS = {p.name: p for p in (_Eps, _X0, _V, _Score, _Denoiser, _EDM, _Flow)}
_ALIASES = {"epsilon": "eps", "sample": "x0", "data": "x0", "v_prediction": "v", "velocity": "flow"}


def parameterisation(name: str, sigma_data: float = 0.5) -> Parameterisation:
    """The parameterisation ``name``: one of ``eps``, ``x0``, ``v``, ``score``, ``denoiser``, ``edm``, ``flow``
    (or diffusers' ``epsilon``, ``sample``, ``v_prediction``); ``sigma_data`` is EDM's :math:`\\sigma_d`."""
    key = _ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in PARAMETERISATIONS:
        raise InvalidParameterError(f"unknown prediction {name!r}; use one of {', '.join(PARAMETERISATIONS)} "
                                    f"(or diffusers' {', '.join(_ALIASES)})")
    return PARAMETERISATIONS[key](sigma_data)
