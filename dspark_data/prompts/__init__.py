"""Prompts: where regen's conversations come from, and how raw rows become clean prompts.

- `sources.py`: read rows from a hub dataset, a local JSONL/JSON/Parquet file or the embedded set.
- `normalize.py`: UltraChat / ShareGPT row -> `Prompt`, or a `Rejection` with a counted reason.
- `select.py`: deterministic choice of the first / seeded-random N rows and the split across machines.
- `embedded.py`, `eval_sets.py`: the built-in prompt sets.
"""
