"""One derivation of every random choice from the run seed, the same on every backend.

Same scenario and seed give the same workload bytes (the same SHA-256) in the simulator,
through the proxy and in the lab, and the same loss pattern for the same packet sequence.
"""

from __future__ import annotations

import random


def derive_rng(seed: int, name: str) -> random.Random:
    """A generator for one component, derived from the run seed and the component's name."""
    return random.Random(f"{seed}/{name}")


def workload_seed(seed: int, client: int = 0) -> int:
    """The seed of client number `client`'s workload content (DOWNLOAD's body, ECHO's)."""
    return seed * 1000 + client


def link_rng(seed: int, link: str, direction: str) -> random.Random:
    """The loss and jitter generator of one direction ("up" or "down") of a link."""
    return derive_rng(seed, f"link/{link}/{direction}")
