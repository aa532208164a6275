"""The audit trail's models, moved from core with their tables (state only; core 0008
moves their content types)."""

import core.clock
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("core", "0007_signin_username_one_spelling"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            # The tables exist (core 0001-0007) and keep their names: only Django's
            # idea of which app holds the models changes.
            state_operations=[
                migrations.CreateModel(
                    name='AuditCheckpoint',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('created_at', models.DateTimeField(default=core.clock.now)),
                        ('cutoff', models.DateTimeField(help_text='Events older than this were due for removal.')),
                        ('last_event_id', models.BigIntegerField()),
                        ('last_hash', models.CharField(max_length=64)),
                        ('last_occurred_at', models.DateTimeField()),
                        ('events_removed', models.PositiveIntegerField()),
                        ('log_lines_removed', models.PositiveIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'portal_auditcheckpoint',
                        'ordering': ['-last_event_id'],
                        'constraints': [models.UniqueConstraint(fields=('last_event_id',), name='audit_checkpoint_unique_event')],
                    },
                ),
                migrations.CreateModel(
                    name='SignedCheckpoint',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('event_id', models.BigIntegerField()),
                        ('hash', models.CharField(max_length=64)),
                        ('signed_at', models.DateTimeField()),
                        ('key_id', models.CharField(max_length=16)),
                        ('public_key', models.CharField(help_text='Ed25519, raw, base64', max_length=64)),
                        ('signature', models.CharField(help_text='Ed25519, base64', max_length=100)),
                        ('reason', models.CharField(max_length=200)),
                    ],
                    options={
                        'db_table': 'portal_auditsignedcheckpoint',
                        'ordering': ['-event_id'],
                        'constraints': [models.UniqueConstraint(fields=('event_id', 'key_id'), name='audit_signed_checkpoint_unique')],
                    },
                ),
                migrations.CreateModel(
                    name='SignInDay',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('day', models.DateField()),
                        ('action', models.CharField(max_length=64)),
                        ('actor_id', models.IntegerField(default=0)),
                        ('name', models.CharField(blank=True, max_length=150)),
                        ('count', models.PositiveIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'portal_signinday',
                        'indexes': [models.Index(condition=models.Q(('action', 'auth.login_failed')), fields=['name', 'day'], include=('count',), name='sign_in_failed_name_idx')],
                        'constraints': [models.UniqueConstraint(fields=('action', 'day', 'actor_id', 'name'), name='sign_in_day_unique')],
                    },
                ),
                migrations.CreateModel(
                    name='AuditEvent',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('occurred_at', models.DateTimeField(db_index=True, default=core.clock.now)),
                        ('actor_name', models.CharField(max_length=150)),
                        ('actor_kind', models.CharField(max_length=10)),
                        ('action', models.CharField(db_index=True, max_length=64)),
                        ('object_type', models.CharField(max_length=64)),
                        ('object_id', models.CharField(max_length=64)),
                        ('object_repr', models.CharField(max_length=300)),
                        ('environment', models.CharField(blank=True, db_index=True, max_length=50)),
                        ('before', models.JSONField(blank=True, null=True)),
                        ('after', models.JSONField(blank=True, null=True)),
                        ('reason', models.TextField(blank=True)),
                        ('request_id', models.CharField(blank=True, max_length=64)),
                        ('ip', models.GenericIPAddressField(blank=True, null=True)),
                        ('user_agent', models.CharField(blank=True, max_length=300)),
                        ('prev_hash', models.CharField(max_length=64)),
                        ('hash', models.CharField(max_length=64, unique=True)),
                        ('actor', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'portal_auditevent',
                        'ordering': ['-id'],
                        'permissions': [('view_audit_trail', 'Can browse and export the audit trail')],
                        'indexes': [models.Index(fields=['object_type', 'object_id'], name='audit_object_idx'), models.Index(fields=['actor_name', '-id'], name='audit_actor_idx'), models.Index(fields=['actor', '-id'], name='audit_actor_id_idx'), models.Index(fields=['action', '-id'], name='audit_action_id_idx'), models.Index(fields=['environment', '-id'], name='audit_env_id_idx')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
