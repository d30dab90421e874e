"""Upstream card and QR networks, and the sandbox simulator standing in for them."""
