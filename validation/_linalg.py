"""Symmetric positive (semi-)definite matrices in float64: checked eigendecompositions and square roots."""

import torch

from sdekit import InvalidParameterError, ShapeError

__all__ = ["as_float64", "spd_eigh", "psd_sqrt"]


def as_float64(value, name: str) -> torch.Tensor:
    """``value`` (tensor, array or nested list) as a detached float64 CPU tensor with finite entries."""
    try:
        out = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                              dtype=torch.float64).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise InvalidParameterError(f"{name} must be a numeric tensor or array ({err})") from None
    if not torch.isfinite(out).all():
        raise InvalidParameterError(f"{name} has non-finite entries; pass finite numbers")
    return out


def spd_eigh(cov: torch.Tensor, name: str = "cov", semidefinite: bool = False):
    r"""Eigendecomposition :math:`\Sigma = U \operatorname{diag}(\lambda) U^\top` of a symmetric (semi-)definite matrix.

    ``cov`` has shape ``(..., d, d)`` (float64).  Raises :class:`sdekit.InvalidParameterError` when it is not
    symmetric (to ``1e-10`` relative) or not positive definite (positive semi-definite with ``semidefinite``).
    Returns ``(eigenvalues (..., d), eigenvectors (..., d, d), symmetrised cov)``.
    """
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ShapeError(f"{name} must be square, shape (..., d, d), got {tuple(cov.shape)}")
    scale = cov.abs().amax().clamp_min(1e-300)
    if (cov - cov.transpose(-1, -2)).abs().amax() > 1e-10 * scale:
        raise InvalidParameterError(f"{name} is not symmetric; pass (C + C.T) / 2")
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(cov)
    smallest = float(evals.amin())
    if semidefinite:
        if smallest < -1e-12 * float(scale):
            raise InvalidParameterError(f"{name} is not positive semi-definite (smallest eigenvalue {smallest:.3g})")
        evals = evals.clamp_min(0.0)
    elif not smallest > 1e-14 * float(evals.abs().amax()):
        raise InvalidParameterError(
            f"{name} is not positive definite (smallest eigenvalue {smallest:.3g}); "
            "add a small multiple of the identity"
        )
    return evals, evecs, cov


def psd_sqrt(mat: torch.Tensor) -> torch.Tensor:
    r"""The symmetric square root :math:`U \operatorname{diag}(\sqrt{\max(\lambda, 0)}) U^\top` of a symmetric matrix."""
    mat = 0.5 * (mat + mat.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(mat)
    return (evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
