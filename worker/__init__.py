"""Celery workers that hold the models: tasks, model registry, inference."""
