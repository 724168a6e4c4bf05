"""Training objectives: denoising score matching for any linear SDE and the likelihood bound (see sdekit.losses)."""
