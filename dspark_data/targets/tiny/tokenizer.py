"""Train the tiny target's byte-level BPE tokenizer on local stdlib text, GLM-style special tokens.

Byte-level BPE (like GLM's and GPT-2's) round-trips any text. The vocabulary is small (2048 by default)
so the embedding and lm_head stay tiny and a draft vocab smaller than the target's is still meaningful.
Training reads a sorted, byte-capped file list on one thread's worth of input order, so the merges are
the same on every build with the same spec.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dspark_data.targets.tiny.chat_template import CHAT_TEMPLATE, EOS, MASK, SPECIAL_TOKENS
from dspark_data.targets.tiny.stdlib_corpus import iter_stdlib_text

TOKENIZER_DEFAULTS = {"vocab_size": 2048, "corpus_bytes": 4_000_000, "min_frequency": 2}


def train_tokenizer(vocab_size: int, corpus_bytes: int, min_frequency: int) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` whose first ids are `SPECIAL_TOKENS` in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_stdlib_text(corpus_bytes), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int):
    """Save as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json with the template).

    Returns the transformers tokenizer. `mask_token` is set so the draft's mask id is discoverable from
    tokenizer_config.json; `bos_token` stays unset because the chat template writes `[gMASK]<sop>` itself.
    """
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS, MASK)],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(out_dir))
    return hf_tok
