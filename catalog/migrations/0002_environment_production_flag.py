from django.db import migrations, models


def flag_production(apps, schema_editor):
    Environment = apps.get_model("catalog", "Environment")
    Environment.objects.filter(slug="production").update(production=True)


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="environment",
            name="production",
            field=models.BooleanField(
                default=False, help_text="Decisions here need a second factor, checked recently."),
        ),
        migrations.RunPython(flag_production, migrations.RunPython.noop),
    ]
