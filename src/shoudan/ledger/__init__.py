"""Double-entry, append-only ledger with TigerBeetle-like semantics on SQL."""
