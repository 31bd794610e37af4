"""Typed identifiers, so an account id can never be passed where a folder id is expected."""

from __future__ import annotations

import uuid
from typing import NewType

AccountId = NewType("AccountId", uuid.UUID)
FolderId = NewType("FolderId", int)
MessageId = NewType("MessageId", int)
OperationId = NewType("OperationId", int)
BucketNo = NewType("BucketNo", int)
Epoch = NewType("Epoch", int)


def new_account_id() -> AccountId:
    return AccountId(uuid.uuid4())
