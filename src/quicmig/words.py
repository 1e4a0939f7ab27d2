"""Counted nouns for messages: `1 run`, `4 runs`, `1 address`, `2 addresses`."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count noun`, with the plural form (`noun + "s"` unless given) when count is not 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
