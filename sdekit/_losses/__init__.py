"""Training objectives: denoising score matching for any linear SDE and the likelihood bound (see sdekit.losses)."""

from ._bound import NLLBound, nll_bound
from ._dsm import score_matching_loss
from ._times import T_SAMPLERS, WEIGHTINGS, likelihood_normaliser

__all__ = ["score_matching_loss", "nll_bound", "NLLBound", "WEIGHTINGS", "T_SAMPLERS", "likelihood_normaliser"]
