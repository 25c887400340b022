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

# (name, args, docstring): HumanEval-style stubs.
CODE_STUBS: tuple[tuple[str, str, str], ...] = (
    ("has_close_elements", "numbers: list[float], threshold: float) -> bool",
     "Return True if any two numbers in the list are closer to each other than threshold."),
    ("separate_groups", "paren_string: str) -> list[str]",
     "Split a string of balanced, non-nested parenthesis groups into a list of the groups."),
    ("truncate_number", "number: float) -> float", "Return the decimal part of a positive float."),
    ("below_zero", "operations: list[int]) -> bool",
     "Given deposits and withdrawals starting from zero, return True if the balance ever falls below zero."),
    ("mean_absolute_deviation", "numbers: list[float]) -> float",
     "Return the mean absolute deviation of the numbers around their mean."),
    ("intersperse", "numbers: list[int], delimiter: int) -> list[int]",
     "Insert delimiter between every two consecutive elements of numbers."),
    ("filter_by_substring", "strings: list[str], substring: str) -> list[str]",
     "Return only the strings that contain substring."),
    ("sum_product", "numbers: list[int]) -> tuple[int, int]",
     "Return the sum and the product of the numbers; empty sum is 0 and empty product is 1."),
    ("rolling_max", "numbers: list[int]) -> list[int]", "Return the running maximum of the list."),
    ("make_palindrome", "string: str) -> str", "Return the shortest palindrome that begins with string."),
    ("string_xor", "a: str, b: str) -> str", "XOR two strings of 0s and 1s of equal length, as a string."),
    ("longest", "strings: list[str]) -> str | None",
     "Return the longest string, the first one on ties, or None for an empty list."),
    ("greatest_common_divisor", "a: int, b: int) -> int", "Return the greatest common divisor of a and b."),
    ("all_prefixes", "string: str) -> list[str]", "Return all prefixes of string from shortest to longest."),
    ("string_sequence", "n: int) -> str", "Return the numbers 0 to n inclusive separated by spaces."),
    ("count_distinct_characters", "string: str) -> int",
     "Count the distinct characters of string, ignoring case."),
    ("how_many_times", "string: str, substring: str) -> int",
     "Count how many times substring occurs in string, overlapping occurrences included."),
    ("sort_numbers", "numbers: str) -> str",
     "Sort a space-separated string of number words ('zero' to 'nine') from smallest to largest."),
    ("find_closest_elements", "numbers: list[float]) -> tuple[float, float]",
     "Return the two closest numbers of the list in increasing order."),
    ("rescale_to_unit", "numbers: list[float]) -> list[float]",
     "Linearly rescale the numbers so the smallest becomes 0 and the largest 1."),
    ("filter_integers", "values: list) -> list[int]", "Return only the integers among values."),
    ("strlen", "string: str) -> int", "Return the length of string without using len."),
    ("largest_divisor", "n: int) -> int", "Return the largest number smaller than n that divides n evenly."),
    ("factorize", "n: int) -> list[int]", "Return the prime factors of n from smallest to largest, with repeats."),
    ("remove_duplicates", "numbers: list[int]) -> list[int]",
     "Remove all elements that occur more than once, keeping the order of the rest."),
    ("flip_case", "string: str) -> str", "Swap lowercase and uppercase characters."),
    ("concatenate", "strings: list[str]) -> str", "Concatenate a list of strings into one string."),
    ("get_positive", "numbers: list[int]) -> list[int]", "Return only the positive numbers of the list."),
    ("is_prime", "n: int) -> bool", "Return True if n is a prime number."),
    ("unique_sorted", "values: list[int]) -> list[int]", "Return the sorted unique elements of values."),
    ("max_element", "values: list[int]) -> int", "Return the maximum element of a non-empty list."),
    ("fizz_buzz", "n: int) -> int",
     "Count the digit 7 in the integers below n that are divisible by 11 or 13."),
    ("sort_even", "values: list[int]) -> list[int]",
     "Sort the values at even indices, leaving odd indices unchanged."),
    ("triples_sum_to_zero", "values: list[int]) -> bool",
     "Return True if three distinct elements of the list sum to zero."),
    ("pairs_sum_to_zero", "values: list[int]) -> bool",
     "Return True if two distinct elements of the list sum to zero."),
    ("change_base", "x: int, base: int) -> str", "Return x written in the given base (base below 10)."),
    ("triangle_area", "a: float, h: float) -> float", "Return the area of a triangle from a side and its height."),
    ("median", "values: list[float]) -> float", "Return the median of the values."),
    ("is_palindrome", "text: str) -> bool", "Return True if text reads the same backwards."),
    ("modp", "n: int, p: int) -> int", "Return 2 to the power n modulo p, without overflow tricks."),
    ("remove_vowels", "text: str) -> str", "Return text with every vowel removed."),
    ("below_threshold", "values: list[int], t: int) -> bool", "Return True if every value is below t."),
    ("same_chars", "s0: str, s1: str) -> bool", "Return True if the two words use the same set of characters."),
    ("fib", "n: int) -> int", "Return the n-th Fibonacci number."),
    ("correct_bracketing", "brackets: str) -> bool",
     "Return True if every '<' in the string has a matching '>' after it."),
    ("monotonic", "values: list[int]) -> bool", "Return True if the list is monotonically increasing or decreasing."),
    ("common", "a: list[int], b: list[int]) -> list[int]", "Return the sorted unique elements common to a and b."),
    ("largest_prime_factor", "n: int) -> int", "Return the largest prime factor of n (n > 1, not prime)."),
)  # fmt: skip

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
