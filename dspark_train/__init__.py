"""dspark_train: the DSpark draft model, losses, data over shards, the training loop, export and evaluation.

Never imports vLLM: it reads hidden states through dspark_data.store only.
"""
