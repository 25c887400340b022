"""Small built-in evaluation prompt sets, and a reader for RedHatAI/speculator_benchmarks files.

Acceptance length depends on the kind of text (code is more predictable than prose), so evaluation
reports per set. `code` is HumanEval-like (complete a stub with signature and docstring), `math` is
word problems with numbers; both are generated deterministically and need no download. Rows use the
UltraChat schema of `dspark_data.prompts.embedded`.

`load_speculator_benchmarks(source, subset)` reads the public benchmark layout: one `<subset>.jsonl`
per category (HumanEval, math_reasoning, qa, question, rag, summarization, tool_call, translation,
writing), each line holding a `prompt` string (or a `messages` list). `source` is a local directory, a
single .jsonl file, or the dataset id looked up in the offline Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

SPECULATOR_BENCHMARKS_ID = "RedHatAI/speculator_benchmarks"
SPECULATOR_BENCHMARK_SUBSETS = (
    "HumanEval", "math_reasoning", "qa", "question", "rag", "summarization", "tool_call", "translation", "writing",
)  # fmt: skip

# (name, args, docstring): HumanEval-style stubs, a data table kept as data (dspark_data/assets/).
CODE_STUBS: tuple[tuple[str, str, str], ...] = tuple(
    (name, args, doc)
    for name, args, doc in json.loads((Path(__file__).resolve().parent.parent / "assets" / "eval_code_stubs.json")
                                      .read_text(encoding="utf-8"))
)

CODE_TEMPLATES = (
    'Complete this Python function:\n\n```python\ndef {name}({args}:\n    """{doc}"""\n```',
    'Complete the following function. Return only the code.\n\n```python\ndef {name}({args}:\n    """{doc}"""\n```',
)

MATH_TEMPLATES = (
    "Tom has {a} apples. He gives {b} to his sister and buys {c} more. How many apples does he have now?",
    "A train travels {a} km in {b} hours. At the same speed, how far does it travel in {c} hours?",
    "A class has {a} students. Each student needs {b} pencils, and pencils come in boxes of {c}. "
    "How many boxes are needed?",
    "A rectangle is {a} cm long and {b} cm wide. What is its area, and what is its perimeter?",
    "Sara saves {a} dollars a week. How many weeks does she need to save {c} dollars, if she already has {b}?",
    "A tank holds {c} litres and is filled at {a} litres per minute. How long does it take to fill "
    "if it already contains {b} litres?",
    "There are {a} red and {b} blue marbles in a bag. What is the probability of drawing a red one?",
    "A shirt costs {c} dollars and is discounted by {a} percent. What is the new price?",
)
MATH_SUFFIX = " Please reason step by step, and give the final answer at the end."
MATH_DRAWS_PER_TEMPLATE = 6


def _row(text: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"prompt": text, "prompt_id": hashlib.sha256(blob).hexdigest(), "messages": messages}


def code_prompts() -> list[dict[str, Any]]:
    """HumanEval-style completion prompts, one per stub (template alternates)."""
    return [
        _row(CODE_TEMPLATES[i % len(CODE_TEMPLATES)].format(name=name, args=args, doc=doc))
        for i, (name, args, doc) in enumerate(CODE_STUBS)
    ]


def math_prompts(seed: int = 7) -> list[dict[str, Any]]:
    """Word problems: each template filled with `MATH_DRAWS_PER_TEMPLATE` seeded number draws."""
    rng = random.Random(seed)
    rows = []
    for _ in range(MATH_DRAWS_PER_TEMPLATE):
        for template in MATH_TEMPLATES:
            a, b, c = rng.randint(2, 40), rng.randint(2, 20), rng.randint(50, 500)
            rows.append(_row(template.format(a=a, b=b, c=c) + MATH_SUFFIX))
    return rows


EVAL_SETS = {"code": code_prompts, "math": math_prompts}


def load_eval_set(name: str) -> list[dict[str, Any]]:
    """A built-in eval set by name (`code`, `math`), or `speculator_benchmarks:<subset>` (offline cache)."""
    if name in EVAL_SETS:
        return EVAL_SETS[name]()
    if name.startswith("speculator_benchmarks:"):
        return load_speculator_benchmarks(SPECULATOR_BENCHMARKS_ID, name.split(":", 1)[1])
    raise ValueError(
        f"unknown eval set {name!r}; built-in: {sorted(EVAL_SETS)}, or 'speculator_benchmarks:<subset>' with "
        f"subset in {list(SPECULATOR_BENCHMARK_SUBSETS)}"
    )


def _benchmark_file(source: str | Path, subset: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if subset is None:
            raise ValueError(f"{path} is a directory: name the subset (one of its <subset>.jsonl files)")
        candidate = path / f"{subset}.jsonl"
        if not candidate.is_file():
            have = sorted(p.stem for p in path.glob("*.jsonl"))
            raise FileNotFoundError(f"{candidate} not found; subsets present: {have}")
        return candidate
    if subset is None:
        raise ValueError(f"name a subset of {source}: one of {list(SPECULATOR_BENCHMARK_SUBSETS)}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(source), f"{subset}.jsonl", repo_type="dataset")
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    raise FileNotFoundError(
        f"{source}/{subset}.jsonl is neither a local path nor in the Hugging Face cache (offline). Download it "
        f"elsewhere (`huggingface-cli download {source} --repo-type dataset`) and pass the directory instead."
    )


def load_speculator_benchmarks(source: str | Path, subset: str | None = None) -> list[dict[str, Any]]:
    """Rows of one speculator_benchmarks-style JSONL file, in the UltraChat schema.

    Each line needs a `prompt` string or a `messages` list (OpenAI/UltraChat turns); a trailing assistant
    turn is dropped so the row ends with the user turn to answer. Bad lines raise with their line number.
    """
    path = _benchmark_file(source, subset)
    rows = []
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if isinstance(obj.get("messages"), list) and obj["messages"]:
            messages = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
            if messages[-1]["role"] == "assistant":
                messages = messages[:-1]
        elif isinstance(obj.get("prompt"), str):
            messages = [{"role": "user", "content": obj["prompt"]}]
        else:
            raise ValueError(f"{path}:{lineno}: expected a 'prompt' string or a 'messages' list, got {sorted(obj)}")
        first_user = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
        blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
        rows.append({"prompt": first_user, "prompt_id": hashlib.sha256(blob).hexdigest(), "messages": messages})
    return rows
