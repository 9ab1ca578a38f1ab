"""User-facing errors. The CLI prints their message and exits with status 2."""


class VecbudgetError(Exception):
    """An error caused by the user's input or environment, with a message meant for them."""


class UnknownNameError(VecbudgetError):
    """An unknown method, data set or metric; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")


class DataError(VecbudgetError):
    """Bad or corrupt input data: wrong dimension, NaN rows, truncated file, empty split."""


class BudgetError(VecbudgetError):
    """No configuration fits the requested budget(s)."""
