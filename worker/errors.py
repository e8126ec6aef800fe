"""Errors a task raises on purpose; their class names reach the client as ``error.type``."""


class InvalidInput(ValueError):
    """The payload breaks the contract: retrying cannot help."""
