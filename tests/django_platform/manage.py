#!/usr/bin/env python
"""The minimal Django project the tests run as the platform: ``python manage.py listen_training_metrics``."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
