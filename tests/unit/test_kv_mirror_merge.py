"""`KeyMirror`'s merge: entries from the watch's replay and from listings, in any order, end at
what the bucket holds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.bus.mirror import KeyMirror

pytestmark = pytest.mark.unit


def _mirror() -> KeyMirror:
    return KeyMirror(cast(Any, SimpleNamespace(_name="tm_plans")), "policy.")


def test_an_older_revision_never_replaces_a_newer_one() -> None:
    mirror = _mirror()
    mirror._merge("policy.a", 7, b"new")
    mirror._merge("policy.a", 3, b"old")
    assert mirror.values() == {"policy.a": b"new"}


def test_an_old_put_replayed_after_a_delete_does_not_bring_the_key_back() -> None:
    mirror = _mirror()
    mirror._merge("policy.a", 9, None)
    mirror._merge("policy.a", 4, b"v1")
    assert mirror.values() == {}
    mirror._merge("policy.a", 12, b"v2")
    assert mirror.values() == {"policy.a": b"v2"}
