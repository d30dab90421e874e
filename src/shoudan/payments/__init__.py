"""Payments: sale, pre-authorisation, completion, void, reversal."""
