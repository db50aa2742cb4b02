"""Prices from data/pricing.json and token counts from a tokenizer that works offline."""

import subprocess
import sys

import pytest

from labkit.pricing import PriceTable, cost
from labkit.tokens import count_messages, count_text


def test_cost_uses_input_cached_and_output_prices():
    table = PriceTable.load()
    price = table.price("gpt-4o")
    expected = (800 * price.input + 200 * price.cached_input + 500 * price.output) / 1_000_000
    assert cost("gpt-4o", 1000, 500, cached_tokens=200) == pytest.approx(expected)


def test_batch_is_discounted():
    assert cost("gpt-4o", 1000, 500, batch=True) == pytest.approx(cost("gpt-4o", 1000, 500) / 2)


def test_dated_snapshot_uses_its_family_price():
    assert cost("gpt-4o-2024-08-06", 10, 10) == cost("gpt-4o", 10, 10)


def test_unknown_model_has_no_cost():
    assert cost("my-local-llama", 10, 10) is None


def test_snapshot_names_resolved_from_answers_are_remembered_within_a_bound():
    table = PriceTable.load()
    names = [f"gpt-4o-mini-{i}" for i in range(3000)]  # more distinct names than the table remembers
    assert all(table.price(name) == table.price("gpt-4o-mini") for name in names)
    assert table.price(names[0]) == table.price("gpt-4o-mini")  # asked again: the same answer
    assert len(table._snapshots) <= 1024


def test_price_table_names_its_source_and_date():
    table = PriceTable.load()
    assert table.source and table.as_of


def test_token_counts_are_real_bpe_not_len_over_4():
    assert count_text("Hello world", "gpt-4o") == 2
    assert count_text("你好世界", "gpt-4o") != len("你好世界") // 4


def test_chat_framing_is_counted():
    assert count_messages([{"role": "user", "content": "Hello world"}], "gpt-4o") == 2 + 1 + 3 + 3


def test_tokenizer_works_with_the_network_off():
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('network is off')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
        "from labkit.tokens import count_text\n"
        "assert count_text('offline tokenizer', 'gpt-4o') > 0\n"
        "assert count_text('offline tokenizer', 'gpt-3.5-turbo') > 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
