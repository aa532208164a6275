"""The admin pages of the API tokens and the audit trail moved with their models (from
the core app to identity and audit); an old link leads to the new page."""

from __future__ import annotations


def test_old_admin_links_of_the_moved_models_lead_to_their_new_pages(client, db):
    answer = client.get("/admin/core/apitoken/?q=ci")
    assert answer.status_code == 302
    assert answer["Location"] == "/admin/identity/apitoken/?q=ci"
    answer = client.get("/admin/core/auditevent/5/change/")
    assert answer.status_code == 302
    assert answer["Location"] == "/admin/audit/auditevent/5/change/"
