"""Chat conversations built from documented stdlib functions: the tiny target's instruction data.

The trained tiny target must behave like a chat reasoning model (answer in
`<think>...</think>\\nANSWER<|endoftext|>`) so that regen, loss masks and acceptance measurements see
realistic structure. Each conversation pairs a question about a real function (its source, signature
or name) with a short formulaic reasoning and an answer taken from its docstring, so the answer is
actually predictable from the prompt. Deterministic: the kind and wording of conversation i depend only
on (seed, i).
"""

from __future__ import annotations

import random
from typing import Any

from dspark_data.seeding import derive_seed
from dspark_data.targets.tiny.stdlib_corpus import FunctionDoc

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise Python expert.",
    "Answer clearly and briefly.",
)

# Phrasings overlap those of the embedded prompt set, so regen prompts look like training prompts.
EXPLAIN_TEMPLATES = (
    "Explain what this Python function does:\n\n```python\n{source}\n```",
    "What does the following function do?\n\n```python\n{source}\n```",
    "Read this code and tell me its purpose.\n\n```python\n{source}\n```",
    "Is there a bug or an edge case in this function?\n\n```python\n{source}\n```",
)
NAME_TEMPLATES = (
    "What does `{module}.{name}` do?",
    "What does `{module}.{name}` do in Python? Give a short example.",
    "Explain the `{name}` function of the `{module}` module.",
    "Explain how to use `{name}` from the `{module}` module.",
    "In Python's standard library, what is `{module}.{name}` for?",
    "When would I use `{module}.{name}` instead of writing the logic myself?",
)


def _first_paragraph(doc: str, limit: int = 320) -> str:
    para = doc.split("\n\n")[0].replace("\n", " ").strip()
    para = " ".join(para.split())
    return para if len(para) <= limit else para[:limit].rsplit(" ", 1)[0] + "..."


def _reasoning(fn: FunctionDoc, rng: random.Random) -> str:
    options = (
        f"The function is `{fn.name}` from the `{fn.module}` module, defined as `{fn.signature}`. "
        "Its docstring explains its purpose, so I will summarise that.",
        f"The user asks about `{fn.name}`. It lives in `{fn.module}`; I should describe what it does "
        "and mention how it is called.",
        f"`{fn.signature}` is in `{fn.module}`. I will explain it in one or two sentences.",
    )
    return rng.choice(options)


def _answer(fn: FunctionDoc) -> str:
    return f"`{fn.name}` (in `{fn.module}`): {_first_paragraph(fn.doc)}"


def conversation(fn: FunctionDoc, index: int, seed: int) -> list[dict[str, Any]]:
    """The index-th conversation about `fn`: messages with `reasoning_content` on assistant turns."""
    rng = random.Random(derive_seed(seed, "conversation", index))
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    kind = rng.random()
    if kind < 0.45 and len(fn.source) <= 900:
        user = rng.choice(EXPLAIN_TEMPLATES).format(source=fn.source)
    elif kind < 0.8:
        user = rng.choice(NAME_TEMPLATES).format(module=fn.module, name=fn.name)
    else:
        user = f"What is the signature of `{fn.name}` in `{fn.module}`?"
        messages += [
            {"role": "user", "content": user},
            {
                "role": "assistant",
                "reasoning_content": f"I need the def line of `{fn.name}`.",
                "content": f"It is declared as `{fn.signature}`.",
            },
        ]
        user = "And what does it do?"
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "reasoning_content": _reasoning(fn, rng), "content": _answer(fn)})
    return messages


def conversations(functions: list[FunctionDoc], count: int, seed: int) -> list[list[dict[str, Any]]]:
    """`count` conversations cycling over `functions` in a seeded order."""
    order = list(range(len(functions)))
    random.Random(derive_seed(seed, "function-order")).shuffle(order)
    return [conversation(functions[order[i % len(order)]], i, seed) for i in range(count)]
