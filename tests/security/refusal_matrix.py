"""The machinery of the refusal matrix (tests/security/test_refusal_matrix.py): a row's
shape, walking the URL conf, asking a route as everyone and comparing the portal's state
before and after. The table of who may do what lives in the test module."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.apps import apps
from django.db import connection, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from audit.models import AuditEvent

ANONYMOUS = "anonymous"
CAST = ("engineer", "techlead", "qa", "cab", "security", "business", "oncall", "auditor",
        "admin", "outsider")
EVERYONE = frozenset(CAST)
NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Row:
    """What one route answers.

    ``methods``: those its view allows. ``may``: who passes its permission check
    (``EVERYONE``: any signed-in person; a dict method -> who, where a list is open to
    everyone and its POST is not; a list shows each person what they may see).
    ``public``: the same answer for everyone, signed in or not. ``anonymous``: the
    status (or ``"login"``, a redirect to sign-in). ``url``: a fixed path, else the
    route reversed with ``args`` (parameter -> a key of the matrix's objects). ``body``:
    what a POST sends
    (JSON for the API, a form for pages). ``ok``: the statuses of a GET by someone who
    may (a download, a redirect). ``refused``: the statuses of someone who may not.
    """

    methods: tuple[str, ...] = ("GET",)
    may: frozenset[str] | dict = EVERYONE
    anonymous: int | str = "login"
    public: bool = False
    args: dict = field(default_factory=dict)
    url: str | None = None
    body: dict = field(default_factory=dict)
    ok: tuple[int, ...] = (200,)
    refused: tuple[int, ...] = (403, 404)
    api: bool = False
    # Who holds the permission but, signed in without a second factor, is refused for
    # want of one (Production): 403 step_up_required from the API, the second-factor
    # check from a page.
    step_up: frozenset[str] = NOBODY

    def who_may(self, method: str) -> frozenset[str]:
        return self.may.get(method, NOBODY) if isinstance(self.may, dict) else self.may


def api(methods=("GET",), may=EVERYONE, **kwargs) -> Row:
    return Row(methods=methods, may=may, anonymous=kwargs.pop("anonymous", 401), api=True,
               **kwargs)


def page(methods=("GET",), may=EVERYONE, **kwargs) -> Row:
    return Row(methods=methods, may=may, **kwargs)


def public(methods=("GET",), status=200, **kwargs) -> Row:
    return Row(methods=methods, anonymous=status, ok=kwargs.pop("ok", (status,)),
               public=True, **kwargs)


# --- walking the URL conf ------------------------------------------------------------------


def walk(patterns=None, prefix: str = "", included: str | None = None):
    """(key, route, pattern, the include it came from) for every route; first-party
    routes are keyed by name (by their route when unnamed), those of an include of
    another project by the include's prefix."""
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            own = str(entry.pattern) == "api/v1/"
            yield from walk(entry.url_patterns, route,
                            included if own or included else str(entry.pattern))
        elif isinstance(entry, URLPattern):
            if included is not None:
                yield included, route, entry, included
            else:
                yield entry.name or route, route, entry, None


def view_methods(pattern: URLPattern) -> set[str] | None:
    """The methods a class-based view handles, or None for a function view (whose
    row says them)."""
    cls = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class",
                                                            None)
    if cls is None:
        return None
    return {m.upper() for m in cls.http_method_names
            if m not in ("options", "head") and hasattr(cls, m)}


def url_of(key: str, row: Row, objects: dict) -> str:
    if row.url is not None:
        return row.url.format(**objects)
    return reverse(key, kwargs={name: objects[value] for name, value in row.args.items()})


def body_of(row: Row, objects: dict) -> dict:
    return {name: objects.get(value, value) if isinstance(value, str) else value
            for name, value in row.body.items()}


def ask(client: Client, method: str, url: str, row: Row, body: dict):
    if method == "GET":
        return client.get(url)
    if row.api:
        return client.generic(method, url, json.dumps(body), content_type="application/json")
    return client.generic(method, url, urlencode(body),
                          content_type="application/x-www-form-urlencoded")


# Tables that move with every request, not with a decision; fields likewise.
VOLATILE_MODELS = {"auditevent", "auditcheckpoint", "signedcheckpoint", "signinday"}
VOLATILE_FIELDS = ("last_used", "last_seen", "heartbeat")
OWN_APPS = ("core", "catalog", "deployments", "configuration", "approvals", "integrations",
            "notifications", "reporting")


def state_query() -> str:
    """One query that digests every row of the portal's own tables (the audit trail and
    volatile fields apart): comparing two answers says whether anything moved."""
    parts = []
    for config in apps.get_app_configs():
        if config.label not in OWN_APPS:
            continue
        for model in config.get_models():
            if model._meta.model_name in VOLATILE_MODELS:
                continue
            columns = ", ".join(connection.ops.quote_name(f.column)
                                for f in model._meta.concrete_fields
                                if not any(v in f.attname for v in VOLATILE_FIELDS))
            table = connection.ops.quote_name(model._meta.db_table)
            pk = connection.ops.quote_name(model._meta.pk.column)
            parts.append(f"SELECT '{model._meta.label}', md5(coalesce(string_agg("
                         f"row({columns})::text, ',' ORDER BY {pk}), '')) FROM {table}")
    return " UNION ALL ".join(parts)


def state() -> dict:
    """What every row of the portal's own tables holds, as one digest a table."""
    with connection.cursor() as cursor:
        cursor.execute(state_query())
        return dict(cursor.fetchall())


def not_refusal_records(since: int) -> list[str]:
    """The actions of audit events written since ``since`` that are not the record of
    a refusal (refusals are audited, in a transaction of their own)."""
    return [action for action in AuditEvent.objects.filter(id__gt=since)
            .values_list("action", flat=True)
            if not action.endswith((".refused", ".denied", ".failed"))]


def to_sign_in(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith(
        reverse("login"))


def for_want_of_a_second_factor(response, row: Row) -> bool:
    if row.api:
        return response.status_code == 403 and response.json().get("code") in (
            "step_up_required", "mfa_required")
    return (response.status_code == 302 and response["Location"].startswith(
        (reverse("mfa_reauthenticate"), reverse("mfa_reauthenticate_webauthn"))))


def check_route(key: str, row: Row, objects: dict, people: dict) -> list[str]:
    """Ask the route as everyone, each method; what differs from its row."""
    url = url_of(key, row, objects)
    body = body_of(row, objects)
    wrong = []
    for method in row.methods:
        may = row.who_may(method)
        # Those who may not go first: their requests must leave the objects as they
        # were for those who may.
        order = [ANONYMOUS, *(n for n in CAST if n not in may), *(n for n in CAST if n in may)]
        if row.public:
            # The same answer for everyone: anonymous and one signed-in person say it.
            order = [ANONYMOUS, "engineer"]
        for who in order:
            changing = method != "GET"
            needs_factor = who in row.step_up
            refused = who != ANONYMOUS and who not in may and not row.public
            before = (state() if changing and (refused or needs_factor or who == ANONYMOUS)
                      else None)
            last_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
            client = people[who]
            cookies = copy.deepcopy(client.cookies)
            with transaction.atomic():
                response = ask(client, method, url, row, body)
                if before is None:
                    # Someone who may: what they did is undone for the next person (and
                    # their sign-in kept, should they have signed out).
                    transaction.set_rollback(True)
            client.cookies = cookies
            code = response.status_code
            answer = f"{method} {url} as {who}: {code}"
            if row.public:
                if code not in row.ok:
                    wrong.append(f"{answer}, expected {row.ok}")
            elif code >= 500:
                wrong.append(f"{answer} (a server error)")
            elif who == ANONYMOUS:
                if not (to_sign_in(response) if row.anonymous == "login"
                        else code == row.anonymous):
                    wrong.append(f"{answer}, expected {row.anonymous}")
            elif needs_factor:
                if not for_want_of_a_second_factor(response, row):
                    wrong.append(f"{answer}, expected a refusal for want of a second factor")
            elif not refused:
                if method == "GET" and code not in row.ok:
                    wrong.append(f"{answer}, expected {row.ok}")
                elif code == 401 or to_sign_in(response):
                    wrong.append(f"{answer}, refused someone who may")
            elif code not in row.refused:
                wrong.append(f"{answer}, expected a refusal {row.refused}")
            if before is not None:
                if state() != before:
                    wrong.append(f"{answer} changed the portal's state")
                written = not_refusal_records(last_event or 0)
                if written:
                    wrong.append(f"{answer} wrote audit events {written}")
    return wrong
