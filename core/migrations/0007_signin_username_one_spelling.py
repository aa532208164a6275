"""Usernames have one spelling, lower case (identity.signin.normalize_username): existing
accounts are stored so, and the database refuses a second account that differs from
one only in case."""

from django.db import migrations

INDEX = "core_auth_user_username_lower_uniq"


def lower_usernames(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT lower(username), array_agg(username ORDER BY id) "
                       "FROM auth_user GROUP BY 1 HAVING count(*) > 1")
        clashes = cursor.fetchall()
        if clashes:
            names = "; ".join(", ".join(spellings) for _, spellings in clashes)
            raise RuntimeError(
                "Accounts whose usernames differ only in case must be merged or renamed "
                f"by an administrator before this upgrade: {names}")
        cursor.execute("UPDATE auth_user SET username = lower(username) "
                       "WHERE username <> lower(username)")


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("core", "0006_sign_in_days_for_access_review"),
    ]

    operations = [
        migrations.RunPython(lower_usernames, migrations.RunPython.noop),
        migrations.RunSQL(
            f"CREATE UNIQUE INDEX {INDEX} ON auth_user (lower(username))",
            f"DROP INDEX IF EXISTS {INDEX}",
        ),
    ]
