"""Turn one raw row (UltraChat or ShareGPT shape) into a clean `Prompt`, or a `Rejection` with a reason.

Why here and not in regen: every consumer of prompts (regen, eval sets, tests) must agree on what a
valid conversation is and on its id. Rules:
- UltraChat: `row[messages_column]` is a list of `{role, content}`; ShareGPT: `row["conversations"]` is
  a list of `{from, value}` (role names such as human/gpt are mapped).
- Assistant messages are dropped (the target answers again); system and user messages are kept in
  order. Roles outside system/user/assistant (and their aliases) reject the row.
- Content must be a string (UTF-8 bytes are decoded); lone surrogates or undecodable bytes reject
  the row as `invalid_utf8`; other types as `non_string_content`.
- The id is the row's `id_column` when present (str or int), else `h-` + a hash of the kept messages,
  so the same conversation always gets the same id whatever file it came from.

Rejections are data, never exceptions: the caller counts them by reason and writes them to the
errors file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from dspark_data.prompts.sources import RowError
from schemas.recipe import PromptsConfig

_PROMPTS = PromptsConfig()  # the recipe's column names, for a caller without a recipe

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class Prompt:
    """A clean conversation to re-answer: system and user messages only, in source order."""

    id: str
    source: str
    index: int
    messages: tuple[tuple[str, str], ...]  # (role, content) with role in {system, user}

    @property
    def num_user_turns(self) -> int:
        return sum(role == "user" for role, _ in self.messages)


@dataclass(frozen=True)
class Rejection:
    """A row that cannot be used, with a machine-readable reason (counted) and a human detail."""

    id: str
    source: str
    index: int
    reason: str
    detail: str


def content_id(messages: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """`h-` + 16 hex of the sha256 of the canonical JSON of the kept messages."""
    text = json.dumps([list(m) for m in messages], ensure_ascii=False, separators=(",", ":"))
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _text(value: Any, where: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("invalid_utf8", f"{where}: {exc}") from None
    if not isinstance(value, str):
        raise _Bad("non_string_content", f"{where}: content is {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Bad("invalid_utf8", f"{where}: {exc.reason} at {exc.start}") from None
    return value


def _turns(row: dict[str, Any], messages_column: str) -> list[tuple[str, str]]:
    if messages_column in row and row[messages_column] is not None:
        raw, role_key, text_key = row[messages_column], "role", "content"
    elif row.get("conversations") is not None:
        raw, role_key, text_key = row["conversations"], "from", "value"
    else:
        raise _Bad("bad_shape", f"no {messages_column!r} or 'conversations' column (columns: {sorted(row)[:8]})")
    if not isinstance(raw, list):
        raise _Bad("bad_shape", f"conversation is a {type(raw).__name__}, not a list of messages")
    out: list[tuple[str, str]] = []
    for n, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise _Bad("bad_shape", f"message {n} is a {type(msg).__name__}, not an object")
        role = msg.get(role_key, msg.get("role"))
        if isinstance(role, (bytes, bytearray)):
            role = _text(role, f"message {n} role")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise _Bad("unknown_role", f"message {n}: role {role!r} is not one of {sorted(ROLE_ALIASES)}")
        text = _text(msg.get(text_key, msg.get("content")), f"message {n}")
        role = ROLE_ALIASES[role.lower()]
        if role == "assistant":
            continue
        if role == "user" and not text.strip():
            raise _Bad("empty_user_turn", f"message {n}: empty user message")
        out.append((role, text))
    if not any(role == "user" for role, _ in out):
        raise _Bad("no_user_turn", "no user message")
    return out


def _row_id(row: dict[str, Any], id_column: str | None) -> str | None:
    if not id_column:
        return None
    value = row.get(id_column)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    return None


def normalize_row(
    row: dict[str, Any] | RowError,
    *,
    source: str,
    index: int,
    messages_column: str = _PROMPTS.messages_column,
    id_column: str | None = _PROMPTS.id_column,
) -> Prompt | Rejection:
    """One raw row -> Prompt, or Rejection naming why (see the module docstring for the rules)."""
    if isinstance(row, RowError):
        return Rejection("h-" + row.raw_hash, source, index, row.reason, row.detail)
    sid = _row_id(row, id_column)
    try:
        messages = _turns(row, messages_column)
    except _Bad as bad:
        if sid is None:
            raw = json.dumps(row, sort_keys=True, default=repr, ensure_ascii=True).encode("ascii")
            sid = "h-" + hashlib.sha256(raw).hexdigest()[:16]
        return Rejection(sid, source, index, bad.reason, bad.detail)
    return Prompt(sid or content_id(messages), source, index, tuple(messages))
