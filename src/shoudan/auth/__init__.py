"""Principals, roles and API keys."""
