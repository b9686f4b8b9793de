"""Django settings of the tests' platform project: one app, one database from ``DATABASE_URL``.

Example::

    DATABASE_URL=postgresql://app@/platform?host=/tmp python manage.py listen_training_metrics
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict


def database_from_url(url: str) -> dict[str, object]:
    """``DATABASES["default"]`` for a libpq URL or DSN (what the function's ``DATABASE_URL`` holds)."""
    params = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,  # anything else libpq takes (sslmode, connect_timeout, ...)
    }


SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["ml_platform"]
DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", ""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The channel the function notifies (its NOTIFY_CHANNEL); the listener's default.
TRAINING_METRICS_CHANNEL = os.environ.get("NOTIFY_CHANNEL", "training_metrics")
