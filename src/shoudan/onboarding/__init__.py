"""Merchant onboarding: applications, phone verification, KYC, review and contracts."""
