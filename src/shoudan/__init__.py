"""shoudan (收单): an open-source back office for a POS acquirer."""

__version__ = "0.1.0"
