"""`portalctl policy backtest FILE --months N` against a live portal: the counts per
environment and one line per change a document would have treated otherwise."""

from __future__ import annotations

import yaml

from approvals.models import PolicyVersion
from tests.factories import request_change


def test_portalctl_backtests_a_file_and_lists_the_changes_it_would_affect(
        portal_live, token, portalctl, tmp_path):
    cast = portal_live
    change = request_change(cast.engineer, "staging")
    data = yaml.safe_load(PolicyVersion.objects.get(status="active").document)
    data.pop("examples", None)
    data["rules"] = [{"name": "staging-security", "when": 'change.environment == "staging"',
                      "gates": {"security": 1}}]
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(yaml.safe_dump(data, sort_keys=False))

    auditor = token(cast.auditor, "read")
    run = portalctl(auditor, "policy", "backtest", str(proposed), "--months", "6")
    assert run.code == 0, run.err
    assert f"CR-{change.pk} staging storefront: gates qa 1, tech_lead 1 -> qa 1, " \
           "security 1, tech_lead 1" in run.out
    assert "staging: 1 changes, 1 differ (1 other gates" in run.err

    as_json = portalctl(auditor, "--json", "policy", "backtest", str(proposed))
    assert as_json.code == 0, as_json.err
    assert [d["change"] for d in as_json.json()["differences"]] == [change.pk]

    # Someone who neither audits, proposes nor decides policy versions: refused, exit 2.
    refused = portalctl(token(cast.engineer, "read"), "policy", "backtest", str(proposed))
    assert refused.code == 2
    assert "not_permitted" in refused.err
    # A bound the portal states: refused before anything is sent.
    assert portalctl(auditor, "policy", "backtest", str(proposed), "--months", "30").code == 2
