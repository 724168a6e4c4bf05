r"""Divergence estimators for the log-density change of a flow :math:`dx/dt = v(t, x)`.

- ``"exact"``: :math:`\nabla\!\cdot v = \sum_i \partial v_i/\partial x_i`, from :math:`D` vector-Jacobian
  products with the basis vectors, computed in one vectorised backward pass (``is_grads_batched``).
  Cost and memory grow with :math:`D`: for small dimensions (at most :data:`EXACT_MAX_DIM`).
- ``"rademacher"`` (also ``"hutchinson"``) and ``"gaussian"``: the Hutchinson–Skilling estimate
  :math:`\nabla\!\cdot v \approx \varepsilon^\top (\partial v/\partial x)\,\varepsilon` with
  :math:`E[\varepsilon\varepsilon^\top] = I` (Skilling 1989; Hutchinson 1990; Grathwohl et al. 2019, FFJORD),
  one vector-Jacobian product per probe.  The probes are drawn once per solve (the estimate of the
  integral is then unbiased and the ODE stays smooth) and each probe's estimate is kept apart.
- ``"auto"``: ``"exact"`` up to :data:`AUTO_EXACT_DIM` dimensions, ``"rademacher"`` above.
"""

import math
from typing import Optional

import torch

from .._errors import ArgumentTypeError, InvalidParameterError

__all__ = ["DIVERGENCES", "EXACT_MAX_DIM", "AUTO_EXACT_DIM", "resolve_divergence", "draw_probes", "divergence"]

DIVERGENCES = ("auto", "exact", "hutchinson", "rademacher", "gaussian")
#: The largest dimension for which ``divergence="exact"`` is accepted: it keeps D vector-Jacobian products
#: of size (batch, D) at once, D times the memory and backward cost of a Hutchinson probe.
EXACT_MAX_DIM = 256
#: ``divergence="auto"`` is exact up to this dimension (where D backward passes cost little), Rademacher above.
AUTO_EXACT_DIM = 16


def resolve_divergence(name, dim: int) -> str:
    """``name`` resolved for a state of ``dim`` dimensions: ``"exact"``, ``"rademacher"`` or ``"gaussian"``."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {type(name).__name__}")
    key = name.lower()
    if key not in DIVERGENCES:
        raise InvalidParameterError(f"unknown divergence {name!r}; use one of {', '.join(DIVERGENCES)}")
    if key == "auto":
        return "exact" if dim <= AUTO_EXACT_DIM else "rademacher"
    if key == "hutchinson":
        return "rademacher"
    if key == "exact" and dim > EXACT_MAX_DIM:
        raise InvalidParameterError(
            f"divergence='exact' needs {dim} backward passes per evaluation for a state of {dim} dimensions "
            f"(at most {EXACT_MAX_DIM}); use divergence='rademacher' or 'gaussian' (Hutchinson), with probes=k")
    return key


def draw_probes(kind: str, probes: int, x: torch.Tensor, generator: Optional[torch.Generator] = None):
    r"""``probes`` Hutchinson probes shaped ``(probes, *x.shape)`` in x's dtype and device, or ``None`` for exact.

    Rademacher probes are :math:`\pm 1` with probability :math:`\tfrac12`; Gaussian probes standard normal.
    They are drawn on the generator's device (the CPU by default) and moved, so a seed gives the
    same probes on every device.
    """
    if kind == "exact":
        return None
    gen_device = generator.device if generator is not None else x.device
    shape = (probes,) + tuple(x.shape)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if kind == "rademacher":
        e = torch.randint(0, 2, shape, generator=generator, device=gen_device).to(dtype) * 2 - 1
    else:
        e = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    return e.to(dtype=x.dtype, device=x.device)


def _vjps(out: torch.Tensor, x: torch.Tensor, vs: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """The products ``v^T (d out / d x)`` for every ``v`` in ``vs`` (shape ``(n, *x.shape)``), shape ``(n, *x.shape)``.

    One vectorised backward pass (``is_grads_batched``); a network whose backward has no batching rule
    falls back to one pass per vector.
    """
    if vs.shape[0] > 1:
        try:
            (g,) = torch.autograd.grad(out, x, vs, is_grads_batched=True, create_graph=create_graph,
                                       retain_graph=True, allow_unused=True)   # kept: the fallback may need it
            return torch.zeros_like(vs) if g is None else g
        except RuntimeError:
            pass
    rows = []
    for i, v in enumerate(vs):
        # the graph is kept for the next vector, or for the caller's backward pass (create_graph)
        keep = create_graph or i < vs.shape[0] - 1
        (g,) = torch.autograd.grad(out, x, v, create_graph=create_graph, retain_graph=keep, allow_unused=True)
        rows.append(torch.zeros_like(v) if g is None else g)
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def divergence(out: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor],
               create_graph: bool = False) -> torch.Tensor:
    r"""The divergence of ``out`` (a function of ``x``, both ``(batch, *event_shape)``), shape ``(k, batch)``.

    With ``probes=None`` the exact :math:`\sum_i \partial\,\mathrm{out}_i/\partial x_i` (``k = 1``); with probes
    of shape ``(k, batch, *event_shape)`` the Hutchinson–Skilling estimates
    :math:`\varepsilon_j^\top (\partial\,\mathrm{out}/\partial x)\,\varepsilon_j`, one row per probe.
    ``create_graph`` keeps the graph, so the result can be differentiated (likelihood training).
    """
    batch = x.shape[0]
    if not out.requires_grad:   # out does not depend on x through autograd: a divergence of zero
        k = 1 if probes is None else probes.shape[0]
        return torch.zeros((k, batch), dtype=out.dtype, device=out.device)
    if probes is None:
        d = math.prod(x.shape[1:])
        basis = torch.eye(d, dtype=x.dtype, device=x.device).reshape((d, 1) + tuple(x.shape[1:]))
        g = _vjps(out, x, basis.expand((d,) + tuple(x.shape)), create_graph)
        return g.reshape(d, batch, d).diagonal(dim1=0, dim2=2).sum(-1)[None]
    g = _vjps(out, x, probes, create_graph)
    return (g * probes).reshape(probes.shape[0], batch, -1).sum(-1)
