"""Run the test OpenID Connect provider: ``python -m tests.identity.idp_server PORT``.

Makes its database afresh on the embedded PostgreSQL (PORTAL_PG_PORT), migrates, and
serves on 127.0.0.1:PORT until killed.
"""

import os
import sys


def main() -> None:
    port = int(sys.argv[1])
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.identity.idp_settings"
    os.environ["IDP_ISSUER"] = f"http://127.0.0.1:{port}/o"
    import psycopg

    name = os.environ.get("IDP_DATABASE", "identity_provider_test")
    with psycopg.connect(host="127.0.0.1", port=os.environ["PORTAL_PG_PORT"], user="portal",
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.core.servers.basehttp import WSGIServer, run
    from django.core.wsgi import get_wsgi_application

    WSGIServer.allow_reuse_address = True
    run("127.0.0.1", port, get_wsgi_application(), ipv6=False, threading=True)


if __name__ == "__main__":
    main()
