"""Merchants: identity, settlement bank account (encrypted), fee plan, limits."""
