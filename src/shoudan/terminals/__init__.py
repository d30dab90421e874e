"""Terminals: inventory, binding to a merchant, keys."""
