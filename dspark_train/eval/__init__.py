"""Evaluation: acceptance measured offline (simulated speculative decoding) or from a live vLLM server.

See docs/evaluation.md. Offline: `run_offline_eval(EvalOptions(...))`. Live: `run_live_eval(LiveOptions(...))`
(one set: `measure_server(url, conversations, ChatRequests(...))`).
Both produce `AcceptanceCounts`, vLLM's counters, and print the seed card's table (`markdown_table`).
"""

from dspark_train.eval.acceptance import AcceptanceCounts, markdown_table, max_abs_rate_diff
from dspark_train.eval.live import LiveOptions, run_live_eval
from dspark_train.eval.offline import EvalOptions, run_offline_eval
from dspark_train.eval.prompts import PromptSet, load_prompt_set
from dspark_train.eval.server import ServerRun, measure_server, spec_counts
from dspark_train.eval.speculative import SamplingParams, speculate

__all__ = [
    "AcceptanceCounts",
    "EvalOptions",
    "LiveOptions",
    "PromptSet",
    "SamplingParams",
    "ServerRun",
    "load_prompt_set",
    "markdown_table",
    "max_abs_rate_diff",
    "measure_server",
    "run_live_eval",
    "run_offline_eval",
    "spec_counts",
    "speculate",
]
