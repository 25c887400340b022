"""Split a generated answer into its reasoning (`<think>...</think>`) and its visible content.

Why from token ids: both backends return ids, and decoding them here (not using the server's text,
which depends on its `skip_special_tokens` and reasoning-parser settings) makes the stored text a pure
function of the ids. When the think tags are single tokens (GLM, Qwen3, the tiny target) the split is
done on ids; otherwise on the decoded text. Both parts are stripped, as GLM-style templates strip them
when they render the answer back into the next turn's prompt.

Cases: `<think>R</think>C` -> (R, C); `R</think>C` (the template opened the tag in the prompt) ->
(R, C); `<think>R` cut by the token cap -> (R, ""); no tags -> (None, text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

THINK, END_THINK = "<think>", "</think>"


class ReasoningSplitter:
    """Decode generated ids into (reasoning or None, content)."""

    def __init__(self, tokenizer: Any, stop_ids: set[int], start: str = THINK, end: str = END_THINK):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.start, self.end = start, end
        vocab = tokenizer.get_vocab()
        self.start_id, self.end_id = vocab.get(start), vocab.get(end)
        self.by_id = self.start_id is not None and self.end_id is not None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def split(self, ids: Sequence[int]) -> tuple[str | None, str]:
        ids = list(ids)
        while ids and ids[-1] in self.stop_ids:
            ids.pop()
        if self.by_id:
            return self._split_ids(ids)
        return self._split_text(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _split_ids(self, ids: list[int]) -> tuple[str | None, str]:
        if self.end_id in ids:
            end = ids.index(self.end_id)
            head = ids[:end]
            begin = head.index(self.start_id) + 1 if self.start_id in head else 0
            return self._decode(head[begin:]), self._decode(ids[end + 1 :])
        if self.start_id in ids:
            return self._decode(ids[ids.index(self.start_id) + 1 :]), ""
        return None, self._decode(ids)

    def _split_text(self, text: str) -> tuple[str | None, str]:
        if self.end in text:
            head, _, tail = text.partition(self.end)
            return head.split(self.start)[-1].strip(), tail.strip()
        if self.start in text:
            return text.split(self.start, 1)[1].strip(), ""
        return None, text.strip()
