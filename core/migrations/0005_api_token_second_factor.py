from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0004_audit_sign_in_indexes_for_access_review"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="second_factor",
            field=models.CharField(blank=True, default="", max_length=20),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="second_factor_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
