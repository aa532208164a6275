"""The post-implementation review of an emergency change, closed by CAB."""

from __future__ import annotations

from django.db import transaction

from approvals import eligibility
from approvals.models import PostImplementationReview
from approvals.selectors import person_facts
from approvals.services.guards import _refusal_audited, _refuse
from audit.trail import audit_record
from core import clock
from core.errors import AlreadyDecided, Invalid, Refused
from identity import assurance


@assurance.refusals_audited
def review_close(*, actor, review: PostImplementationReview, findings: str
                 ) -> PostImplementationReview:
    """CAB closes the post-implementation review of an emergency change: never its
    requester, nor an author or merger of its release, nor a delegate standing for one
    (``eligibility.review_verdict``). A refusal is audited (``review.close.refused``)."""
    if not findings.strip():
        raise Invalid("say what the review found", fields={"findings": ["Record the findings."]})
    try:
        with transaction.atomic():
            review = (PostImplementationReview.objects.select_for_update(of=("self",))
                      .select_related("change__environment", "change__release",
                                      "change__requested_by").get(pk=review.pk))
            if review.closed_at:
                raise AlreadyDecided("this review is already closed")
            _refuse(eligibility.review_verdict(person=person_facts(actor),
                                               change=review.change, at=clock.now()))
            factor = assurance.require_fresh_second_factor(
                actor=actor, doing="close a post-implementation review",
                environment=review.change.environment.slug)
            review.closed_at, review.closed_by, review.findings = (clock.now(), actor,
                                                                   findings)
            review.save(update_fields=["closed_at", "closed_by", "findings"])
            audit_record(actor=actor, action="review.closed", obj=review.change,
                         environment=review.change.environment.slug,
                         after={"findings": findings, **factor})
        return review
    except Refused as exc:
        _refusal_audited("review.close.refused", actor, review.change, exc)
        raise
