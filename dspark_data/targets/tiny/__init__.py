"""The tiny-target factory: builds the embedded `tiny:*` targets locally, apart from the real-target API.

No model hub is reachable in tests or the embedded demo, so these modules make a small target from text
every machine has: `build` (named specs, cached builds), `build_cache` (content-addressed build directory),
`stdlib_corpus` and `stdlib_chats` (training text), `tokenizer` (byte-level BPE), `chat_template`
(GLM-style special tokens), `architectures` (configs and init), `pretrain` (the short training run of
`tiny:trained`). The pipeline reaches them only through `dspark_data.targets.resolve_target`.
"""
