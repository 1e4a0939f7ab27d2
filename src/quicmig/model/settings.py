"""Link settings as users write them (units in the key), mapped onto LinkProfile fields."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from quicmig.errors import InputError
from quicmig.model.topology import PROFILES, LinkProfile

# TOML key -> (LinkProfile field, factor from the user's unit to the field's unit)
LINK_KEYS: dict[str, tuple[str, float]] = {
    "delay_ms": ("delay", 1e-3),
    "jitter_ms": ("jitter", 1e-3),
    "loss_pct": ("loss", 1e-2),
    "burst_len": ("burst_len", 1.0),
    "rate_mbit": ("rate", 1e6),
    "queue_packets": ("queue", 1.0),
}


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: {value!r} is not a number")
    if not math.isfinite(value):  # TOML allows nan and inf; no setting means either
        raise InputError(f"{where}: {value!r} is not a finite number")
    return float(value)


def check_seconds(value: float | None, flag: str, *, zero: bool) -> None:
    """Refuse a time option that is negative (or zero, unless `zero`), NaN or infinite."""
    if value is None:
        return
    if not math.isfinite(value):
        raise InputError(f"{flag} {value:g}: give a finite number of seconds")
    if value < 0 or (value == 0 and not zero):
        raise InputError(f"{flag} {value:g}: must be {'>=' if zero else '>'} 0 seconds")


def changed_profile(
    current: LinkProfile, profile: str | None, settings: Iterable[tuple[str, Any]], where: str
) -> LinkProfile:
    """What a link-change makes of a link now at `current`: the named `profile` (or the
    current one), with `settings` on top."""
    base = current if profile is None else PROFILES[profile]
    return apply_link_settings(base, settings, where)


def apply_link_settings(
    profile: LinkProfile, settings: Iterable[tuple[str, Any]], where: str
) -> LinkProfile:
    """Return `profile` with user settings applied, validated; unknown keys are errors."""
    changes: dict[str, Any] = {}
    for key, value in settings:
        if key not in LINK_KEYS:
            allowed = ", ".join(LINK_KEYS)
            raise InputError(f"{where}.{key}: unknown link setting; allowed: {allowed}")
        name, factor = LINK_KEYS[key]
        if key == "rate_mbit" and value == 0:
            changes[name] = None  # 0 = unlimited
            continue
        amount = number(value, f"{where}.{key}")
        if key == "queue_packets" and not amount.is_integer():
            raise InputError(f"{where}.{key}: {value!r} is not a whole number of packets")
        changes[name] = int(amount) if key == "queue_packets" else amount * factor
    return replace(profile, **changes).validated(where)
