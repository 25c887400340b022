"""dspark_data: prompts, regeneration, target backends, hidden-state capture, the shard store,
draft vocab, streaming."""
