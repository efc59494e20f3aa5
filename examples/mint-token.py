#!/usr/bin/env python3
"""Mints an HS256 JWT for trying examples/api-gateway.yaml (standard library only).

    python3 examples/mint-token.py alice                  # scope orders:read, valid 1 h
    python3 examples/mint-token.py bob --scope profile    # lacks orders:read: 403
"""
import argparse
import base64
import hashlib
import hmac
import json
import time

# The secret in examples/api-gateway.yaml.
SECRET = "change-me-to-a-long-random-secret-of-32-bytes-or-more"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sub", help="the user (becomes X-User-Id upstream)")
    p.add_argument("--scope", default="orders:read")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    p.add_argument("--secret", default=SECRET)
    a = p.parse_args()
    claims = {
        "sub": a.sub,
        "iss": "https://idp.example.com",
        "aud": "orders-api",
        "scope": a.scope,
        "iat": int(time.time()),
        "exp": int(time.time()) + a.ttl,
    }
    header = {"alg": "HS256", "typ": "JWT"}
    signed = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(a.secret.encode(), signed, hashlib.sha256).digest()
    print((signed + b"." + b64(mac)).decode())


if __name__ == "__main__":
    main()
