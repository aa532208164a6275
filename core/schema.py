"""The OpenAPI description: the error body, and the error answers every operation can
give, so the schema states them exactly. The apps describe their own parts: the
authentication schemes (``identity.schema``, ``integrations.schema``), the headers a
view reads (its ``schema_request_headers``), the notifications sent
(``notifications.schema``)."""

from __future__ import annotations

import copy
import inspect

from django.core.validators import RegexValidator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class ErrorBlockerSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer."""

    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_ready`.")
    detail = serializers.CharField(help_text="What went wrong, in plain words.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="400 only: the messages for each field at fault.")
    blockers = ErrorBlockerSerializer(many=True, required=False,
                                      help_text="409 `not_ready` only: what stands in the way.")


ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `code` is `invalid` (with `fields`) or `malformed`.",
    "401": "No credentials, or a token that is unknown, expired or revoked.",
    "403": "Refused: missing token scope (`insufficient_scope`), object permission "
           "(`not_permitted`, `not_eligible`), segregation of duties (`self_approval`), "
           "a second factor for Production (`mfa_required`, `step_up_required`), "
           "or CSRF (`csrf_failed`).",
    "404": "No such object, or one the caller may not see.",
    "409": "State conflict (`not_ready` with `blockers`, `already_decided`, "
           "`deployment_in_progress`, `release_exists`, `idempotency_in_flight`, ...), or "
           "`concurrent_update`: the request collided with another at the same moment, "
           "nothing of it was saved; send it again after Retry-After seconds.",
    "415": "The body is not JSON.",
    "422": "`idempotency_key_reused`: the Idempotency-Key was used with a different request.",
    "429": "Rate limited (`rate_limited`); wait for Retry-After seconds.",
    "500": "A fault of the portal (`server_error`); it is logged and the answer holds no "
           "detail of it.",
    "503": "PostgreSQL or Redis is unreachable (`database_unavailable`, `queue_unavailable`); "
           "retry after Retry-After seconds.",
}

# Headers every answer of a kind may carry (response headers).
RESPONSE_HEADERS = [
    OpenApiParameter(
        name="Retry-After", type=OpenApiTypes.INT, location=OpenApiParameter.HEADER,
        response=["409", "429", "503"], description="Seconds to wait before trying again."),
    OpenApiParameter(
        name="WWW-Authenticate", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
        response=["401"], description="`Bearer`: send `Authorization: Bearer <token>`."),
]
IDEMPOTENT_REPLAYED_HEADER = OpenApiParameter(
    name="Idempotent-Replayed", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER,
    enum=["true"], response=True,
    description="`true` when this is the stored answer to an earlier request with the same "
                "Idempotency-Key (success or error): nothing was done again.")

IDEMPOTENCY_HEADER = OpenApiParameter(
    name="Idempotency-Key", location=OpenApiParameter.HEADER, required=False,
    type={"type": "string", "minLength": 1, "maxLength": 255,
          "pattern": r"^[!-~]([ -~]{0,253}[!-~])?$"},
    description="Makes a retry safe: the same key with the same body replays the first "
                "answer (with `Idempotent-Replayed: true`); with a different body it is a 422; "
                "while the first is still running it is a 409. Keys are kept 24 hours, per "
                "user. 1 to 255 visible ASCII characters (spaces inside allowed), bare or "
                "quoted (\"key\").",
)


class PortalAutoSchema(AutoSchema):
    def _error_statuses(self) -> list[str]:
        # 409 on every method: any request may collide with another (concurrent_update).
        codes = ["400", "401", "403", "404", "409", "429"]
        if self.method == "POST":
            codes += ["415"]
            if self._is_idempotent():
                codes.append("422")
        return [*codes, "500", "503"]

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # A text field that may not be blank refuses "" and, trimmed, "  ": say so, so
        # that what the schema calls valid is what the portal accepts.
        if (direction == "request" and isinstance(field, serializers.CharField)
                and not field.allow_blank and schema.get("type") == "string"
                and "enum" not in schema and "format" not in schema):
            schema.setdefault("minLength", 1)
            if field.trim_whitespace and not any(isinstance(v, RegexValidator)
                                                 for v in field.validators):
                schema.setdefault("pattern", r"\S")
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request":
            merge_schema_rules(schema, getattr(serializer, "schema_rules", None))
        return schema

    def get_description(self) -> str:
        # The view's own docstring and the method's, not one inherited from a base class
        # (which describes the plumbing, not the operation).
        handler = getattr(self.view, self.method.lower(), None)
        own = self.view.__class__.__dict__.get("__doc__")
        return inspect.cleandoc(getattr(handler, "__doc__", None) or own or "")

    def _is_idempotent(self) -> bool:
        handler = getattr(self.view, self.method.lower(), None)
        return bool(getattr(handler, "idempotent", False))

    def get_override_parameters(self):
        params = list(super().get_override_parameters())
        if self.method == "POST" and self._is_idempotent():
            params += [IDEMPOTENCY_HEADER, IDEMPOTENT_REPLAYED_HEADER]
        # Headers the view reads besides the body (the hooks' signatures and ids).
        params += list(getattr(self.view, "schema_request_headers", ()))
        return [*params, *RESPONSE_HEADERS]

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_statuses():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code,
                                                              direction=direction)
                responses[code]["description"] = ERROR_DESCRIPTIONS[code]
        return responses


# Answer components whose serializers leave keys out when they have nothing to say; every
# other answer carries each of its fields on every response (null when empty).
SPARSE_ANSWERS = {"Error"}


def register_sparse_answer(name: str) -> None:
    """Mark the answer component ``name`` as one that leaves keys out (called from the
    owning app's ``AppConfig.ready``)."""
    SPARSE_ANSWERS.add(name)


def answers_carry_every_field(result, generator, request, public):
    """Postprocessing hook: in answers, every field a serializer writes is required.

    A serializer writes all of its fields, but drf-spectacular marks a model field with a
    default as optional even in an answer; clients generated from the schema would then
    treat ``status`` or ``created_at`` as possibly absent.
    """
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") or name in SPARSE_ANSWERS:
            continue
        properties = component.get("properties")
        if properties:
            component["required"] = sorted(properties)
    for component in result.get("components", {}).get("schemas", {}).values():
        for prop in component.get("properties", {}).values():
            # A field that may be blank is "blank, or a value of its format or pattern":
            # anyOf, since "" may satisfy both; its default ("") belongs to the field, not
            # to the branch it does not match.
            branches = prop.get("oneOf", [])
            if {} in branches:
                # "Anything, or null" (a nullable JSON field in OpenAPI 3.1): null would
                # match both branches of the oneOf; it is simply anything.
                del prop["oneOf"]
            elif {"type": "string", "maxLength": 0} in branches:
                prop["anyOf"] = prop.pop("oneOf")
                for branch in branches:
                    if "default" in branch:
                        prop["default"] = branch.pop("default")
    return result




# --- what the schema says of rules across fields, and of NUL ------------------------------

def merge_schema_rules(schema: dict, rules) -> None:
    """Add a serializer's ``schema_rules`` (JSON Schema keywords: ``anyOf``,
    ``dependentRequired``, ``properties`` constraints...) to its request schema, so rules
    its ``validate`` enforces across fields are in the contract too. ``rules`` may be a
    callable returning them, for rules that depend on settings."""
    if callable(rules):
        rules = rules()
    for keyword, value in (rules or {}).items():
        if keyword == "properties":
            for name, constraints in value.items():
                schema["properties"][name].update(constraints)
        else:
            schema[keyword] = value


# PostgreSQL text cannot hold NUL, so the API refuses it in any string of a request (400
# `malformed`): every request string says so, and so do the names and values of the
# members a request body may carry besides its own fields (which the API ignores).
NUL_FREE = r"^[^\x00]*$"
NUL_FREE_NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _json_without_nul(depth: int) -> dict:
    """Any JSON value nested at most ``depth`` arrays or objects deep whose strings and
    member names hold no NUL; spelt out, not recursive, which client generators take."""
    branches = [{"type": "null"}, {"type": "boolean"}, {"type": "number"},
                {"type": "string", "pattern": NUL_FREE}]
    if depth:
        inner = _json_without_nul(depth - 1)
        branches += [{"type": "array", "items": inner},
                     {"type": "object", "propertyNames": {"pattern": NUL_FREE},
                      "additionalProperties": inner}]
    return {"anyOf": branches}


# What a request may carry besides its fields (the API ignores it); deeper is rare.
_ANY_JSON = _json_without_nul(3)
_ANNOTATIONS = {"description", "title", "default", "readOnly", "writeOnly", "examples",
                "deprecated"}


def _nul_free(schema, components, seen) -> None:
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name not in seen:
            seen.add(name)
            _nul_free(components.get(name), components, seen)
        return
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword, ()):
            _nul_free(branch, components, seen)
    if not set(schema) - _ANNOTATIONS:
        schema.update(copy.deepcopy(_ANY_JSON))  # any JSON value (a free-form field)
        return
    types = schema.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if ("string" in types and not {"enum", "const", "format"} & set(schema)):
        pattern = schema.get("pattern")
        if pattern is None:
            schema["pattern"] = NUL_FREE
        elif pattern == r"\S":
            schema["pattern"] = NUL_FREE_NOT_BLANK
    if "object" in types:
        for prop in schema.get("properties", {}).values():
            _nul_free(prop, components, seen)
        schema.setdefault("propertyNames", {"pattern": NUL_FREE})
        extra = schema.get("additionalProperties", True)
        if extra is True or extra == {}:
            schema["additionalProperties"] = copy.deepcopy(_ANY_JSON)
        else:
            _nul_free(extra, components, seen)
    if "array" in types:
        _nul_free(schema.get("items"), components, seen)


def requests_without_nul(result, generator, request, public):
    """Postprocessing hook: every string of a request (parameters and bodies) says it
    holds no NUL."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    seen: set[str] = set()
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for param in operation.get("parameters", ()):
                _nul_free(param.get("schema"), components, seen)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                _nul_free(media.get("schema"), components, seen)
    return result
