"""What every HTTP client of dspark shares: server URLs, the endpoint pool and the backoff schedule.

Four clients talk HTTP (regen's openai backend, the trainer's stream client, the gateway's upstream calls,
live eval); their failure semantics differ (what is retried, for how long, what is raised), so each keeps
its own loop. What they must not each write again lives here:
- `urls`: one way to turn a user's `--endpoint`/`--server` into a server root and an API address;
- `retry`: the exponential backoff with jitter, and `Retry-After`;
- `endpoints`: an endpoint's health (paused after failures for a backoff that grows, cleared by a success)
  and the pool's choices (any up, least loaded, soonest back).
Standard library only: dspark_train imports it and never pulls a server stack through it.
"""
