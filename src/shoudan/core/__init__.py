"""Shared kernel: money, errors, clock, ids, configuration and the database layer."""
