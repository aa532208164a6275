"""What a request pays before its view (docs/benchmarks.md, "Request cost of the pages"):
probes load no session and no user, and a session's "last seen" is noted in the cache
at most once a minute, while the checks that protect people still run on every page."""

from __future__ import annotations

import time

from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from identity import signin


def test_probes_read_no_session_and_no_user_even_with_a_session_cookie(demo):
    client = Client()
    client.force_login(demo.cab)
    for probe in ("/healthz",):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(probe)
        assert response.status_code == 200
        assert ctx.captured_queries == []


def test_last_seen_is_noted_once_a_minute_not_on_every_page(demo, monkeypatch):
    client = Client()
    client.force_login(demo.engineer)
    key = client.session.session_key
    cache.delete(signin.LAST_SEEN_KEY.format(key))
    assert client.get("/changes/").status_code == 200
    first = signin.sessions_last_seen([key])[key]

    writes = []
    real_set = cache.set
    monkeypatch.setattr(cache, "set", lambda k, *a, **kw: (writes.append(k),
                                                          real_set(k, *a, **kw))[1])
    assert client.get("/changes/").status_code == 200
    assert signin.LAST_SEEN_KEY.format(key) not in writes
    assert signin.sessions_last_seen([key])[key] == first

    # Once the interval has passed, the next page notes the session again.
    monkeypatch.setattr(signin, "LAST_SEEN_EVERY", 0)
    assert client.get("/changes/").status_code == 200
    assert signin.LAST_SEEN_KEY.format(key) in writes


def test_idle_production_sessions_are_still_signed_out_on_pages(demo, settings):
    """The probe exemption is for probes: a page still applies the idle sign-out."""
    from identity import assurance

    client = Client()
    client.force_login(demo.cab)
    session = client.session
    session[assurance.SESSION_FLAGS] = {"required": True}
    session[assurance.SESSION_SEEN] = int(time.time()) - (
        settings.PORTAL_PRODUCTION_IDLE_MINUTES * 60 + 5)
    session.save()
    assert client.get("/healthz").status_code == 200
    response = client.get("/approvals/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]
