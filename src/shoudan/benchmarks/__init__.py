"""Benchmarks behind ``shoudan bench``: each prints JSON lines with its own baseline, measured
in the same run on the same machine, and the ratio to it."""
