"""On-disk contract of a regen dataset: one record per regenerated conversation.

A regen record is what the capture stage and the vocab builder read: the exact token ids the target
saw and produced (`input_ids`), which of them the target generated (`loss_mask`), and everything
needed to reproduce or audit them (seeds, sampling, target, per-turn accounting). The pydantic model
is the source of truth; `REGEN_ARROW_SCHEMA` is its Arrow layout in the shards, and
`record_to_row` / `row_to_record` convert between the two. See `docs/formats/regen.md`.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas.base import StrictModel

REGEN_SCHEMA_VERSION = 1
REGEN_KIND = "regen"


class RegenMessage(StrictModel):
    """One message of the regenerated conversation; assistant messages are the target's own answers."""

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="Visible text (for the assistant: the answer after its reasoning).")
    reasoning_content: str | None = Field(
        None, description="Assistant reasoning (the text inside <think>...</think>); None if none was produced."
    )


class SamplingRecord(StrictModel):
    """The fully resolved sampling parameters every turn of the record was generated with."""

    temperature: float = Field(description="Sampling temperature (0: greedy).")
    top_p: float = Field(description="Nucleus sampling mass (1: off).")
    top_k: int = Field(description="Top-k (0: off).")
    min_p: float = Field(description="Min-p (0: off).")
    repetition_penalty: float = Field(description="Repetition penalty (1: off).")
    presence_penalty: float = Field(description="Presence penalty (0: off).")
    frequency_penalty: float = Field(description="Frequency penalty (0: off).")
    max_new_tokens: int = Field(description="Generated-token cap per assistant turn (before the seq_len cap).")


class RegenTurn(StrictModel):
    """Accounting of one re-answered user turn."""

    turn: int = Field(ge=0, description="0-based index of the user turn that was answered.")
    seed: int = Field(description="derive_seed(run_seed, 'regen', id, turn): the request's sampling seed.")
    prompt_tokens: int = Field(ge=0, description="Tokens of the templated conversation the target was given.")
    generated_tokens: int = Field(ge=0, description="Tokens the target generated for this turn.")
    finish_reason: str = Field(description="'stop' (EOS/stop token), 'length' (token cap) or what the engine said.")
    kept_prefix_tokens: int = Field(
        ge=0,
        description="Leading tokens of the previous turn's sequence found unchanged at the start of this turn's "
        "prompt (the longest common prefix); equals the previous sequence length when the template reproduced "
        "the earlier turns token for token. 0 for turn 0.",
    )
    retokenized: bool = Field(
        description="True when re-rendering the earlier turns did not reproduce their token ids exactly; "
        "generated tokens after the divergence are then no longer marked in loss_mask."
    )


class RegenRecord(StrictModel):
    """One regenerated conversation (a row of a regen shard)."""

    schema_version: int = Field(REGEN_SCHEMA_VERSION, description="Version of this record format.")
    id: str = Field(description="Stable sample id: the source's id column, else 'h-' + a content hash.")
    source: str = Field(description="Prompt source: 'embedded', a dataset id, or a file name.")
    source_index: int = Field(ge=0, description="Row number of the prompt in its source.")
    messages: list[RegenMessage] = Field(description="The full regenerated conversation, in order.")
    input_ids: list[int] = Field(description="Exact token ids: the last turn's prompt ids + its generated ids.")
    loss_mask: list[bool] = Field(description="True exactly on tokens the target generated (reasoning included).")
    finish_reason: str = Field(description="Finish reason of the last answered turn ('length' if cut at seq_len).")
    truncated: bool = Field(description="True when the sequence was cut at the recipe's seq_len.")
    seed: int = Field(description="The first turn's seed (each turn's seed is in `turns`).")
    sampling: SamplingRecord
    turns: list[RegenTurn] = Field(description="One entry per answered user turn.")
    target_model: str = Field(description="Target model as given in the recipe (hub id, directory or tiny:*).")
    target_revision: str | None = Field(None, description="Target hub revision, if any.")
    num_tokens: int = Field(ge=0, description="len(input_ids).")
    num_prompt_tokens: int = Field(ge=0, description="Tokens with loss_mask False.")
    num_generated_tokens: int = Field(ge=0, description="Tokens with loss_mask True.")

    @model_validator(mode="after")
    def _consistent(self) -> RegenRecord:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and loss_mask ({len(self.loss_mask)}) differ")
        gen = sum(self.loss_mask)
        if (self.num_tokens, self.num_generated_tokens, self.num_prompt_tokens) != (
            len(self.input_ids),
            gen,
            len(self.input_ids) - gen,
        ):
            raise ValueError("token counts disagree with input_ids / loss_mask")
        return self


_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])


def _struct(model: type[StrictModel], ints: pa.DataType, **exceptions: pa.DataType) -> pa.StructType:
    """An Arrow struct of `model`'s fields in the model's order, so the record and its columns cannot drift:
    floats float64, bools bool, strings string, ints `ints` unless `exceptions` names another type."""
    by_type: dict[Any, pa.DataType] = {float: pa.float64(), int: ints, bool: pa.bool_(), str: pa.string()}
    return pa.struct(
        [(name, exceptions.get(name) or by_type[field.annotation]) for name, field in model.model_fields.items()]
    )


_SAMPLING = _struct(SamplingRecord, ints=pa.int64())
_TURN = _struct(RegenTurn, ints=pa.int32(), seed=pa.int64())  # seeds are 64-bit (derive_seed)

# Column order follows RegenRecord's field order. input_ids are int32 (every vocabulary fits; half the
# bytes of int64), loss_mask is bool, as the hidden-state store and the trainer use.
REGEN_ARROW_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_index", pa.int64()),
        ("messages", pa.list_(_MESSAGE)),
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.bool_())),
        ("finish_reason", pa.string()),
        ("truncated", pa.bool_()),
        ("seed", pa.int64()),
        ("sampling", _SAMPLING),
        ("turns", pa.list_(_TURN)),
        ("target_model", pa.string()),
        ("target_revision", pa.string()),
        ("num_tokens", pa.int64()),
        ("num_prompt_tokens", pa.int64()),
        ("num_generated_tokens", pa.int64()),
    ],
    metadata={"dspark.kind": REGEN_KIND, "dspark.regen_schema_version": str(REGEN_SCHEMA_VERSION)},
)


def record_to_row(record: RegenRecord) -> dict[str, Any]:
    """The dict the shard writer takes (keys = REGEN_ARROW_SCHEMA names)."""
    return record.model_dump(mode="python")


def row_to_record(row: dict[str, Any]) -> RegenRecord:
    """Validate a row read back from a shard."""
    return RegenRecord.model_validate(row)


class RegenSummary(StrictModel):
    """`<regen dir>/summary.json`: flat figures for `dspark demo` and humans."""

    schema_version: int = Field(REGEN_SCHEMA_VERSION, description="Version of this summary format.")
    stage: Literal["regen"] = "regen"
    cached: bool = Field(description="True when the output was already complete and nothing was run.")
    complete: bool = Field(description="Every assigned prompt is in a shard or in errors.jsonl.")
    backend: str = Field(description="vllm or openai.")
    fingerprint: str = Field(description="Fingerprint hash of the dataset (manifest.fingerprint_hash).")
    num_shards: int = Field(description="Machines the prompts were split across.")
    shard_index: int = Field(description="This machine's part.")
    assigned: int = Field(description="Prompts assigned to this part (selected rows of the source).")
    samples: int = Field(description="Records in the shards.")
    errors: int = Field(description="Prompts rejected or failed (errors.jsonl lines).")
    errors_by_reason: dict[str, int] = Field(description="Errors counted by reason.")
    prompt_tokens: int = Field(description="Tokens with loss_mask 0, over all records.")
    generated_tokens: int = Field(description="Tokens with loss_mask 1, over all records.")
    retokenized_turns: int = Field(description="Turns whose template re-rendering changed earlier token ids.")
    truncated: int = Field(description="Records cut at seq_len.")
    run_samples: int = Field(description="Records produced by this invocation (0 when cached).")
    run_generated_tokens: int = Field(description="Tokens generated by this invocation.")
    elapsed_s: float = Field(description="Wall time of this invocation's generation phase.")
    tokens_per_s: float = Field(description="run_generated_tokens / elapsed_s.")
