"""Single sign-on with an OpenID Connect provider, on django-allauth's provider.

allauth's own provider skips the ID token's signature when the token came straight
from the token endpoint (the specification allows it over TLS). The portal checks it
always, against the provider's published keys, so a token altered or signed with
another key is refused whatever the transport (docs/identity.md).
"""
