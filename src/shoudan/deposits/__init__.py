"""Terminal deposits (押金): charge at activation and every refund path."""
