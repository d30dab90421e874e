"""Reconciliation (对账): channel statements matched against our records."""
