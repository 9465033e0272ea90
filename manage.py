#!/usr/bin/env python
"""Django's command-line utility: extract, transform, load, run_pipeline, pipeline_status, demo, ..."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings.local")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # Settings that cannot load (a production secret unset, a DATABASE_URL Django cannot use): cron's
        # log gets what to fix in one line, not a traceback through Django's settings machinery.
        message = " ".join(str(exc).split())
        sys.stderr.write(f"manage.py: settings {os.environ['DJANGO_SETTINGS_MODULE']}: {message}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
