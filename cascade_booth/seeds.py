"""Every random draw's seed: a hash of what it is for, so it depends on nothing but its parts."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 56-bit seed from ``parts`` (e.g. ``derive_seed("class-image", seed, i)``), the same on every machine."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "little")
