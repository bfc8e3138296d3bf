"""Verifies a JWT-SVID the way an OpenID Connect relying party does, with PyJWT
only: knowing nothing but the issuer URL, it fetches
<issuer>/.well-known/openid-configuration, follows its jwks_uri, picks the key by
the token's kid, and checks signature, audience, issuer and expiry.

    oidc_verify.py ISSUER AUDIENCE TOKEN

The CA file for https is in TESSERA_OIDC_CA. Prints the discovery document, the
key set and the verified claims as one JSON object; exits 1 with the reason when
the token does not verify."""

import json
import os
import ssl
import sys
import urllib.request

import jwt


def fetch(url, context):
    with urllib.request.urlopen(url, context=context, timeout=10) as r:
        return json.load(r)


def main():
    issuer, audience, token = sys.argv[1:4]
    context = ssl.create_default_context(cafile=os.environ.get("TESSERA_OIDC_CA"))
    discovery = fetch(issuer.rstrip("/") + "/.well-known/openid-configuration", context)
    if discovery["issuer"] != issuer:
        print(f"discovery issuer {discovery['issuer']!r} is not {issuer!r}", file=sys.stderr)
        sys.exit(1)
    keys = fetch(discovery["jwks_uri"], context)
    key_set = jwt.PyJWKSet.from_dict(keys)
    kid = jwt.get_unverified_header(token)["kid"]
    try:
        key = next(k for k in key_set.keys if k.key_id == kid)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=discovery["id_token_signing_alg_values_supported"],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "iss", "sub", "aud"]},
        )
    except (StopIteration, jwt.PyJWTError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"discovery": discovery, "keys": keys, "claims": claims}))


if __name__ == "__main__":
    main()
