"""elasticrec: long-sequence sequential recommendation with ELASTIC and honest baselines."""

__version__ = "0.1.0"
