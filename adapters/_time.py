r"""The time a network was trained on, as a function of sdekit's time :math:`t` — and back.

Every convention is a pair of elementwise maps ``to_network(t)`` and ``from_network(tau)``, each the other's
inverse, computed in float64.  With :math:`\lambda = \log\alpha - \log\sigma` (the log-SNR of the paired SDE)
and the VE-frame noise level :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}`:

================  =====================================  ==============================================
name              ``tau``                                trained by
================  =====================================  ==============================================
``"t"``           :math:`t`                              continuous-time score networks
``"scaled"``      :math:`s\,t` (``scale=``, e.g. 999)    score_sde's DDPM-style networks (999 t)
``"index"``       :math:`tN - 1`, rounded if quantised   DDPM / diffusers UNets on a table of N steps
``"sigma"``       :math:`\tilde\sigma`                   NCSN++, k-diffusion, EDM's ``D(x; sigma)``
``"log_sigma"``   :math:`\log\tilde\sigma = -\lambda`    networks conditioned on log sigma
``"c_noise"``     :math:`\tfrac14\log\tilde\sigma`       EDM's preconditioned network F
================  =====================================  ==============================================

``"index"`` needs a :class:`~sdekit.adapters.DiscreteVPSDE`.  For a VE SDE :math:`\alpha = 1` and
:math:`\tilde\sigma = \sigma(t)`, the noise level the network was trained at.
"""

import math
import numbers

import torch

from sdekit import InvalidParameterError

from ._discrete import DiscreteVPSDE

__all__ = ["TimeConvention", "TIME_CONVENTIONS", "time_convention"]

TIME_CONVENTIONS = ("t", "scaled", "index", "sigma", "log_sigma", "c_noise")


class TimeConvention:
    """The map between sdekit's time ``t`` and a network's time input ``tau``, for one SDE.

    ``to_network(t)`` and ``from_network(tau)`` take and return tensors (any shape, any float dtype and
    device, computed in float64 and returned in the input's dtype).  Build one with :func:`time_convention`.
    """

    def __init__(self, name, sde, scale=None, quantise=False):
        self.name, self.sde, self.scale, self.quantise = name, sde, scale, quantise

    def _log_sigma(self, t):
        return -self.sde.log_snr(t)

    def _t_of_log_sigma(self, ls):
        return self.sde.t_of_log_snr(-ls)

    def to_network(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input at sdekit times ``t``."""
        t64 = t.to(torch.float64)
        name = self.name
        if name == "t":
            tau = t64
        elif name == "scaled":
            tau = self.scale * t64
        elif name == "index":
            tau = self.network_index(t64)[0]
        elif name == "sigma":
            tau = torch.exp(self._log_sigma(t64))
        elif name == "log_sigma":
            tau = self._log_sigma(t64)
        else:
            tau = 0.25 * self._log_sigma(t64)
        return tau.to(t.dtype)

    def network_index(self, t64: torch.Tensor):
        """``(tau, off)`` for the ``"index"`` convention: the timesteps of float64 times ``t64`` (rounded when
        quantised, float64), and ``off``, the largest distance of an unrounded timestep from an integer (0 on the
        table's own timesteps).  Times off the table are refused."""
        raw = self.sde.index(t64)
        tau = torch.round(raw) if self.quantise else raw
        lo = 0 if self.quantise else -1
        if not tau.numel():
            return tau, 0.0
        # one host read per network call (the range and the distance to the grid together), the price of
        # refusing a time off the table
        low, high, off = torch.stack([tau.min(), tau.max(), (raw - torch.round(raw)).abs().max()]).tolist()
        if low < lo or high > self.sde.n - 1 + 1e-9:
            raise InvalidParameterError(
                f"time t in [{float(t64.min()):.6g}, {float(t64.max()):.6g}] maps to timesteps "
                f"[{low:.6g}, {high:.6g}], outside the table 0..{self.sde.n - 1}; "
                f"keep t in [{self.sde.eps:.6g}, 1] (eps = 1/N is the first trained timestep)")
        return tau, off

    def from_network(self, tau: torch.Tensor) -> torch.Tensor:
        """The sdekit time of network time inputs ``tau``: the inverse of :meth:`to_network` (on the table's
        timesteps when quantised)."""
        tau64 = tau.to(torch.float64)
        name = self.name
        if name == "t":
            t = tau64
        elif name == "scaled":
            t = tau64 / self.scale
        elif name == "index":
            t = self.sde.time(tau64)
        elif name == "sigma":
            t = self._t_of_log_sigma(torch.log(tau64))
        elif name == "log_sigma":
            t = self._t_of_log_sigma(tau64)
        else:
            t = self._t_of_log_sigma(4 * tau64)
        return t.to(device=tau.device, dtype=tau.dtype)

    def __repr__(self):
        extra = f", scale={self.scale}" if self.name == "scaled" else (
            f", quantise={self.quantise}" if self.name == "index" else "")
        return f"TimeConvention({self.name!r}{extra})"


def time_convention(name: str, sde, scale=None, quantise=None) -> TimeConvention:
    """The time convention ``name`` (one of :data:`TIME_CONVENTIONS`) for ``sde``.

    **Arguments**

    - ``scale``: for ``"scaled"``, the factor (default 999, score_sde's).
    - ``quantise``: for ``"index"``, round to the nearest trained timestep (default: ``sde.quantise``).
    """
    if not isinstance(name, str) or name not in TIME_CONVENTIONS:
        raise InvalidParameterError(f"unknown time convention {name!r}; use one of {', '.join(TIME_CONVENTIONS)}")
    if scale is not None and name != "scaled":
        raise InvalidParameterError(f"scale= applies to the 'scaled' time convention, not {name!r}")
    if quantise is not None and name != "index":
        raise InvalidParameterError(f"quantise= applies to the 'index' time convention, not {name!r}")
    if name == "scaled":
        scale = 999.0 if scale is None else scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
            raise InvalidParameterError(f"scale must be a positive finite number, got {scale!r}")
        scale = float(scale)
    if name == "index":
        if not isinstance(sde, DiscreteVPSDE):
            raise InvalidParameterError(f"the 'index' time convention needs a table of timesteps: pair the network "
                                        f"with sdekit.adapters.DiscreteVPSDE(alphas_cumprod), not {type(sde).__name__}")
        quantise = sde.quantise if quantise is None else quantise
        if not isinstance(quantise, bool):
            raise InvalidParameterError(f"quantise must be True or False, got {quantise!r}")
    return TimeConvention(name, sde, scale, bool(quantise))
