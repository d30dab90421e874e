"""Append-only, hash-chained audit log of staff actions and state changes."""
