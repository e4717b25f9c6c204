"""API tokens are stored hashed (controlplane.tokens.hash_api_token): the existing ones too, so
a copy of the database or a look at the admin gives no working token. Their owners keep using
the tokens they have."""

import hashlib

from django.db import migrations


def _hash(raw: str) -> str:  # controlplane.tokens.hash_api_token as of this migration
    return hashlib.sha256(b"api-token:" + raw.encode()).hexdigest()[:40]


def hash_tokens(apps, schema_editor):
    Token = apps.get_model("authtoken", "Token")
    for key in list(Token.objects.values_list("key", flat=True)):
        Token.objects.filter(key=key).update(key=_hash(key))


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0003_node_running_state"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(hash_tokens, migrations.RunPython.noop, elidable=False)]
