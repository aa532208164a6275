"""Settings, read from the environment (12-factor).

The embedded PostgreSQL and Redis (see ``portal.embedded``) stand in when
``DATABASE_URL`` and ``REDIS_URL`` are unset. DEBUG is off unless ``DJANGO_DEBUG``
(or ``PORTAL_DEBUG``) turns it on; ``manage.py run`` keeps it off too. With it off the
process needs
``DJANGO_SECRET_KEY`` (not the development key), and production sets
``DJANGO_ALLOWED_HOSTS`` and both URLs too.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from core import logcontext
from portal import embedded

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# Off unless turned on explicitly: DJANGO_DEBUG, or PORTAL_DEBUG=true for a developer's
# `make run` (which is otherwise off like production). The test run turns it on.
DEBUG = env.bool("DJANGO_DEBUG", default=env.bool("PORTAL_DEBUG", default=False))

# A development key only when DEBUG is on; production must set its own, and a
# production process refuses to start with the development one.
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-key-not-for-production"
if DEBUG:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
else:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY")
    if not SECRET_KEY.strip():
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is empty; set a random key")
    if SECRET_KEY == DEVELOPMENT_SECRET_KEY:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is the development key; set a random key of your own "
            "before starting with DJANGO_DEBUG off")

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here, no internet needed
    "django_htmx",
    "guardian",
    "axes",
    "core",
    "audit",
    "identity",
    "catalog",
    "deployments",
    "configuration",
    "approvals",
    "integrations",
    "notifications",
    "reporting",
    "demo",
    "portal",
    # Identity: django-allauth (sign-in, single sign-on, second factors, sessions)
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.usersessions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "core.csp.PortalCSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "core.middleware.RejectNulBytesMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # A request whose transaction died of a deadlock or serialization failure runs again.
    "core.transient.RetryTransientMiddleware",
    "core.middleware.RequestContextMiddleware",
    # A database or Redis outage is a 503 (JSON under /api/), never a debug page.
    "core.middleware.ServiceUnavailableMiddleware",
    # Identity: django-allauth (its sign-in stages); when a session was last seen
    "allauth.account.middleware.AccountMiddleware",
    "identity.signin.SessionLastSeenMiddleware",
    # Second factors: people with Production permissions are signed out when idle.
    "identity.assurance.ProductionIdleTimeoutMiddleware",
    # Sign-in lockout (django-axes): last, as its documentation asks.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audit.context_processors.navigation",
                "demo.history.banner",
                # Second factors: the enrol banner for Production permission holders.
                "identity.assurance.banner",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=embedded.embedded_database_url()),
}
# Seconds a process keeps its database connection between requests. 0 (a connection
# per request) unless set; the web server's processes keep theirs (gunicorn.conf.py),
# checked before each reuse so that a restarted PostgreSQL costs one reconnection.
# Django's PostgreSQL backend with the audit chain sealed at commit (audit/db_backend),
# so the chain's lock is the last a transaction takes and never part of a deadlock.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "audit.db_backend"
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["TEST"] = {"NAME": env.str("DATABASE_TEST_NAME", default="test_portal")}

REDIS_URL = env.str("REDIS_URL", default=embedded.embedded_redis_url())

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username and address before the password is checked.
    "identity.authentication.SignInLockoutBackend",
    # Django's password check, on the username's one spelling (lower case).
    "identity.authentication.UsernameBackend",
    # Identity: django-allauth
    "allauth.account.auth_backends.AuthenticationBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: anonymous users hold no object permissions
GUARDIAN_RAISE_403 = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Notifications (SOP 11.2) print to the console unless a real backend is configured.
EMAIL_BACKEND = env.str("DJANGO_EMAIL_BACKEND",
                        default="django.core.mail.backends.console.EmailBackend")

# Sign-in lockout (django-axes): five failures for one username from one address lock
# that pair out for the cool-off; other users and other addresses sign in meanwhile.
# A successful sign-in clears the count. API tokens are not affected.
AXES_FAILURE_LIMIT = env.int("PORTAL_SIGNIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("PORTAL_SIGNIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Second-factor codes are also limited per account, whatever the address: someone who
# has the password cannot guess codes from many addresses (identity.signin.CodeLockoutMixin).
# Only wrong codes count (a wrong password from anywhere never blocks the owner's code).
PORTAL_CODE_FAILURE_LIMIT_PER_ACCOUNT = env.int("PORTAL_CODE_FAILURE_LIMIT_PER_ACCOUNT",
                                                default=10)
AXES_RESET_ON_SUCCESS = True
# Attempts during the cool-off are refused without extending it, so the page can say
# when it ends.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "core.error_views.signin_locked_out"
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False
# The client address as Django sees it (REMOTE_ADDR); the proxy in front sets it.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
# The lockout's key is the username's one spelling: "qA" is locked when "qa" is.
AXES_USERNAME_CALLABLE = "identity.signin.axes_username"
# Wrong second-factor codes count as failures too (identity.signin.PortalAuthenticateForm);
# neither a password nor a code is kept with the attempt.
AXES_SENSITIVE_PARAMETERS = ["password", "code", "credential"]
# The portal's own pages answer a CSRF failure.
CSRF_FAILURE_VIEW = "core.error_views.csrf_failure"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = env.str("PORTAL_TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(embedded.var_dir() / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Production serves the collected, hashed files (collectstatic); DEBUG and the
# one-machine run (PORTAL_STATIC_FROM_FINDERS, set by `manage.py run`) serve them from
# the apps' folders through WhiteNoise, with nothing to collect first.
STATIC_FROM_FINDERS = env.bool("PORTAL_STATIC_FROM_FINDERS", default=DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if STATIC_FROM_FINDERS
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = STATIC_FROM_FINDERS
if STATIC_FROM_FINDERS:
    # WhiteNoise serves from the finders but expects the folder to exist.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security: strict by default outside DEBUG (`manage.py check --deploy` is clean).
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # HTMX reads the token from the page, not the cookie
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp, core.csp; docs/security.md section 18): every
# script and style comes from the portal's own static files, none inline, no eval;
# htmx is configured not to need either (the htmx-config meta tag in base.html).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        # data: for the small icons Swagger UI's stylesheet embeds.
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        # The single sign-on provider's origin is added per response (core.csp).
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# More origins sign-in forms may be sent on to, when an identity provider's
# authorization endpoint is not on the origin of its issuer URL.
PORTAL_CSP_FORM_ACTION = env.list("PORTAL_CSP_FORM_ACTION", default=[])
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "identity.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.jsonbody.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "core.api.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.schema.PortalAutoSchema",  # adds the error answers
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # 429 past these rates; counted in the Redis cache so every web process shares them.
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.UserThrottle",
                                 "core.throttling.AnonThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("PORTAL_API_RATE_USER", default="1200/min"),
        "anon": env.str("PORTAL_API_RATE_ANON", default="60/min"),
    },
}

from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "portal",
        # A Redis that went away answers "unreachable" at once instead of hanging pages
        # (redis-py would otherwise retry with backoff for seconds).
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2,
                    "retry": Retry(NoBackoff(), 0)},
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Change approval and deployment portal API",
    "DESCRIPTION": "REST API v1: releases, change requests, approvals, deployments, audit.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Operations named and grouped by resource (changes_create, tag "changes"), which is
    # what client generators turn into module and function names.
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # 3.1 for `webhooks`: the notifications the portal sends (core.schema).
    "OAS_VERSION": "3.1.0",
    "WEBHOOKS": ["notifications.schema.NOTIFICATION_WEBHOOK"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "core.schema.answers_carry_every_field",
                             "notifications.schema.webhook_headers",
                             "core.schema.requests_without_nul"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "AlertStatusEnum": ["firing", "resolved"],
        "CheckStatusEnum": ["passed", "failed"],
        "DoraBandEnum": ["elite", "high", "medium", "low"],
        "RiskTriggerEnum": "approvals.models.RiskAssessment.Trigger",
        "CabMeetingStatusEnum": "approvals.models.CabMeeting.Status"},
}

# Celery: Redis broker; long deployments are explicit about delivery (STYLE 10).
CELERY_BROKER_URL = REDIS_URL
# kombu's Redis transport, made safe to close once Redis died (portal/broker.py): the
# worker reconnects in place instead of exiting with kombu's AttributeError.
CELERY_BROKER_TRANSPORT = "portal.broker:Transport"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("PORTAL_TASK_SOFT_TIME_LIMIT", default=3300)
CELERY_TASK_TIME_LIMIT = env.int("PORTAL_TASK_TIME_LIMIT", default=3600)
# Longer than the longest run, so a slow deployment is not redelivered mid-run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep reconnecting to a Redis that went away, however long it takes (make run
# restarts it; the worker and beat resume without a restart of their own).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A deployment step running when Redis goes away runs to its end: its message stays
# in Redis' unacked set, and a second delivery of it is harmless.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A publish while Redis is away gives up quickly: the deployment row is committed
# and beat's sweep queues it once Redis is back (deployments_resume_stale).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0,
                                    "interval_step": 0.5, "interval_max": 1}
CELERY_TIMEZONE = "UTC"
# The periodic tasks of every app (portal/beat_schedule.py).
from portal.beat_schedule import BEAT_SCHEDULE as CELERY_BEAT_SCHEDULE  # noqa: E402, F401

# How long a notification written with its decision is left to the task queued for it
# on commit before the outbox sweep sends it itself (notifications.services).
PORTAL_OUTBOX_GRACE_SECONDS = env.float("PORTAL_OUTBOX_GRACE_SECONDS", default=60.0)

# This machine's working directory (PORTAL_VAR_DIR, default var/; portal.embedded).
PORTAL_VAR_DIR = embedded.var_dir()
# Where the local executor lays out releases (releases/<version>, current).
PORTAL_DEPLOY_ROOT = Path(env.str("PORTAL_DEPLOY_ROOT", default=str(embedded.var_dir() / "deploy")))
# SOP 10.1: artifacts come only from trusted sources. The portal's own store is a
# directory (served as file:// URLs); PORTAL_ARTIFACT_SOURCES lists the URL prefixes
# releases may name (file:// directories, http(s):// prefixes). Default: the store only.
PORTAL_ARTIFACT_STORE = Path(env.str("PORTAL_ARTIFACT_STORE",
                                     default=str(embedded.var_dir() / "artifacts")))
PORTAL_ARTIFACT_SOURCES = env.list("PORTAL_ARTIFACT_SOURCES",
                                   default=[PORTAL_ARTIFACT_STORE.as_uri() + "/"])
# Largest artifact downloaded over http(s).
PORTAL_ARTIFACT_MAX_BYTES = env.int("PORTAL_ARTIFACT_MAX_BYTES", default=2 * 1024 ** 3)
# Outbound calls (core.outbound): loopback, private, link-local, metadata and other
# non-public addresses are refused unless listed here (host names, addresses, CIDRs,
# each optionally with :port or :low-high; `make run` lists the demo fleet's ports).
PORTAL_OUTBOUND_ALLOW = env.list("PORTAL_OUTBOUND_ALLOW", default=[])
PORTAL_OUTBOUND_CONNECT_TIMEOUT = env.float("PORTAL_OUTBOUND_CONNECT_TIMEOUT", default=5.0)
PORTAL_OUTBOUND_READ_TIMEOUT = env.float("PORTAL_OUTBOUND_READ_TIMEOUT", default=30.0)
PORTAL_OUTBOUND_MAX_BYTES = env.int("PORTAL_OUTBOUND_MAX_BYTES", default=1024 ** 2)
# How long hook delivery ids are remembered against replays (integrations.hooks).
PORTAL_HOOK_DELIVERY_RETENTION_DAYS = env.int("PORTAL_HOOK_DELIVERY_RETENTION_DAYS", default=30)

# Secrets stay in their environment (docs/security.md): worker variables a deployed
# command may see besides PATH, HOME, LANG and the like, and variables no configuration
# may name besides the portal's own (a trailing * makes a prefix).
PORTAL_DEPLOY_ENV_PASSTHROUGH = env.list("PORTAL_DEPLOY_ENV_PASSTHROUGH", default=[])
PORTAL_SECRET_DENIED_ENV = env.list("PORTAL_SECRET_DENIED_ENV", default=[])
# A running deployment whose heartbeat is older than this is taken as orphaned.
# The run lock (an advisory lock held by the live run) tells a long step from a dead
# run, so this can be short: it only guards the moment between a claim and its lock.
PORTAL_HEARTBEAT_STALE_SECONDS = env.int("PORTAL_HEARTBEAT_STALE_SECONDS", default=15)
# A queued deployment whose task has not started after this long is queued again
# (its message never reached Redis, or Redis lost it); duplicates are harmless.
PORTAL_REQUEUE_AFTER_SECONDS = env.int("PORTAL_REQUEUE_AFTER_SECONDS", default=10)
# Workers and beat write a heartbeat this often (core.liveness); one silent for
# PORTAL_LIVENESS_SECONDS counts as gone (dashboard banner, /readyz).
PORTAL_HEARTBEAT_INTERVAL_SECONDS = env.float("PORTAL_HEARTBEAT_INTERVAL_SECONDS", default=3.0)
PORTAL_LIVENESS_SECONDS = env.float("PORTAL_LIVENESS_SECONDS", default=12.0)
# Backups of the portal's own database (manage.py backup; beat daily).
PORTAL_BACKUP_DIR = Path(env.str("PORTAL_BACKUP_DIR", default=str(embedded.var_dir() / "backups")))
PORTAL_BACKUP_KEEP = env.int("PORTAL_BACKUP_KEEP", default=7)

# Signed audit checkpoints (audit.checkpoints, docs/audit.md). The Ed25519 private key
# is this file (made with mode 0600 on first use), or the PEM in the environment
# variable PORTAL_AUDIT_SIGNING_KEY (read by audit.checkpoints, never kept in settings).
# Every public key ever used is appended to the public-key file. Witnesses: append-only
# files outside the database, webhooks (through core.outbound), and email to the
# auditors: "off", "events" (deployments and key rotations) or "all".
PORTAL_AUDIT_SIGNING_KEY_FILE = Path(env.str(
    "PORTAL_AUDIT_SIGNING_KEY_FILE", default=str(embedded.var_dir() / "audit-signing-key")))
PORTAL_AUDIT_PUBLIC_KEYS_FILE = Path(env.str(
    "PORTAL_AUDIT_PUBLIC_KEYS_FILE",
    default=str(embedded.var_dir() / "audit-witness" / "public-keys.jsonl")))
PORTAL_AUDIT_WITNESS_FILES = env.list(
    "PORTAL_AUDIT_WITNESS_FILES",
    default=[str(embedded.var_dir() / "audit-witness" / "checkpoints.jsonl")])
PORTAL_AUDIT_WITNESS_WEBHOOKS = env.list("PORTAL_AUDIT_WITNESS_WEBHOOKS", default=[])
PORTAL_AUDIT_WITNESS_EMAIL = env.str("PORTAL_AUDIT_WITNESS_EMAIL", default="off")
if PORTAL_AUDIT_WITNESS_EMAIL not in ("off", "events", "all"):
    raise ImproperlyConfigured("PORTAL_AUDIT_WITNESS_EMAIL must be off, events or all")
# A deployment ending in these environments is followed by a checkpoint at once.
PORTAL_AUDIT_CHECKPOINT_ENVIRONMENTS = env.list("PORTAL_AUDIT_CHECKPOINT_ENVIRONMENTS",
                                                default=["production"])

# Every line logged inside a deployment run, a change decision or a hook delivery
# carries deployment_id, change_id or delivery_id (core/logcontext.py); one JSON object
# a line with PORTAL_LOG_FORMAT=json, the plain line with the ids appended otherwise.
PORTAL_LOG_FORMAT = env.str("PORTAL_LOG_FORMAT", default="plain").strip().lower()
try:
    LOGGING = logcontext.logging_config(
        log_format=PORTAL_LOG_FORMAT, level=env.str("PORTAL_LOG_LEVEL", default="INFO"))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None

# Where the deployment engine gets a run's configuration (secret references resolved):
# a callable (deployment, secrets=set) -> dict. The engine names no configuration app.
PORTAL_CONFIGURATION_PROVIDER = env.str(
    "PORTAL_CONFIGURATION_PROVIDER", default="configuration.services.render_for_deployment")
# ... and one secret of the deployment's environment: (deployment, reference) -> str.
PORTAL_SECRET_RESOLVER = "configuration.services.secret_for_deployment"

# How services hand work to background tasks (core.dispatch): "celery" publishes to the
# broker, "inline" runs the task in the calling process, "hold" keeps it unrun.
PORTAL_TASK_DISPATCH = env.str("PORTAL_TASK_DISPATCH", default="celery")
if PORTAL_TASK_DISPATCH not in ("celery", "inline", "hold"):
    raise ImproperlyConfigured("PORTAL_TASK_DISPATCH must be celery, inline or hold")

# Prometheus /metrics (docs/observability.md): request latency is timed by the outermost
# middleware; the endpoint answers a bearer token and/or client networks, 404 with neither
# (unless DEBUG, when loopback may read it).
MIDDLEWARE.insert(0, "core.request_metrics.RequestLatencyMiddleware")
PORTAL_METRICS_TOKEN = env.str("PORTAL_METRICS_TOKEN", default="")
if PORTAL_METRICS_TOKEN and len(PORTAL_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("PORTAL_METRICS_TOKEN is shorter than 16 characters; "
                               "use a random one: python3 -c \"import secrets; "
                               "print(secrets.token_urlsafe(32))\"")
try:
    import ipaddress as _ipaddress

    PORTAL_METRICS_ALLOW = [_ipaddress.ip_network(cidr.strip(), strict=False)
                            for cidr in env.list("PORTAL_METRICS_ALLOW", default=[])
                            if cidr.strip()]
except ValueError as _exc:
    raise ImproperlyConfigured(f"PORTAL_METRICS_ALLOW: {_exc}") from None
PORTAL_METRICS_WINDOW_HOURS = env.float("PORTAL_METRICS_WINDOW_HOURS", default=168.0)

# Identity: django-allauth (docs/identity.md). Accounts come from single sign-on or an
# administrator: nobody signs up on their own.
ACCOUNT_LOGIN_METHODS = {"username"}
# Signup is closed; the password fields here keep the password on the login form.
ACCOUNT_SIGNUP_FIELDS = ["username*", "email", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_SESSION_REMEMBER = True
ACCOUNT_LOGOUT_REDIRECT_URL = "login"
ACCOUNT_ADAPTER = "identity.signin.PortalAccountAdapter"
ACCOUNT_FORMS = {"login": "identity.signin.PortalLoginForm",
                 "reauthenticate": "identity.signin.PortalReauthenticateForm"}
# Repeated wrong passwords and wrong second-factor codes at sign-in are django-axes' to
# count and lock (AXES_* above; identity.signin.PortalAuthenticateForm for the codes).
ACCOUNT_RATE_LIMITS = {"login_failed": False}
# Usernames have one spelling, lower case (identity.signin.normalize_username).
ACCOUNT_PRESERVE_USERNAME_CASING = False
MFA_FORMS = {"authenticate": "identity.signin.PortalAuthenticateForm",
             "reauthenticate": "identity.signin.PortalMfaReauthenticateForm"}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_PASSKEY_LOGIN_ENABLED = True
# Passkeys on http://127.0.0.1 (the one-machine run sets it; DEBUG is not needed).
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = env.bool("PORTAL_WEBAUTHN_ALLOW_INSECURE_ORIGIN",
                                              default=DEBUG)
MFA_TOTP_ISSUER = env.str("PORTAL_MFA_TOTP_ISSUER", default="Change portal")
# Sessions are recorded at sign-in; "last seen" is kept in the cache by
# identity.signin.SessionLastSeenMiddleware, not written to the database on every page.
USERSESSIONS_TRACK_ACTIVITY = False

# Identity: local password sign-in, single sign-on (OpenID Connect) and group mapping.
# PORTAL_LOCAL_LOGIN=false leaves single sign-on as the only way in: the password form
# is gone, every password sign-in is refused (identity.authentication), passkeys too.
PORTAL_LOCAL_LOGIN = env.bool("PORTAL_LOCAL_LOGIN", default=True)
if not PORTAL_LOCAL_LOGIN:
    MFA_PASSKEY_LOGIN_ENABLED = False
PORTAL_OIDC_ISSUER = env.str("PORTAL_OIDC_ISSUER", default="")
PORTAL_OIDC_CLIENT_ID = env.str("PORTAL_OIDC_CLIENT_ID", default="")
PORTAL_OIDC_CLIENT_SECRET = env.str("PORTAL_OIDC_CLIENT_SECRET", default="")
PORTAL_OIDC_NAME = env.str("PORTAL_OIDC_NAME", default="single sign-on")
# The ID token claim listing the person's groups, and which of its values make which
# portal group (JSON object, e.g. {"portal-cab": "cab"}).
PORTAL_OIDC_GROUPS_CLAIM = env.str("PORTAL_OIDC_GROUPS_CLAIM", default="groups")
PORTAL_OIDC_GROUP_MAP = env.json("PORTAL_OIDC_GROUP_MAP", default={})
SOCIALACCOUNT_ADAPTER = "identity.signin.PortalSocialAccountAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_STORE_TOKENS = False
SOCIALACCOUNT_ONLY = False
SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {
        # The ID token's signature is always checked against the provider's keys.
        "provider_class": "identity.oidc.provider.PortalOpenIDConnectProvider",
        "OAUTH_PKCE_ENABLED": True,
        "APPS": [{
            "provider_id": "sso",
            "name": PORTAL_OIDC_NAME,
            "client_id": PORTAL_OIDC_CLIENT_ID,
            "secret": PORTAL_OIDC_CLIENT_SECRET,
            "settings": {"server_url": PORTAL_OIDC_ISSUER, "fetch_userinfo": False},
        }] if PORTAL_OIDC_ISSUER and PORTAL_OIDC_CLIENT_ID else [],
    },
}

# Second factors for Production (SOP 10.2, docs/identity.md). Who must hold one: a
# callable (user) -> bool; the catalogue answers "holds approve, deploy or rollback
# on a Production environment". Decisions there need a second-factor check this recent.
PORTAL_SECOND_FACTOR_REQUIRED_FOR = env.str(
    "PORTAL_SECOND_FACTOR_REQUIRED_FOR", default="catalog.permissions.holds_production_powers")
PORTAL_STEP_UP_SECONDS = env.int("PORTAL_STEP_UP_SECONDS", default=600)
# A second-factor check through the API (POST /api/v1/auth/step-up): at most this many
# wrong codes per person in PORTAL_STEP_UP_FAILURE_MINUTES; then every code is refused
# until the oldest failure leaves the window.
PORTAL_STEP_UP_MAX_FAILURES = env.int("PORTAL_STEP_UP_MAX_FAILURES", default=5)
PORTAL_STEP_UP_FAILURE_MINUTES = env.int("PORTAL_STEP_UP_FAILURE_MINUTES", default=15)
# Service accounts (CI and other automation): members of these groups. They act through
# API tokens an administrator issues for them, and never decide a gate.
PORTAL_SERVICE_ACCOUNT_GROUPS = env.list("PORTAL_SERVICE_ACCOUNT_GROUPS", default=["ci"])
# People who must hold a second factor are signed out after this long without a request.
PORTAL_PRODUCTION_IDLE_MINUTES = env.int("PORTAL_PRODUCTION_IDLE_MINUTES", default=30)
# seed_demo enrols the demo's Production people in TOTP with this secret (base32), so
# step-up can be tried with any authenticator app. Demo data only.
PORTAL_DEMO_TOTP_SECRET = env.str("PORTAL_DEMO_TOTP_SECRET",
                                  default="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")

# --- Deployment queues per environment and worker connections -----------------
# Deployments go to the Celery queue PORTAL_DEPLOY_QUEUE_PREFIX + environment slug
# (deploy.production, ...); a worker consumes the queues whose credentials it holds
# (`celery -A portal worker -Q deploy.development,deploy.staging`). A worker started with
# PORTAL_WORKER_ALL_ENVIRONMENTS=true (the developer run) consumes every environment's
# queue, new environments included (portal/celery.py). Other tasks stay on `celery`.
PORTAL_DEPLOY_QUEUE_PREFIX = env.str("PORTAL_DEPLOY_QUEUE_PREFIX", default="deploy.")
PORTAL_WORKER_ALL_ENVIRONMENTS = env.bool("PORTAL_WORKER_ALL_ENVIRONMENTS", default=False)
# Worker processes keep their database connection between tasks (a new connection per
# task costs more than a deployment's dispatch); checked before reuse.
PORTAL_WORKER_CONN_MAX_AGE = env.int("PORTAL_WORKER_CONN_MAX_AGE", default=600)
