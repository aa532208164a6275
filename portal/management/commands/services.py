"""Start, stop or show the embedded PostgreSQL and Redis by hand."""

from django.core.management.base import BaseCommand, CommandError

from portal import embedded


class Command(BaseCommand):
    help = "Manage the embedded PostgreSQL and Redis: start, stop or status."
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, action: str, **options):
        services = embedded.Services()
        servers = [s for s in (services.postgres, services.redis) if s is not None]
        try:
            for server in servers:
                name = type(server).__name__
                if action == "start":
                    if server.running_pid():
                        self.stdout.write(f"{name} already running (pid {server.running_pid()})")
                    else:
                        server.start()
                        self.stdout.write(f"{name} started on port {server.port}")
                elif action == "stop":
                    server.stop()
                    self.stdout.write(f"{name} stopped")
                else:
                    pid = server.running_pid()
                    self.stdout.write(f"{name}: " + (f"running (pid {pid}, port {server.port})"
                                                     if pid else "stopped"))
        except embedded.ServiceError as exc:
            raise CommandError(str(exc)) from None
