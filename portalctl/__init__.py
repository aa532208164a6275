"""portalctl: the portal's command-line client for CI/CD pipelines.

It speaks only the public REST API v1 (docs/api.md) over HTTP and shares no code
with the server, so a pipeline can install it on its own (``pip install`` of this
project, or of this package's two dependencies, click and httpx).
"""

__version__ = "1.0.0"
