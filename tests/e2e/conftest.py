"""Browser tests: headless Debian Chromium driven by Playwright against a live server.

Every test here is marked ``e2e`` and runs against pytest-django's ``live_server``
with a transactional database, because the server thread cannot see data inside
the test's own transaction.

Set ``PORTAL_SCREENSHOTS=1`` to also save full-page screenshots of the pages the
tests visit under ``test-artifacts/screens/`` (gitignored); they are for looking
at the pages, not for asserting anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.conftest import PASSWORD, Cast

# Playwright's sync API runs an asyncio event loop in this thread, and Django
# refuses ORM calls from a thread with a running loop (SynchronousOnlyOperation).
# The ORM calls the tests make here are ordinary synchronous ones, so the guard
# only gets in the way.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

# The browser scripts/ensure-browser found or installed (make test sets it).
CHROMIUM = os.environ.get("PORTAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENS_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "screens"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# The session's one Chromium (``browser``) is in tests/conftest.py, shared with the
# identity tests: Playwright's sync API allows one instance per thread.


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) per test, with a desktop-sized viewport."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-GB")
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def demo_live(transactional_db, live_server):
    """The demo cast (see tests/conftest.py ``demo``), committed so the live server sees it."""
    call_command("seed_demo", password=PASSWORD, verbosity=0)
    return Cast()


@pytest.fixture
def deploy_root(settings, tmp_path):
    """Keep the local executor's releases and symlinks of each test apart."""
    settings.PORTAL_DEPLOY_ROOT = tmp_path / "deploy"
    return settings.PORTAL_DEPLOY_ROOT


@pytest.fixture
def login(page, live_server):
    """``login("techlead")`` signs in through the login form, as a person does, and
    someone enrolled in TOTP (the demo's Production people) then confirms with the code
    of their authenticator app on allauth's check page (a fresh second factor, SOP 10.2).
    ``second_factor=False`` signs in with the password only."""

    def sign_in(username: str, password: str = PASSWORD, *, second_factor: bool = True) -> None:
        from allauth.mfa.models import Authenticator

        from tests.conftest import totp_code

        page.goto(f"{live_server.url}/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/login/" not in url)
        if second_factor and Authenticator.objects.filter(
                user__username=username, type=Authenticator.Type.TOTP).exists():
            for step in (0, 1, -1):  # a code is accepted once
                page.goto(f"{live_server.url}/accounts/2fa/reauthenticate/?next=/")
                page.locator("input[name=code]").fill(totp_code(step=step))
                page.locator("input[name=code]").press("Enter")
                page.wait_for_load_state()
                if "/reauthenticate/" not in page.url:
                    return
            raise AssertionError(f"the second-factor check refused {username}")

    return sign_in


@pytest.fixture
def screenshot(page):
    """``screenshot("name")`` saves a full-page PNG when PORTAL_SCREENSHOTS=1, else nothing."""

    def take(name: str) -> None:
        if os.environ.get("PORTAL_SCREENSHOTS") != "1":
            return
        SCREENS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENS_DIR / f"{name}.png"), full_page=True)

    return take


@pytest.fixture
def virtual_passkey(page):
    """A platform authenticator in the browser (Chrome DevTools' WebAuthn domain), so
    passkey enrolment and assertions run for real, with no person to touch a key."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    return cdp
