"""Fee plans and limits, as data."""
