"""refunds."""
