from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "Demo"

    def ready(self) -> None:
        # The demo fleet (a sample service on loopback ports) is one the local
        # executor can run: applications name it with {"fleet": "demo"}.
        import demo_fleet
        from deployments.executors.local import register_fleet

        register_fleet("demo", demo_fleet)
