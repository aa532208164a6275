"""Domain errors: plain exceptions raised by services, mapped to HTTP in one place.

Each carries a stable ``code`` that clients can branch on and a ``detail``
in plain words for people.
"""

from __future__ import annotations


class DomainError(Exception):
    status = 409
    code = "conflict"

    def __init__(self, detail: str, *, code: str | None = None, blockers: list | None = None,
                 fields: dict | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.blockers = blockers
        self.fields = fields


class Invalid(DomainError):
    """Input that cannot be acted on; ``fields`` names the field at fault."""

    status = 400
    code = "invalid"


class Refused(DomainError):
    """The actor may not do this (permission or segregation of duties)."""

    status = 403
    code = "forbidden"


class SelfApproval(Refused):
    code = "self_approval"


class NotEligible(Refused):
    code = "not_eligible"


class SecondFactorRequired(Refused):
    """The person must enrol a second factor before doing this (SOP 10.2)."""

    code = "mfa_required"


class StepUpRequired(Refused):
    """The person has a second factor but has not used it recently enough for this."""

    code = "step_up_required"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_state"


class AlreadyDecided(Conflict):
    code = "already_decided"


class NotReady(Conflict):
    code = "not_ready"


class DeploymentInProgress(Conflict):
    code = "deployment_in_progress"


class ChangedSinceViewed(Conflict):
    """A decision was made on a version of the change that is no longer current."""

    code = "changed_since_viewed"
