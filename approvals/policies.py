"""The default approval policies and checklists (DESIGN.md section 4, SOP 3, 8.3, 13.2)."""

from approvals.models import (
    ApprovalPolicy,
    ChangeType,
    ChecklistKind,
    ChecklistTemplate,
    GateRole,
    PolicyGate,
)

STANDARD, HOTFIX, EMERGENCY = ChangeType.STANDARD, ChangeType.HOTFIX, ChangeType.EMERGENCY

# environment -> change type -> (gates, conditions)
DEFAULT_POLICIES: dict[str, dict[str, tuple[list[tuple[str, int]], dict]]] = {
    "development": {
        STANDARD: ([], {}),
        HOTFIX: ([], {}),
        EMERGENCY: ([], {"passes_freeze": True}),
    },
    "staging": {
        STANDARD: ([(GateRole.TECH_LEAD, 1), (GateRole.QA, 1)], {}),
        HOTFIX: ([(GateRole.TECH_LEAD, 1), (GateRole.QA, 1)], {}),
        EMERGENCY: ([(GateRole.EMERGENCY, 1)], {"passes_freeze": True}),
    },
    "production": {
        STANDARD: ([(GateRole.CAB, 1), (GateRole.SECURITY, 1), (GateRole.BUSINESS, 1)],
                   {"requires_window": True, "requires_promotion": True,
                    "requires_on_call": True, "requires_rollback_plan": True,
                    "execute_within_days": 7}),
        HOTFIX: ([(GateRole.TECH_LEAD, 1), (GateRole.CAB, 1)],
                 {"requires_on_call": True, "requires_rollback_plan": True,
                  "execute_within_days": 7}),
        EMERGENCY: ([(GateRole.EMERGENCY, 1)],
                    {"requires_rollback_plan": True, "passes_freeze": True,
                     "opens_review": True, "execute_within_days": 7}),
    },
}

# (text, automatic check or "") per list, SOP wording.
CODE_READINESS = [
    ("All code reviewed and approved", ""),
    ("All tests passing (unit, integration, e2e)", "ci_tests_green"),
    ("Security scans completed with no critical issues", "security_scan_clean"),
    ("Performance testing completed", ""),
    ("Documentation updated", ""),
    ("Release notes prepared", "release_notes_present"),
]
INFRA_READINESS = [
    ("Target environment available and healthy", "environment_healthy"),
    ("Database migrations tested", ""),
    ("Dependencies updated and verified", ""),
    ("Configuration files validated", ""),
    ("Monitoring and alerting configured", ""),
    ("Backup procedures verified", ""),
]
COMPLIANCE = [
    ("Change approval documented", "approvals_documented"),
    ("Security review completed", ""),
    ("Backup procedures executed", ""),
    ("Monitoring configured", ""),
    ("Rollback plan tested", ""),
    ("Stakeholder notification sent", ""),
    ("Post-deployment review conducted", ""),
]
ROLLBACK_VERIFICATION = [
    ("Application starts successfully", ""),
    ("Health checks pass", "environment_healthy"),
    ("Key functionality verified", ""),
    ("Performance metrics normal", ""),
    ("Error logs reviewed", ""),
    ("Stakeholders notified", ""),
]

DEFAULT_CHECKLISTS: dict[str, dict[str, list[tuple[str, list]]]] = {
    "staging": {
        STANDARD: [(ChecklistKind.APPROVAL, [("Automated test results green",
                                              "ci_tests_green")])],
        HOTFIX: [(ChecklistKind.APPROVAL, [("Automated test results green",
                                            "ci_tests_green")])],
    },
    "production": {
        STANDARD: [
            (ChecklistKind.CODE_READINESS, CODE_READINESS),
            (ChecklistKind.INFRA_READINESS, INFRA_READINESS),
            (ChecklistKind.APPROVAL, [("On-call engineer identified", "on_call_named"),
                                      ("Rollback plan documented", "rollback_plan_present")]),
            (ChecklistKind.COMPLIANCE, COMPLIANCE),
        ],
        HOTFIX: [
            (ChecklistKind.APPROVAL, [("On-call engineer identified", "on_call_named"),
                                      ("Rollback plan documented", "rollback_plan_present")]),
            (ChecklistKind.COMPLIANCE, COMPLIANCE),
        ],
        EMERGENCY: [
            (ChecklistKind.APPROVAL, [("Rollback plan documented", "rollback_plan_present")]),
            (ChecklistKind.COMPLIANCE, COMPLIANCE),
        ],
    },
}


def seed_default_policies(environment) -> None:
    """Create the default policies and checklist templates; rows already there are kept."""
    for change_type, (gates, conditions) in DEFAULT_POLICIES.get(environment.slug, {}).items():
        policy, created = ApprovalPolicy.objects.get_or_create(
            environment=environment, change_type=change_type, defaults=conditions
        )
        if created:
            PolicyGate.objects.bulk_create(
                PolicyGate(policy=policy, role=role, required=required)
                for role, required in gates
            )
    if ChecklistTemplate.objects.filter(environment=environment).exists():
        return
    rows = []
    for change_type, lists in DEFAULT_CHECKLISTS.get(environment.slug, {}).items():
        for kind, items in lists:
            for position, (text, check) in enumerate(items, start=1):
                rows.append(ChecklistTemplate(environment=environment, change_type=change_type,
                                              kind=kind, position=position, text=text,
                                              auto_check=check))
    for position, (text, check) in enumerate(ROLLBACK_VERIFICATION, start=1):
        for change_type in ChangeType.values:
            rows.append(ChecklistTemplate(environment=environment, change_type=change_type,
                                          kind=ChecklistKind.ROLLBACK_VERIFICATION,
                                          position=position, text=text, auto_check=check))
    ChecklistTemplate.objects.bulk_create(rows)
