"""Subscriptions: who asked to hear about which application and environment, and on
which channel; who may subscribe, and who still may hear."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, URLValidator
from django.db import transaction
from django.db.models import Q

from audit.trail import audit_record
from catalog.models import Application, Environment
from catalog.permissions import environment_permissions
from core import outbound
from core.errors import Invalid, NotFound, Refused
from notifications.models import Channel, Kind, Subscription, redact_target


def subscriptions_for(kind: str, application_id: int, environment_id: int) -> list[Subscription]:
    """Subscriptions that want this kind, whose holder may still see the environment.

    Permissions are checked again at each event, not only when subscribing: someone
    who left the team stops hearing about its changes.
    """
    wanted = [s for s in Subscription.objects.filter(
        Q(application_id=application_id) | Q(application__isnull=True),
        Q(environment_id=environment_id) | Q(environment__isnull=True),
        active=True).select_related("user", "created_by")
        if not s.kinds or kind in s.kinds]
    held: dict[int, set[str]] = {}

    def may(user, needed: set[str] | None) -> bool:
        if user is None or not user.is_active:
            return False
        if user.is_staff or user.is_superuser:
            return True
        if user.pk not in held:
            held[user.pk] = environment_permissions(user).get(environment_id, set())
        return bool(held[user.pk] & needed) if needed else bool(held[user.pk])

    return [s for s in wanted
            if (may(s.user, None) if s.user_id else may(s.created_by, {"deploy", "rollback"}))]


def subscription_recipient(subscription: Subscription) -> tuple[str, str]:
    if subscription.channel == Channel.EMAIL:
        address = subscription.target or (subscription.user.email if subscription.user else "")
        name = subscription.user.get_username() if subscription.user else address
        return address, name
    return subscription.target, redact_target(subscription.target)


def _validate_target(channel: str, target: str, user) -> None:
    if channel == Channel.EMAIL:
        if not target and not (user is not None and user.email):
            raise Invalid("an email subscription needs an address",
                          fields={"target": ["Give an email address."]})
        if target:
            try:
                EmailValidator()(target)
            except ValidationError:
                raise Invalid("not an email address",
                              fields={"target": ["Give a valid email address."]}) from None
    else:
        try:
            URLValidator(schemes=["http", "https"])(target)
        except ValidationError:
            raise Invalid("a webhook needs an http(s) URL",
                          fields={"target": ["Give the webhook's http or https URL."]}) from None
        # Refused when saved, not only when sent (where the resolved address is checked).
        try:
            outbound.check_url(target, resolve=False)
        except outbound.DestinationRefused as exc:
            raise Invalid("the webhook's address may not be called", code="destination_refused",
                          fields={"target": [f"The portal does not call this address: {exc}"]}
                          ) from None


def subscription_create(*, actor, channel: str, target: str = "",
                        application: Application | None = None,
                        environment: Environment | None = None, kinds: list[str] | None = None,
                        user=None) -> Subscription:
    if channel not in Channel.values:
        raise Invalid("unknown channel", fields={"channel": [
            f"Choose one of {', '.join(Channel.values)}."]})
    kinds = list(kinds or [])
    unknown = sorted(set(kinds) - set(Kind.values))
    if unknown:
        raise Invalid(f"unknown kinds: {', '.join(unknown)}",
                      fields={"kinds": [f"Choose among {', '.join(Kind.values)}."]})
    target = (target or "").strip()
    _validate_target(channel, target, user)
    _authorise_subscription(actor, environment, personal=(
        channel == Channel.EMAIL and not target and user is not None and user.pk == actor.pk))
    with transaction.atomic():
        subscription = Subscription.objects.create(
            channel=channel, target=target, application=application, environment=environment,
            kinds=kinds, user=user, created_by=actor)
        audit_record(actor=actor, action="subscription.created", obj=subscription,
                     environment=environment.slug if environment else "",
                     after={"channel": channel, "target": redact_target(target),
                            "application": application.slug if application else None,
                            "environment": environment.slug if environment else None,
                            "kinds": kinds})
    return subscription


def _authorise_subscription(actor, environment, *, personal: bool) -> None:
    """Who may subscribe, so that nobody hears about changes they may not see.

    A person subscribes themselves to an environment they hold a permission on; a
    team channel (a webhook, a list's address) needs `deploy` or `rollback` there.
    Subscriptions to every environment, and on anyone else's behalf, are for
    administrators.
    """
    if actor.is_staff or actor.is_superuser:
        return
    if environment is None:
        raise Refused("choose an environment: subscriptions to all of them are for "
                      "administrators", code="not_permitted")
    held = environment_permissions(actor).get(environment.pk, set())
    if personal and held:
        return
    if not personal and held & {"deploy", "rollback"}:
        return
    raise Refused(f"you may not subscribe {'yourself' if personal else 'a team channel'} to "
                  f"{environment.name}", code="not_permitted")


def subscription_delete(*, actor, subscription_id: int) -> None:
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().filter(
            pk=subscription_id).first()
        if subscription is None:
            raise NotFound("no such subscription")
        if subscription.created_by_id != actor.pk and not actor.is_staff:
            raise Refused("only who made a subscription, or an administrator, removes it")
        audit_record(actor=actor, action="subscription.deleted", obj=subscription,
                     before={"channel": subscription.channel,
                             "target": redact_target(subscription.target)})
        subscription.delete()
