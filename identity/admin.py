from allauth.account import admin as _account_admin  # noqa: F401  (registers, replaced below)
from allauth.account.models import EmailAddress
from allauth.mfa import admin as _mfa_admin  # noqa: F401
from allauth.mfa.models import Authenticator
from allauth.socialaccount import admin as _socialaccount_admin  # noqa: F401
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from allauth.usersessions import admin as _usersessions_admin  # noqa: F401
from allauth.usersessions.models import UserSession
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import (
    AdminPasswordChangeForm,
    AdminUserCreationForm,
    UserChangeForm,
)
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import access
from audit.admin import AuditedModelAdmin
from core.admin import ReadOnlyModelAdmin
from core.errors import DomainError
from identity import services
from identity.models import ApiToken
from identity.signin import normalize_username


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyModelAdmin):
    """Tokens are issued on the tokens page; here an administrator may only revoke them,
    through the service that audits it."""

    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at",
                    "last_used_at"]
    exclude = ["token_hash"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            try:
                services.api_token_revoke(actor=request.user, token=token)
            except DomainError as exc:
                self.message_user(request, f"{token}: {exc.detail}", messages.WARNING)


def _one_spelling(form) -> str:
    """The username in its one spelling, refused if another account has it in any case
    (identity.signin.normalize_username; the database's index refuses it too)."""
    name = normalize_username(form.cleaned_data.get("username"))
    others = get_user_model().objects.filter(username__iexact=name)
    if form.instance.pk:
        others = others.exclude(pk=form.instance.pk)
    if others.exists():
        raise ValidationError("A user with that username already exists.", code="unique")
    return name


class PortalUserCreationForm(AdminUserCreationForm):
    def clean_username(self):
        return _one_spelling(self)


class PortalUserChangeForm(UserChangeForm):
    def clean_username(self):
        return _one_spelling(self)


class PortalAdminPasswordChangeForm(AdminPasswordChangeForm):
    """An administrator setting (or disabling) a person's password: the one way a
    forgotten password is reset here, and a way to sign in as that person, so it is on
    the record as an access change, in the transaction that sets it (never the hash)."""

    def save(self, commit=True):
        with transaction.atomic():
            user = super().save(commit=commit)
            access.password_set_record(user=user)
        return user


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class PortalUserAdmin(UserAdmin):
    """Django's user admin, with usernames in their one spelling: renaming an account to
    another's name in another case is a form error, never a second spelling."""

    form = PortalUserChangeForm
    add_form = PortalUserCreationForm
    change_password_form = PortalAdminPasswordChangeForm


# --- a person's identity records (django-allauth): seen, and removed, never made ----------
#
# allauth's own admin pages let an administrator add or edit a person's second factor
# (their own authenticator app or passkey on someone else's account), e-mail address (a
# password reset sent to the administrator), linked single-sign-on account (their own
# identity provider login into someone else's account), its tokens and sessions: with a
# password set in the user admin, each is a way to sign in and act as that person. They
# are replaced here by views that only show them (no secret) and delete them through
# the service that audits the deletion as an access change. Importing allauth's modules
# first registers its classes (see the imports), so they can be replaced whatever the
# order of the apps.


class IdentityRecordAdmin(admin.ModelAdmin):
    """A person's own identity record: shown, deletable through the audited service,
    never added or edited here (only the person does that, on their own pages)."""

    raw_id_fields = ("user",)
    actions: list = []  # the site's "delete selected" stays, through delete_queryset

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_model(self, request, obj):
        services.identity_record_delete(actor=request.user, record=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.identity_record_delete(actor=request.user, record=obj)


for _model in (Authenticator, EmailAddress, SocialAccount, SocialApp, SocialToken,
               UserSession):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


@admin.register(Authenticator)
class AuthenticatorAdmin(IdentityRecordAdmin):
    list_display = ("user", "type", "created_at", "last_used_at")
    list_filter = ("type",)
    exclude = ("data",)  # the TOTP seed, the recovery codes' seed, the passkey


@admin.register(EmailAddress)
class EmailAddressAdmin(IdentityRecordAdmin):
    list_display = ("email", "user", "primary", "verified")
    list_filter = ("primary", "verified")
    search_fields = ("email", "user__username")


@admin.register(SocialAccount)
class SocialAccountAdmin(IdentityRecordAdmin):
    list_display = ("user", "provider", "uid", "last_login")
    list_filter = ("provider",)
    exclude = ("extra_data",)  # the identity provider's tokens and claims


@admin.register(SocialToken)
class SocialTokenAdmin(IdentityRecordAdmin):
    raw_id_fields = ("app", "account")
    list_display = ("account", "app", "expires_at")
    exclude = ("token", "token_secret")


@admin.register(UserSession)
class UserSessionAdmin(IdentityRecordAdmin):
    list_display = ("user", "created_at", "last_seen_at", "ip", "user_agent")
    exclude = ("session_key", "data")


@admin.register(SocialApp)
class SocialAppAdmin(AuditedModelAdmin):
    """Single sign-on is configured in the settings (``PORTAL_OIDC_*``). An identity
    provider added here would be one more road in, answering for whoever it likes: the
    admin shows such an app (never its secret) and may delete it, on the record."""

    list_display = ("name", "provider", "provider_id")
    exclude = ("secret", "key")
    audit_exclude = ("secret", "key")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
