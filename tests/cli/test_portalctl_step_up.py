"""portalctl answers the portal's step-up on a terminal: it asks for the code, sends it,
and tries the refused request once more (the end-to-end run with
PORTAL_STEP_UP_CODE is in test_portalctl.py)."""

from __future__ import annotations

import pytest

from portalctl import cli
from portalctl.client import Answer, Refused


class FakePortal:
    """Refuses the first POST with step_up_required, as the portal does for a token
    whose owner has not checked their factor lately; accepts the one after a step-up."""

    def __init__(self, *, refusals: int = 1) -> None:
        self.refusals = refusals
        self.calls: list[tuple] = []

    def post(self, path, body, *, key):
        self.calls.append(("post", path, key))
        if self.refusals:
            self.refusals -= 1
            raise Refused(403, "step_up_required", "confirm it is you", {})
        return Answer(200, {"status": "pending_approval"}, False)

    def step_up(self, code):
        self.calls.append(("step_up", code))
        return {"kind": "totp", "fresh_until": "2026-12-07T12:10:00Z"}


class Terminal:
    def isatty(self) -> bool:
        return True


def context(portal, code: str = "") -> cli.Context:
    obj = cli.Context("http://portal", "token", False, None, 0, 5.0, code)
    obj._portal = portal
    return obj


def test_on_a_terminal_portalctl_asks_for_the_code_and_retries_once(monkeypatch):
    portal = FakePortal()
    asked = []
    monkeypatch.setattr(cli.sys, "stdin", Terminal())
    monkeypatch.setattr(cli.click, "prompt",
                        lambda text, **kw: asked.append((text, kw)) or " 123456 ")

    answer = context(portal).post("/changes/1/approve", {"gate": "cab"}, key="k")

    assert answer.status == 200
    assert asked and asked[0][1]["hide_input"] is True
    assert portal.calls == [("post", "/changes/1/approve", "k"), ("step_up", "123456"),
                            ("post", "/changes/1/approve", "k")]


def test_without_a_terminal_or_a_code_the_refusal_stands(monkeypatch, capsys):
    portal = FakePortal()
    monkeypatch.setattr(cli.click, "prompt", lambda *a, **kw: pytest.fail("asked"))

    with pytest.raises(Refused) as refused:
        context(portal).post("/changes/1/approve", {"gate": "cab"}, key="k")

    assert refused.value.code == "step_up_required"
    assert [c[0] for c in portal.calls] == ["post"]
    assert "PORTAL_STEP_UP_CODE" in capsys.readouterr().err


def test_it_steps_up_once_and_does_not_loop(monkeypatch):
    portal = FakePortal(refusals=2)

    with pytest.raises(Refused):
        context(portal, code="654321").post("/changes/1/deploy", None, key="k")

    assert [c[0] for c in portal.calls] == ["post", "step_up", "post"]


def test_other_refusals_are_not_answered_with_a_code():
    class NotEligible(FakePortal):
        def post(self, path, body, *, key):
            self.calls.append(("post", path, key))
            raise Refused(403, "not_eligible", "no", {})

    portal = NotEligible()
    with pytest.raises(Refused):
        context(portal, code="654321").post("/changes/1/approve", {}, key="k")
    assert [c[0] for c in portal.calls] == ["post"]
