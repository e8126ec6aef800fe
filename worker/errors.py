"""Errors a task raises on purpose; their class names reach the client as ``error.type``."""


class InvalidInput(ValueError):
    """The payload breaks the contract: retrying cannot help, the job fails at once."""


class TransientError(RuntimeError):
    """A fault worth another try (a flaky device, a dependency that timed out)."""


class Canceled(Exception):
    """The client canceled the job; the task stops and records it as revoked."""
