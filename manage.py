#!/usr/bin/env python
import gc
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    finally:
        # The process ends here. Its last garbage collections would walk every object Django, Celery
        # and botocore loaded (about 0.25 s at the end of each publish_release) to free memory that
        # the exit frees anyway; frozen, they are skipped. Atexit handlers and logging still run.
        gc.freeze()


if __name__ == "__main__":
    main()
