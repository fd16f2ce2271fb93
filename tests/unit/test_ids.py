"""Job ids from a pool of random bytes: still version-4 UUIDs, never repeated across refills."""

from __future__ import annotations

import uuid

from inferd.store.ids import RandomIds


def test_ids_are_distinct_version_4_uuids_across_pool_refills() -> None:
    ids = RandomIds()
    drawn = [ids.uuid4() for _ in range(1000)]  # four refills of the 256-id pool
    assert len(set(drawn)) == 1000
    assert {(u.version, u.variant) for u in drawn} == {(4, uuid.RFC_4122)}
    assert drawn[0] != RandomIds().uuid4()  # another pool, other bytes
