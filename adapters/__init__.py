"""Adapters from trained networks to score functions (coming next)."""
