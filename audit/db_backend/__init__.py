"""The portal's PostgreSQL backend: Django's, with the audit trail sealed at commit.

``DATABASES["default"]["ENGINE"] = "audit.db_backend"`` (portal/settings.py).
"""
