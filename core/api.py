"""API plumbing shared by every app: error bodies with a stable code, token scopes,
rate limits, pagination, and the base classes every API view builds on.

Every error the API answers has the same body, ``{code, detail}``, with
``fields`` (400) or ``blockers`` (409) added when they say more.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging

import django_filters
from django import forms
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, pagination, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import DomainError, Refused
from core.jsonbody import JSONParser, has_nul

logger = logging.getLogger(__name__)

DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "malformed",
    exceptions.Throttled: "rate_limited",
}

# What a token needs for each kind of request (DESIGN.md section 7). Reads need
# "read"; each view names the scope its unsafe methods need.
READ = "read"
REQUEST = "request"
APPROVE = "approve"
DEPLOY = "deploy"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def error_body(code: str, detail: str, **extra) -> dict:
    body = {"code": code, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _flatten_errors(value, prefix: str = "") -> list[str]:
    """Nested serializer errors as plain sentences, so ``fields`` is always {name: [text]}."""
    if isinstance(value, dict):
        out = []
        for key, inner in value.items():
            out.extend(_flatten_errors(inner, f"{prefix}{key}: "))
        return out
    if isinstance(value, list | tuple):
        out = []
        for inner in value:
            out.extend(_flatten_errors(inner, prefix))
        return out
    return [f"{prefix}{value}"]


def field_errors(detail) -> dict[str, list[str]]:
    if not isinstance(detail, dict):
        return {"non_field_errors": _flatten_errors(detail)}
    return {str(name): _flatten_errors(errors) for name, errors in detail.items()}


# A 400 whose every field error is a reference to an object that does not exist (an id
# or slug that names nothing): well-formed input, so no schema can refuse it beforehand;
# clients (and schema-driven tests) tell it from malformed input by this code.
NO_SUCH_OBJECT = "no_such_object"
MISSING_OBJECT_CODES = frozenset({"does_not_exist"})


def _leaf_codes(codes) -> list:
    if isinstance(codes, dict):
        return [c for inner in codes.values() for c in _leaf_codes(inner)]
    if isinstance(codes, list | tuple):
        return [c for inner in codes for c in _leaf_codes(inner)]
    return [codes]


def _names_missing_objects(exc: exceptions.ValidationError) -> bool:
    codes = _leaf_codes(exc.get_codes())
    return bool(codes) and all(code in MISSING_OBJECT_CODES for code in codes)


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        fields = field_errors(exc.fields) if exc.fields else None
        return Response(
            error_body(exc.code, exc.detail, blockers=exc.blockers, fields=fields),
            status=exc.status,
        )
    if isinstance(exc, DataError):
        logger.warning("value the database refused: %s", exc)
        # A value PostgreSQL cannot hold that validation let through: the client's fault.
        return Response(error_body("invalid", "The request holds a value that cannot be stored."),
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.ValidationError):
        if _names_missing_objects(exc):
            return Response(
                error_body(NO_SUCH_OBJECT, "The request names an object that does not exist.",
                           fields=field_errors(exc.detail)),
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(
            error_body("invalid", "The request has invalid fields.",
                       fields=field_errors(exc.detail)),
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if code == "forbidden" and str(detail).startswith("CSRF Failed"):
            code = "csrf_failed"
        response.data = error_body(code, str(detail))
    return response


@csrf_exempt  # nothing is changed here, and an unknown POST must also get a JSON 404
def not_found(request, *args, **kwargs):
    """Unknown paths under /api/ answer in the API's own error shape, not an HTML page."""
    return JsonResponse(error_body("not_found", "There is no such API endpoint."), status=404)


def query_values(request) -> dict[str, str]:
    """The query string for a query serializer: a parameter given empty (``?at=``) is a
    value of the wrong shape for a date or a number, as the schema's types say, not a
    parameter left out (DRF reads "" in form data as absent)."""
    return request.query_params.dict()


class CursorPagination(pagination.CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"

    def get_page_size(self, request):
        # A page size out of range is refused rather than silently replaced, as the
        # schema states (1 to max_page_size).
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError({self.page_size_query_param: [
                f"A whole number from 1 to {self.max_page_size}."]})
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        # The position is compared with integer ids: anything else is a forged cursor.
        if cursor is not None and cursor.position is not None:
            try:
                int(cursor.position)
            except (TypeError, ValueError):
                raise exceptions.NotFound(self.invalid_cursor_message) from None
        return cursor


# The years a BoundedDateTimeField takes, as the schema states them: the year as written.
BOUNDED_YEAR_PATTERN = r"^(19[7-9][0-9]|2[01][0-9][0-9]|2200)-"


@extend_schema_field({"type": "string", "format": "date-time",
                      "pattern": BOUNDED_YEAR_PATTERN})
class BoundedDateTimeField(serializers.DateTimeField):
    """A date-time within years the calendar arithmetic behind it can handle."""

    default_error_messages = {"range": "Choose a date between the years 1970 and 2200."}

    def to_internal_value(self, value):
        result = super().to_internal_value(value)
        # The year as written (what the schema's pattern says), else the parsed one.
        written = value[:4] if isinstance(value, str) and value[:4].isdigit() else None
        if not 1970 <= (int(written) if written else result.year) <= 2200:
            self.fail("range")
        return result


# --- token scopes -------------------------------------------------------------------


class ScopedCredential(abc.ABC):
    """A credential whose ``scopes`` limit what it may do, even when its user may do
    more: the API token (``identity.models.ApiToken``, registered as one in
    ``IdentityConfig.ready``)."""

    scopes: list[str]


def token_scopes(request) -> set[str] | None:
    """The scopes the request's token carries; None for a person signed in to the browser."""
    token = getattr(request, "auth", None)
    if isinstance(token, ScopedCredential):
        return set(token.scopes or [])
    return None


class ViewBoundCredential:
    """A credential that opens one view only: the one whose ``hook_name`` is its ``hook``
    (a hook's own secret, see integrations.hooks)."""

    hook: str = ""


class HasTokenScope(permissions.BasePermission):
    """A token may do only what its scopes allow, even when its user may do more.

    Session (browser) requests are a person acting directly and are limited by
    their object permissions alone. Hook credentials (a per-hook secret) open
    only the hook they were made for.
    """

    def has_permission(self, request, view) -> bool:
        auth = getattr(request, "auth", None)
        if isinstance(auth, ViewBoundCredential):
            if getattr(view, "hook_name", None) != auth.hook:
                raise Refused(f"the {auth.hook} hook secret opens only that hook",
                              code="insufficient_scope")
            return True
        held = token_scopes(request)
        if held is None:
            return True
        needed = view.required_scopes(request)
        missing = sorted(needed - held)
        if missing:
            raise Refused(
                f"this token lacks the {', '.join(missing)} scope"
                f"{'s' if len(missing) > 1 else ''} needed here",
                code="insufficient_scope",
            )
        return True


# --- input hygiene ---------------------------------------------------------------------

MAX_ID = 2**63 - 1  # PostgreSQL bigint


class _PresentMeansGiven:
    """A filter field for which ``?name=`` (present, empty) is not "no filter" but a value
    of the wrong shape: the schema gives the parameter a type "" does not have."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError(self.empty_message, code="invalid")
        return super().clean(value)


class _UtcIsoDateTimeField(_PresentMeansGiven, django_filters.fields.IsoDateTimeField):
    empty_message = "Enter a date and time, or leave the parameter out."

    def to_python(self, value):
        value = super().to_python(value)
        if value is not None:
            try:
                # PostgreSQL refuses some offsets Python accepts (+22:27); UTC it is.
                value = value.astimezone(dt.UTC)
            except (OverflowError, ValueError):
                raise forms.ValidationError("Enter a date and time in range.") from None
        return value


class DateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time filter whose value reaches the database in UTC."""

    field_class = _UtcIsoDateTimeField


class ChoiceFilter(django_filters.ChoiceFilter):
    """A choice filter for which ``?status=`` (present, empty) is not one of the choices
    the schema's enum lists, so it is refused rather than read as "no filter"."""

    field_class = type("ChoiceField", (_PresentMeansGiven, django_filters.fields.ChoiceField),
                       {"empty_message": "Choose one of the values, or leave the parameter "
                                         "out."})


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ID})
class IdFilter(django_filters.NumberFilter):
    """An id in a list's query string: a whole number a bigint holds. The schema says so,
    so a client (or a schema-driven test) that sends any integer in range is answered,
    and anything else gets 400 naming the field."""

    field_class = type("IdField", (_PresentMeansGiven, forms.IntegerField),
                       {"empty_message": "Enter a whole number, or leave the parameter out."})

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


# --- base views -----------------------------------------------------------------------


class ApiMixin:
    """What every API v1 view shares: authentication, token scopes, errors, schema.

    ``write_scopes`` names the token scopes an unsafe request needs; a view that
    takes no unsafe requests leaves it empty, and an unsafe request to it then
    needs a scope no token has (it fails closed).
    """

    permission_classes = [permissions.IsAuthenticated, HasTokenScope]
    parser_classes = [JSONParser]
    write_scopes: frozenset[str] = frozenset()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if any(isinstance(v, int) and v > MAX_ID for v in kwargs.values()):
            raise exceptions.NotFound()
        if any(has_nul(key) or has_nul(values)
               for key, values in request.query_params.lists()):
            raise exceptions.ParseError("Query parameters may not contain NUL characters.")
        if request.method not in SAFE_METHODS:
            # The body is read here, once the caller is known and allowed: a body that
            # is not acceptable JSON is the same 400 on every endpoint, whatever the
            # view would have looked up first.
            request.data  # noqa: B018

    def required_scopes(self, request) -> set[str]:
        if request.method in SAFE_METHODS:
            return {READ}
        return set(self.write_scopes) or {"none"}


class ApiView(ApiMixin, APIView):
    pass
