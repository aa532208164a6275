#!/usr/bin/env python
"""Django's command-line utility for the portal."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal import embedded

    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in embedded.SELF_MANAGED_COMMANDS:
        # The one-machine run (`make run`): DEBUG off unless PORTAL_DEBUG=true, plain
        # HTTP on loopback, this machine's own key, outbound calls to loopback only to
        # the demo fleet's ports. Its web server, worker and beat inherit this.
        for name, value in embedded.one_machine_environment().items():
            os.environ.setdefault(name, value)
    elif not os.environ.get("DATABASE_URL"):
        # On the embedded servers (a developer machine): a key of this machine's own.
        os.environ.setdefault("DJANGO_SECRET_KEY", embedded.local_secret_key())
    # `run` and `services` manage the embedded servers themselves; every other
    # command needs them up, and stops them again if it was the one to start them.
    if command not in embedded.SELF_MANAGED_COMMANDS:
        embedded.ensure_for_command()

    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except embedded.ServiceError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
