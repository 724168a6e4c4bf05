"""sdekit's own steppers, registered under the backend ``"sdekit"`` (filled in by the stepping layer)."""
