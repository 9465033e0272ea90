# The Celery application is made when Django is, so tasks enqueued from a command or the admin use it.
from .celery import app as celery_app

__all__ = ("celery_app",)
