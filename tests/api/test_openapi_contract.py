"""The OpenAPI document is an exact contract: valid OpenAPI, every status an operation can
answer with its body, the headers it reads and answers, and its pagination."""

from __future__ import annotations

import json

import pytest
from drf_spectacular.generators import SchemaGenerator
from openapi_spec_validator import validate

ERROR_REF = "#/components/schemas/Error"
ALWAYS = {"400", "401", "403", "404", "429", "500", "503"}
HOOK_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "X-Hub-Signature-256",
                "X-GitHub-Delivery", "X-Portal-Signature"}


@pytest.fixture(scope="module")
def schema():
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(json.dumps(generated, default=str))


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def test_the_schema_is_valid_openapi(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_every_operation_documents_every_error_status_with_the_error_body(schema):
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        expected = set(ALWAYS)
        if method == "post":
            expected |= {"409", "415"}
        assert expected <= set(responses), (method, path, sorted(responses))
        for status in expected:
            body = responses[status]["content"]["application/json"]["schema"]
            assert body == {"$ref": ERROR_REF}, (method, path, status)
        assert "Retry-After" in responses["429"]["headers"]
        assert "Retry-After" in responses["503"]["headers"]
        assert "WWW-Authenticate" in responses["401"]["headers"]


def test_error_body_names_its_code_and_optional_details(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "detail"}
    assert {"fields", "blockers"} <= set(error["properties"])


def test_every_post_reads_idempotency_key_and_says_when_it_replayed(schema):
    for path, method, operation in operations(schema):
        if method != "post":
            continue
        headers = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
        key = headers["Idempotency-Key"]["schema"]
        assert key["maxLength"] == 255 and key["minLength"] == 1, path
        assert "422" in operation["responses"], path
        for status, response in operation["responses"].items():
            assert "Idempotent-Replayed" in response.get("headers", {}), (path, status)


def test_hooks_document_the_signature_and_delivery_headers_they_read(schema):
    hooks = [(p, o) for p, m, o in operations(schema) if p.startswith("/api/v1/hooks/")]
    assert len(hooks) == 3
    for path, operation in hooks:
        read = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert HOOK_HEADERS <= read, (path, read)
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = answer["$ref"].split("/")[-1]
        assert "HookDuplicate" in name + json.dumps(schema["components"]["schemas"][name]), path


def test_lists_document_their_cursor_pagination(schema):
    paginated = 0
    for path, _method, operation in operations(schema):
        ok = operation["responses"].get("200", {}).get("content", {}).get("application/json")
        ref = (ok or {}).get("schema", {}).get("$ref", "")
        if not ref.split("/")[-1].startswith("Paginated"):
            continue
        paginated += 1
        params = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
        assert params["cursor"]["schema"]["type"] == "string", path
        assert params["page_size"]["schema"] == {"type": "integer", "minimum": 1,
                                                 "maximum": 500}, path
        page = schema["components"]["schemas"][ref.split("/")[-1]]
        assert set(page["required"]) == {"next", "previous", "results"}, path
    assert paginated >= 4


def test_answers_state_every_field_they_carry(schema):
    change = schema["components"]["schemas"]["ChangeOut"]
    assert set(change["required"]) == set(change["properties"])
    assert "status" in schema["components"]["schemas"]["Deployment"]["required"]


def test_operations_are_named_by_resource_and_unique(schema):
    ids = [operation["operationId"] for _p, _m, operation in operations(schema)]
    assert len(ids) == len(set(ids))
    assert "changes_approve_create" in ids and "deployments_log_list" in ids
    assert not [i for i in ids if i.startswith("v1_")]


@pytest.mark.parametrize("size", ["0", "501", "-1", "ten", "1.5"])
def test_a_page_size_out_of_range_is_refused(demo, api, size):
    answer = api(demo.engineer).get(f"/api/v1/changes/?page_size={size}")
    assert answer.status_code == 400
    assert answer.json()["fields"]["page_size"] == ["A whole number from 1 to 500."]


def test_a_page_size_in_range_is_used(demo, api):
    answer = api(demo.engineer).get("/api/v1/releases/?page_size=1")
    assert answer.status_code == 200
    assert len(answer.json()["results"]) == 1 and answer.json()["next"]


@pytest.mark.parametrize("key", ["clé-1", " k", "k\t", "x" * 256])
def test_an_idempotency_key_outside_the_schema_is_refused_and_nothing_created(demo, api, key):
    from deployments.models import Release

    before = Release.objects.count()
    answer = api(demo.ci).post("/api/v1/releases/", {"application": "storefront",
                                                     "version": "9.9.9"},
                               format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert answer.status_code == 400
    assert "Idempotency-Key" in answer.json()["fields"]
    assert Release.objects.count() == before


def test_an_empty_signature_header_is_checked_not_skipped(demo, api, settings):
    from deployments.models import Release

    settings.PORTAL_HOOK_SECRET_CI = "s3cret-for-tests"
    release = Release.objects.get(version="1.3.0", application__slug="storefront")
    before = dict(release.checks)
    answer = api(demo.ci).post("/api/v1/hooks/ci", {"release": release.pk, "check": "tests",
                                                    "status": "failed"},
                               format="json", HTTP_X_PORTAL_SIGNATURE="")
    assert answer.status_code == 401
    release.refresh_from_db()
    assert release.checks == before


def test_the_notification_webhook_is_described_as_the_portal_sends_it(schema):
    import jsonschema

    from notifications.models import Notification
    from notifications.services import webhook_body

    assert schema["openapi"] == "3.1.0"
    webhook = schema["webhooks"]["notification"]["post"]
    body_schema = webhook["requestBody"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][body_schema["$ref"].split("/")[-1]]
    headers = {p["name"]: p for p in webhook["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["required"] is True

    sent = webhook_body(Notification(pk=7, kind="failed", subject="CR-3 failed",
                                   body="Deployment 9 failed.", change_id=3,
                                   deployment_id=9, environment="staging",
                                   fields={"application": "storefront"}))
    assert set(sent) == set(component["properties"]) == set(component["required"])
    # The component's $refs point into the document: validate with its components at hand.
    jsonschema.validate(sent, {**component, "components": schema["components"]})
    kind = component["properties"]["kind"]
    if "$ref" in kind:
        kind = schema["components"]["schemas"][kind["$ref"].split("/")[-1]]
    kinds = set(kind["enum"])
    assert kinds == {value for value, _label in Notification._meta.get_field("kind").choices}
