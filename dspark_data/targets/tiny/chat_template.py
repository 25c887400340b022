"""The tiny target's special tokens and its GLM-4.5/GLM-5-style chat template.

The real target (GLM-5.x) renders a conversation as
`[gMASK]<sop><|system|>\\nSYS<|user|>\\nQ<|assistant|>\\n<think>REASONING</think>\\nANSWER`; the tiny target
copies that layout so regen, loss masks and reasoning handling are exercised on the same structure.
Differences, chosen for a clean training signal: the assistant turn ends with `<|endoftext|>` (EOS), and
reasoning is rendered for every assistant turn (not only the last), so a rendered prefix of a
conversation is always a prefix of the rendered whole.

The assistant part after `<|assistant|>\\n` is wrapped in `{% generation %}` so transformers'
`return_assistant_tokens_mask=True` marks exactly the tokens the model generates; with
`add_generation_prompt=True` the prompt ends at `<|assistant|>\\n` and the model writes
`<think>...</think>\\n...<|endoftext|>`.
"""

from __future__ import annotations

EOS = "<|endoftext|>"
GMASK = "[gMASK]"
SOP = "<sop>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
THINK = "<think>"
END_THINK = "</think>"
MASK = "<|mask|>"

# Order fixes the ids: <|endoftext|> is 0, ..., <|mask|> is 8.
SPECIAL_TOKENS: tuple[str, ...] = (EOS, GMASK, SOP, SYSTEM, USER, ASSISTANT, THINK, END_THINK, MASK)

# A message may carry its reasoning in `reasoning_content`, or inline as "<think>R</think>content"
# (what a reasoning model returns when no reasoning parser is set); both render the same.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else '' -%}"
    "{%- if message['role'] == 'system' -%}"
    "<|system|>\n{{ content }}"
    "{%- elif message['role'] == 'user' -%}"
    "<|user|>\n{{ content }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set reasoning = message.get('reasoning_content') or '' -%}"
    "{%- if not reasoning and '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}"
    "{%- endif -%}"
    "<|assistant|>\n"
    "{% generation -%}"
    "<think>{{ reasoning.strip() }}</think>\n{{ content.strip() }}<|endoftext|>"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{ raise_exception('tiny target chat template: unknown role ' ~ message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif -%}"
)
