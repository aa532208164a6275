"""The default approval policies of DESIGN.md section 4, seeded per environment."""

from approvals.models import ApprovalPolicy, ChangeType, GateRole, PolicyGate

DEFAULT_POLICIES: dict[str, dict[str, list[tuple[str, int]]]] = {
    "development": {
        ChangeType.STANDARD: [],
        ChangeType.HOTFIX: [],
        ChangeType.EMERGENCY: [],
    },
    "staging": {
        ChangeType.STANDARD: [(GateRole.TECH_LEAD, 1), (GateRole.QA, 1)],
        ChangeType.HOTFIX: [(GateRole.TECH_LEAD, 1), (GateRole.QA, 1)],
        ChangeType.EMERGENCY: [(GateRole.EMERGENCY, 1)],
    },
    "production": {
        ChangeType.STANDARD: [(GateRole.CAB, 1), (GateRole.SECURITY, 1), (GateRole.BUSINESS, 1)],
        ChangeType.HOTFIX: [(GateRole.TECH_LEAD, 1), (GateRole.CAB, 1)],
        ChangeType.EMERGENCY: [(GateRole.EMERGENCY, 1)],
    },
}


def seed_default_policies(environment) -> None:
    """Create the default policy rows for an environment; existing rows are left as edited."""
    for change_type, gates in DEFAULT_POLICIES.get(environment.slug, {}).items():
        policy, created = ApprovalPolicy.objects.get_or_create(
            environment=environment, change_type=change_type
        )
        if created:
            PolicyGate.objects.bulk_create(
                PolicyGate(policy=policy, role=role, required=required)
                for role, required in gates
            )
