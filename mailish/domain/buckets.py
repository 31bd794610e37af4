"""Buckets: the unit of ownership that moves between workers.

An account's bucket is fixed when the account is created and never recomputed, so changing
the bucket count later only affects new accounts (a re-bucketing is a data migration, not a
config flip). The hash is BLAKE2b over the account id's bytes: stable across processes and
Python versions, unlike ``hash()``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from mailish.domain.ids import BucketNo, Epoch

MAX_BUCKETS = 65536


def bucket_for(account_id: uuid.UUID, buckets: int) -> BucketNo:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"bucket count must be 1..{MAX_BUCKETS}, not {buckets}")
    digest = hashlib.blake2b(account_id.bytes, digest_size=8).digest()
    return BucketNo(int.from_bytes(digest, "big") % buckets)


@dataclass(frozen=True, slots=True)
class BucketLease:
    """What a worker holds for one bucket: the right to write for it while ``epoch`` is current.

    The assigner (the operator in Kubernetes, the static assigner locally) hands these out; the
    store enforces them, so holding a stale lease is harmless — every write under it fails.
    """

    bucket: BucketNo
    owner: str
    epoch: Epoch

    def __post_init__(self) -> None:
        if self.bucket < 0:
            raise ValueError(f"bucket must be >= 0, not {self.bucket}")
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, not {self.epoch}")
        if not self.owner:
            raise ValueError("owner must not be empty")
