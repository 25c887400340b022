"""The embedded prompt set: >= 500 chat prompts in UltraChat's schema, generated without any download.

Why: the tiny demo and the tests need a regen input that exists on every machine. Prompts are built
from templates crossed with material written into this file (stdlib modules and functions, small code
snippets, programming tasks, everyday topics), so the set is identical on every machine and Python
version. The order is a seeded shuffle, so "the first N" is a mix of every kind.

Row schema (UltraChat): `{"prompt": str, "prompt_id": str, "messages": [{"role", "content"}, ...]}`;
`prompt` is the first user message, `prompt_id` the sha256 of the messages, and multi-turn rows end
with a user turn (user / assistant / user) so regen answers the last one.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from typing import Any

SEED = 20240601

# (module, functions): real stdlib names, written out so the set does not depend on the local Python.
MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("os.path", ("join", "splitext", "basename", "exists")),
    ("json", ("dumps", "loads", "dump")),
    ("re", ("match", "sub", "findall", "compile")),
    ("itertools", ("chain", "groupby", "islice", "product")),
    ("functools", ("lru_cache", "partial", "reduce")),
    ("collections", ("Counter", "defaultdict", "namedtuple", "deque")),
    ("pathlib", ("Path.glob", "Path.read_text", "Path.mkdir")),
    ("subprocess", ("run", "check_output")),
    ("datetime", ("datetime.strptime", "timedelta")),
    ("hashlib", ("sha256", "md5")),
    ("random", ("shuffle", "choice", "sample")),
    ("shutil", ("copyfile", "rmtree", "move")),
    ("textwrap", ("dedent", "fill", "wrap")),
    ("heapq", ("heappush", "heappop", "nlargest")),
    ("bisect", ("bisect_left", "insort")),
    ("math", ("isclose", "gcd", "floor")),
    ("statistics", ("mean", "median", "stdev")),
    ("csv", ("reader", "DictWriter")),
    ("argparse", ("ArgumentParser.add_argument", "ArgumentParser.parse_args")),
    ("logging", ("getLogger", "basicConfig")),
    ("typing", ("Optional", "TypedDict")),
    ("dataclasses", ("dataclass", "field", "asdict")),
    ("contextlib", ("contextmanager", "suppress")),
    ("threading", ("Lock", "Thread.join")),
    ("asyncio", ("gather", "run", "sleep")),
    ("urllib.parse", ("urlparse", "quote")),
    ("tempfile", ("mkdtemp", "NamedTemporaryFile")),
    ("zipfile", ("ZipFile.extractall", "ZipFile.write")),
    ("sqlite3", ("connect", "Cursor.execute")),
    ("struct", ("pack", "unpack")),
)

SNIPPETS: tuple[str, ...] = (
    "def square(x):\n    return x * x",
    "def is_even(n):\n    return n % 2 == 0",
    "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
    "def count_vowels(text):\n    return sum(1 for c in text.lower() if c in 'aeiou')",
    "def flatten(xs):\n    return [y for x in xs for y in x]",
    "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "def dedupe(items):\n    seen = set()\n    return [x for x in items if not (x in seen or seen.add(x))]",
    "def chunks(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]",
    "def word_freq(text):\n    counts = {}\n    for w in text.split():\n        counts[w] = counts.get(w, 0) + 1\n"
    "    return counts",
    "def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]",
    "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0",
    "def transpose(m):\n    return [list(row) for row in zip(*m)]",
    "def safe_div(a, b):\n    try:\n        return a / b\n    except ZeroDivisionError:\n        return None",
    "def read_lines(path):\n    with open(path) as f:\n        return [line.rstrip('\\n') for line in f]",
    "def merge(a, b):\n    out = dict(a)\n    out.update(b)\n    return out",
    "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
    "def argmax(xs):\n    return max(range(len(xs)), key=xs.__getitem__)",
    "def title_case(s):\n    return ' '.join(w.capitalize() for w in s.split())",
    "def running_sum(xs):\n    total, out = 0, []\n    for x in xs:\n        total += x\n        out.append(total)\n"
    "    return out",
)

TASKS: tuple[str, ...] = (
    "checks whether a string is a valid IPv4 address",
    "returns the n-th prime number",
    "merges two sorted lists into one sorted list",
    "counts the lines of every .py file in a directory",
    "removes duplicate lines from a text file while keeping their order",
    "converts a temperature from Celsius to Fahrenheit",
    "finds the longest common prefix of a list of strings",
    "parses a CSV file into a list of dictionaries",
    "computes the median of a list of numbers",
    "rotates a list by k positions",
    "checks whether two strings are anagrams",
    "returns the word that occurs most often in a text",
    "validates that brackets in a string are balanced",
    "converts a Roman numeral to an integer",
    "groups a list of words by their first letter",
    "computes the factorial of n iteratively",
    "retries a function call up to three times on exception",
    "measures how long another function takes to run",
    "splits a list into training and test parts with a given ratio",
    "formats a number of bytes as a human-readable size",
    "returns all permutations of a short string",
    "computes the dot product of two vectors",
    "reads a JSON file and returns one key's value with a default",
    "finds all email addresses in a text with a regular expression",
    "implements binary search on a sorted list",
    "compresses a string with run-length encoding",
    "checks whether a year is a leap year",
    "returns the Levenshtein distance between two strings",
    "sums the digits of an integer",
    "produces the first n rows of Pascal's triangle",
    "caches the results of an expensive function in a dictionary",
    "walks a directory tree and lists files larger than 1 MB",
    "converts snake_case names to camelCase",
    "deep-merges two nested dictionaries",
    "returns the k largest numbers of a list",
    "checks whether a number is a perfect square",
    "normalises whitespace in a paragraph",
    "builds a histogram of word lengths",
    "transposes a matrix given as a list of lists",
    "returns the intersection of two lists without duplicates",
)

TOPICS: tuple[str, ...] = (
    "writing readable code", "learning a new programming language", "staying focused while studying",
    "preparing for a job interview", "keeping a small vegetable garden", "saving money on groceries",
    "planning a weekend hiking trip", "improving sleep quality", "writing a clear email", "giving a short talk",
    "organising a shared kitchen", "reducing screen time", "starting to run", "learning to cook rice",
    "reviewing a pull request", "writing unit tests", "naming variables", "debugging a slow program",
    "backing up personal files", "choosing a strong password", "reading more books", "taking useful notes",
    "working from home", "teaching a child to ride a bike", "caring for a houseplant", "packing light for travel",
    "keeping a journal", "learning to draw", "making a budget", "practising a musical instrument",
    "writing documentation", "running an effective meeting", "onboarding a new colleague",
    "handling a disagreement politely", "planning a birthday party", "brewing good coffee",
    "memorising vocabulary", "cleaning a laptop keyboard", "starting a compost bin", "estimating a project",
)  # fmt: skip

MODULE_TEMPLATES = (
    "What does `{module}.{fn}` do in Python? Give a short example.",
    "Explain how to use `{fn}` from the `{module}` module.",
    "When would I use `{module}.{fn}` instead of writing the logic myself?",
)
SNIPPET_TEMPLATES = (
    "Explain what this Python function does:\n\n```python\n{code}\n```",
    "Is there a bug or an edge case in this function?\n\n```python\n{code}\n```",
    "Add type hints and a docstring to this function:\n\n```python\n{code}\n```",
)
TASK_TEMPLATES = (
    "Write a Python function that {task}.",
    "How would you write a function that {task}? Explain the approach first.",
)
TOPIC_TEMPLATES = (
    "Give me three practical tips for {topic}.",
    "What are common mistakes people make when {topic}?",
    "Write a short paragraph about {topic}.",
)
COMPARE_TEMPLATE = "What is the difference between the `{a}` and `{b}` modules in Python?"
ARITH_TEMPLATES = (
    "A shop sells {a} notebooks a day for {b} days. How many notebooks does it sell in total?",
    "If I read {a} pages every day, how many days do I need for a {c}-page book?",
    "A recipe needs {a} grams of flour per loaf. How much flour do {b} loaves need?",
    "A bus has {c} seats and {a} passengers. How many seats are free?",
)
FOLLOW_UPS = (
    "Can you show a complete example?",
    "What happens if the input is empty?",
    "Can you make that shorter?",
    "How would I test this?",
)


def _row(messages: list[dict[str, str]]) -> dict[str, Any]:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"prompt": messages[0]["content"], "prompt_id": hashlib.sha256(blob).hexdigest(), "messages": messages}


def _single(text: str) -> dict[str, Any]:
    return _row([{"role": "user", "content": text}])


def _multi(first: str, answer: str, follow_up: str) -> dict[str, Any]:
    return _row(
        [
            {"role": "user", "content": first},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
        ]
    )


def _generate() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    rows: list[dict[str, Any]] = []
    for module, fns in MODULES:
        for fn in fns:
            for template in MODULE_TEMPLATES:
                rows.append(_single(template.format(module=module, fn=fn)))
    for code in SNIPPETS:
        rows.extend(_single(t.format(code=code)) for t in SNIPPET_TEMPLATES)
    for task in TASKS:
        rows.extend(_single(t.format(task=task)) for t in TASK_TEMPLATES)
    for topic in TOPICS:
        rows.extend(_single(t.format(topic=topic)) for t in TOPIC_TEMPLATES)
    names = [m for m, _ in MODULES]
    for i, a in enumerate(names):
        rows.append(_single(COMPARE_TEMPLATE.format(a=a, b=names[(i * 7 + 3) % len(names)])))
    for i in range(40):
        a, b, c = rng.randint(3, 60), rng.randint(2, 30), rng.randint(80, 400)
        rows.append(_single(ARITH_TEMPLATES[i % len(ARITH_TEMPLATES)].format(a=a, b=b, c=c)))
    # multi-turn: a canned first answer, then a follow-up question
    for i, (module, fns) in enumerate(MODULES):
        for fn in fns[:2]:
            first = MODULE_TEMPLATES[0].format(module=module, fn=fn)
            answer = f"`{module}.{fn}` is part of the standard library; here is what it does and how to call it."
            rows.append(_multi(first, answer, FOLLOW_UPS[i % len(FOLLOW_UPS)]))
    for i, topic in enumerate(TOPICS):
        first = TOPIC_TEMPLATES[0].format(topic=topic)
        answer = f"1. Start small. 2. Be consistent. 3. Review what worked when {topic}."
        rows.append(_multi(first, answer, "Can you expand on the second tip?" if i % 2 else "Why does that help?"))
    seen: set[str] = set()
    unique = [r for r in rows if not (r["prompt_id"] in seen or seen.add(r["prompt_id"]))]
    rng.shuffle(unique)
    return unique


@lru_cache(maxsize=1)
def _cached() -> tuple[str, ...]:
    return tuple(json.dumps(r, ensure_ascii=False) for r in _generate())


def load_embedded_prompts() -> list[dict[str, Any]]:
    """The embedded prompt set (a fresh list of fresh dicts each call; same content and order every time)."""
    return [json.loads(r) for r in _cached()]
