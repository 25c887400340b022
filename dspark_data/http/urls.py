"""Server URLs: a user may name a vLLM/gateway server as `http://host:8000`, `.../` or `.../v1`.

Every client turns that into the server root first, then appends the API path it calls, so
`--endpoint http://host:8000/v1` and `--endpoint http://host:8000` reach the same routes.
"""

from __future__ import annotations

API_PREFIX = "/v1"


def base_url(url: str) -> str:
    """The server root: trailing slashes and one trailing `/v1` removed."""
    url = url.rstrip("/")
    return url[: -len(API_PREFIX)] if url.endswith(API_PREFIX) else url


def api_url(url: str, path: str) -> str:
    """`path` (starting with `/`, e.g. `/v1/chat/completions` or `/metrics`) on the server `url` names."""
    return base_url(url) + path
