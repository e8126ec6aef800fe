"""Process-wide configuration of the API."""
