"""HTTP routers, one module per domain."""
