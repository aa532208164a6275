"""The API token model, moved from core with its table (state only; core 0008 moves
its content type)."""

import core.clock
import django.db.models.deletion
import identity.models
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
                    name='ApiToken',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100)),
                        ('prefix', models.CharField(help_text='First characters, to recognise a token.', max_length=12)),
                        ('token_hash', models.CharField(max_length=64, unique=True)),
                        ('created_at', models.DateTimeField(default=core.clock.now)),
                        ('expires_at', models.DateTimeField(blank=True, null=True)),
                        ('revoked_at', models.DateTimeField(blank=True, null=True)),
                        ('last_used_at', models.DateTimeField(blank=True, null=True)),
                        ('scopes', models.JSONField(default=identity.models.all_scopes)),
                        ('second_factor', models.CharField(blank=True, default='', max_length=20)),
                        ('second_factor_at', models.DateTimeField(blank=True, null=True)),
                        ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_tokens', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'portal_apitoken',
                        'constraints': [models.UniqueConstraint(fields=('user', 'name'), name='api_token_unique_name_per_user')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
