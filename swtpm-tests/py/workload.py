"""A Python workload, using py-spiffe exactly as a Python service would.

Commands (the socket comes from SPIFFE_ENDPOINT_SOCKET):
  x509 OUT_DIR        fetch the X509-SVID and bundles; write chain.pem,
                      key.pem and bundle.pem; print JSON facts
  jwt AUDIENCE        fetch a JWT-SVID; print the token
  validate TOKEN AUD  validate a token locally with the JWT bundles py-spiffe
                      fetched, then through the agent; print the SPIFFE ID
  expect-denied       fetch an X509-SVID and expect PermissionDenied
"""

import json
import os
import sys

from cryptography.hazmat.primitives import serialization
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient


def x509(out_dir):
    with WorkloadApiClient(default_timeout=20) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
    td = svid.spiffe_id.trust_domain
    bundle = bundles.get_bundle_for_trust_domain(td)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "chain.pem"), "wb") as f:
        for cert in svid.cert_chain:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(out_dir, "key.pem"), "wb") as f:
        f.write(
            svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(os.path.join(out_dir, "bundle.pem"), "wb") as f:
        for cert in bundle.x509_authorities:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    print(
        json.dumps(
            {
                "spiffe_id": str(svid.spiffe_id),
                "chain_len": len(svid.cert_chain),
                "trust_domain": td.name,
                "authorities": len(bundle.x509_authorities),
                "not_after": int(svid.leaf.not_valid_after_utc.timestamp()),
            }
        )
    )


def jwt(audience):
    with WorkloadApiClient(default_timeout=20) as client:
        svid = client.fetch_jwt_svid(audience={audience})
    print(svid.token)


def validate(token, audience):
    with WorkloadApiClient(default_timeout=20) as client:
        bundles = client.fetch_jwt_bundles()
        # Locally, with py-spiffe's own JWT-SVID rules and the fetched bundle.
        insecure = JwtSvid.parse_insecure(token, {audience})
        bundle = bundles.get_bundle_for_trust_domain(insecure.spiffe_id.trust_domain)
        local = JwtSvid.parse_and_validate(token, bundle, {audience})
        # And through the agent's ValidateJWTSVID.
        remote = client.validate_jwt_svid(token, audience)
    print(json.dumps({"local": str(local.spiffe_id), "agent": str(remote.spiffe_id)}))


def expect_denied():
    import grpc

    try:
        with WorkloadApiClient(default_timeout=10) as client:
            client.fetch_x509_svid()
    except Exception as e:  # py-spiffe wraps the gRPC error
        cause = e
        while cause is not None and not isinstance(cause, grpc.RpcError):
            cause = cause.__cause__ or cause.__context__
        code = cause.code().name if cause is not None else type(e).__name__
        print(json.dumps({"error": code, "message": str(e)}))
        return
    print(json.dumps({"error": None}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"x509": x509, "jwt": jwt, "validate": validate, "expect-denied": expect_denied}[cmd](*args)


if __name__ == "__main__":
    main()
