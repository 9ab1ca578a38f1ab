"""vecbudget harness: the engine behind budgeted sweeps of vector compression methods."""

__version__ = "0.1.0"
