"""Who may talk to a hidden-state gateway: loopback by default, a shared token otherwise.

Why: the gateway hands out the target's internal activations and spends its GPUs on whoever asks. On
127.0.0.1 only processes of the same machine reach it (the single-node runbook). Binding any other
address (the multi-node runbook) requires a shared secret, sent as `Authorization: Bearer <token>` and
checked on every request with a constant-time comparison (no timing side channel on the token bytes).
The token comes from `--token` or `$DSPARK_STREAM_TOKEN` (preferred: it stays out of `ps` listings and
out of the argv torchrun re-launches).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket

TOKEN_ENV = "DSPARK_STREAM_TOKEN"
MIN_TOKEN_CHARS = 16


class AuthConfigError(ValueError):
    """A bind address / token combination that must not start; the message says what to pass."""


def resolve_token(flag: str | None) -> str | None:
    """The token from the flag, else from $DSPARK_STREAM_TOKEN; empty strings count as no token."""
    token = flag if flag else os.environ.get(TOKEN_ENV, "")
    return token.strip() or None


def is_loopback(host: str) -> bool:
    """True only when every address `host` names is a loopback address ('localhost' included).

    A name that resolves to anything else, a wildcard (0.0.0.0, ::) or an unresolvable name is not loopback.
    """
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token, or with a guessable one."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(
            f"the stream token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. `export DSPARK_STREAM_TOKEN=$(openssl rand -hex 32)`)"
        )
    if not is_loopback(host) and token is None:
        raise AuthConfigError(
            f"--host {host} is reachable from other machines: set a shared token with "
            f"`export {TOKEN_ENV}=$(openssl rand -hex 32)` (or --token) on the server and every trainer, "
            "or bind 127.0.0.1"
        )


def authorized(header: str | None, token: str | None) -> bool:
    """Check an `Authorization` header against the token (always true when no token is configured)."""
    if token is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode("utf-8"), token.encode("utf-8"))


def auth_headers(token: str | None) -> dict[str, str]:
    """Request headers carrying the token (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
