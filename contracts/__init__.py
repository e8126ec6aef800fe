"""The contract between the API and the workers: names, settings, Celery configuration, schemas.

Torch-free on purpose: the API, the workers and the Python client all import it.
"""
