"""Calls the Workload API's FetchJWTSVID over a Unix socket the way Python
workloads do, for h2-authority/tests/grpc_clients.rs.

    fetch_jwt_svid.py SOCKET_PATH AUDIENCE raw|spiffe

raw     a generic grpcio unary call to /SpiffeWorkloadAPI/FetchJWTSVID with
        hand-encoded protobuf bytes and the `workload.spiffe.io: true`
        metadata, on grpc.insecure_channel("unix:" + SOCKET_PATH);
spiffe  py-spiffe's WorkloadApiClient.fetch_jwt_svid, which adds the metadata
        itself and parses the returned token.

Prints one JSON object on standard output: {"ok": true, ...} with the answer,
or {"ok": false, ...} saying how the call failed. The exit status is 0 either
way; only a broken environment (grpcio or py-spiffe missing) exits non-zero.
"""

import json
import sys

import grpc


def encode_request(audience: str) -> bytes:
    # JWTSVIDRequest { repeated string audience = 1; }: tag 1, length-delimited.
    aud = audience.encode()
    if len(aud) >= 128:
        raise ValueError("audience too long for this one-byte length")
    return bytes([0x0A, len(aud)]) + aud


def raw_call(path: str, audience: str) -> dict:
    with grpc.insecure_channel("unix:" + path) as channel:
        # Without serializers grpcio sends and returns raw bytes.
        call = channel.unary_unary("/SpiffeWorkloadAPI/FetchJWTSVID")
        try:
            response = call(
                encode_request(audience),
                timeout=10,
                metadata=[("workload.spiffe.io", "true")],
            )
        except grpc.RpcError as err:
            return {"ok": False, "code": err.code().name, "details": err.details()}
    return {"ok": True, "response_hex": response.hex()}


def spiffe_call(path: str, audience: str) -> dict:
    from spiffe import WorkloadApiClient

    try:
        with WorkloadApiClient(socket_path="unix:" + path, default_timeout=10) as client:
            svid = client.fetch_jwt_svid(audience={audience})
    except Exception as err:  # noqa: BLE001 (the test wants any failure reported)
        return {"ok": False, "error": type(err).__name__, "details": str(err)}
    return {"ok": True, "spiffe_id": str(svid.spiffe_id), "token": svid.token}


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[3] not in ("raw", "spiffe"):
        sys.exit(__doc__)
    path, audience, mode = sys.argv[1:]
    result = raw_call(path, audience) if mode == "raw" else spiffe_call(path, audience)
    result["grpcio"] = grpc.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
