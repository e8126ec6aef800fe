"""The HTTP API: FastAPI, async, no torch."""
