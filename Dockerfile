# One image for every role: web (gunicorn, the default), worker and beat (celery),
# and the one-shot migrate. See docker-compose.yml and docs/operations.md.
FROM python:3.11-slim

# PYTHONPATH: the settings find templates/ and static/ beside the packages (BASE_DIR is
# the folder that holds portal/), so the code runs from /app, not from site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=portal.settings \
    DJANGO_STATIC_ROOT=/app/staticfiles \
    PORTAL_VAR_DIR=/var/lib/portal \
    PORTAL_DEPLOY_ROOT=/var/lib/portal/deploy \
    WEB_CONCURRENCY=3

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN pip install . && pip uninstall --yes change-portal

# Then the project itself.
COPY . .
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Static files are collected at build time. The secret and URLs here exist only for this
# step (nothing connects to them); the running container gets its own from the environment.
RUN DJANGO_DEBUG=false \
    DJANGO_SECRET_KEY=build-time-only-collectstatic-not-a-secret \
    DATABASE_URL=postgres://build@127.0.0.1:1/build \
    REDIS_URL=redis://127.0.0.1:1/0 \
    python manage.py collectstatic --noinput --verbosity 0

RUN groupadd --gid 10001 portal \
    && useradd --uid 10001 --gid portal --no-create-home --home-dir /var/lib/portal \
        --shell /usr/sbin/nologin portal \
    && mkdir -p /var/lib/portal/deploy /var/lib/portal/audit \
    && chown -R portal:portal /var/lib/portal \
    && chmod 0700 /var/lib/portal/audit
USER 10001:10001

EXPOSE 8000
CMD ["gunicorn", "portal.wsgi:application", "--bind", "0.0.0.0:8000", "--threads", "4", \
     "--access-logfile", "-"]
