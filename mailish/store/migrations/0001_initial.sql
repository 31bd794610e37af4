-- mailish schema, version 1.
-- Every table that holds a user's data carries account_id and cascades from accounts, so
-- unlinking an account is one DELETE and no row can outlive its owner.

CREATE TABLE accounts (
    id                  uuid PRIMARY KEY,
    email               text NOT NULL CHECK (email <> ''),
    display_name        text,
    bucket              integer NOT NULL CHECK (bucket >= 0),
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'auth_invalid', 'disabled')),
    status_reason       text,
    provider            text,
    -- Connection settings: {"imap": {host, port, security}, "smtp": {...}, "quirks": {...}}
    settings            jsonb NOT NULL DEFAULT '{}'::jsonb,
    auth_kind           text NOT NULL DEFAULT 'password' CHECK (auth_kind IN ('password', 'oauth2')),
    -- AES-256-GCM ciphertext with the account id as associated data; never plaintext.
    credentials         bytea,
    credentials_key_id  text,
    -- Per-account change counter: bumped under this row's lock in the same transaction as the
    -- change it numbers, so /changes?since= has no gaps. changes_floor is the oldest modseq
    -- still answerable from the retained change log.
    modseq              bigint NOT NULL DEFAULT 0,
    changes_floor       bigint NOT NULL DEFAULT 0,
    -- Sync progress shown in the API and metrics.
    sync_state          text NOT NULL DEFAULT 'pending'
                        CHECK (sync_state IN ('pending', 'initial', 'idle', 'syncing', 'error', 'stopped')),
    messages_synced     bigint NOT NULL DEFAULT 0,
    messages_total      bigint NOT NULL DEFAULT 0,
    folders_synced      integer NOT NULL DEFAULT 0,
    folders_total       integer NOT NULL DEFAULT 0,
    last_error          text,
    last_sync_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));
CREATE INDEX accounts_bucket_idx ON accounts (bucket);

CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- SHA-256 of the bearer token; the token itself is shown once and never stored.
    token_hash    bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    label         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_tokens_account_idx ON api_tokens (account_id);

CREATE TABLE folders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    path            text NOT NULL,          -- decoded (UTF-8) full path
    raw_name        text NOT NULL,          -- as on the wire (modified UTF-7)
    name            text NOT NULL,          -- last path component
    delimiter       text,
    parent_id       bigint REFERENCES folders (id) ON DELETE SET NULL,
    role            text CHECK (role IN ('inbox', 'sent', 'drafts', 'trash', 'junk', 'archive',
                                         'all', 'flagged', 'important')),
    attributes      text[] NOT NULL DEFAULT '{}',
    selectable      boolean NOT NULL DEFAULT true,
    -- IMAP sync state (see mailish.domain.syncing): the server's view at the last checkpoint.
    uidvalidity     bigint,
    uidnext         bigint,
    highestmodseq   numeric(20, 0),         -- mod-sequences are unsigned 63-bit (RFC 7162)
    sync_phase      text NOT NULL DEFAULT 'new',
    initial_low_uid bigint,                 -- initial sync walks newest-first; resume below this
    resets          integer NOT NULL DEFAULT 0,
    flagged_reason  text,                   -- set when a breaker trips; sync skips the folder
    server_exists   integer NOT NULL DEFAULT 0, -- messages on the server at the last SELECT
    pending_op      bigint,                 -- a queued create/rename/delete not yet on IMAP
    deleting        boolean NOT NULL DEFAULT false, -- hidden while its DELETE is queued
    total           integer NOT NULL DEFAULT 0,
    unread          integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, path),
    UNIQUE (account_id, id)
);

-- Raw RFC 5322 bytes, byte-identical to the server's copy, stored once per account per hash.
-- Scoped by account so that unlinking deletes them by cascade and no cross-user dedup leaks.
CREATE TABLE message_blobs (
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    sha256      bytea NOT NULL CHECK (length(sha256) = 32),
    size        integer NOT NULL CHECK (size >= 0),
    data        bytea COMPRESSION lz4 NOT NULL,  -- lz4: ~10x cheaper than pglz to write
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, sha256)
);

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    folder_id       bigint NOT NULL,
    -- Server UID; negative (-id) while a move queued by the user has not reached the server.
    uid             bigint NOT NULL CHECK (uid <> 0),
    -- Survives moves and UIDVALIDITY resets: EMAILID (RFC 8474), else X-GM-MSGID, else a
    -- content key derived from the raw bytes.
    stable_id       text NOT NULL,
    sha256          bytea NOT NULL,
    size            integer NOT NULL,
    flags           text[] NOT NULL DEFAULT '{}',
    seen            boolean NOT NULL DEFAULT false,
    flagged         boolean NOT NULL DEFAULT false,
    server_modseq   numeric(20, 0),
    internaldate    timestamptz,
    sent_date       timestamptz,
    sort_date       timestamptz NOT NULL,
    subject         text NOT NULL DEFAULT '',
    from_addrs      jsonb NOT NULL DEFAULT '[]'::jsonb,
    to_addrs        jsonb NOT NULL DEFAULT '[]'::jsonb,
    cc_addrs        jsonb NOT NULL DEFAULT '[]'::jsonb,
    header_message_id text,
    in_reply_to     text[] NOT NULL DEFAULT '{}',
    references_ids  text[] NOT NULL DEFAULT '{}',
    snippet         text NOT NULL DEFAULT '',
    has_attachments boolean NOT NULL DEFAULT false,
    parse_defects   text[] NOT NULL DEFAULT '{}',
    search          tsvector,
    -- Text waiting to be indexed into `search`. Indexing (to_tsvector + GIN) is the single
    -- most expensive part of storing a message, so a background indexer does it after the
    -- batch commits instead of inside the sync's critical path.
    search_pending  text COMPRESSION lz4,
    -- Set when the server expunged it. The row lingers briefly as a tombstone so that a move
    -- (expunge here, appear there) keeps the message's id; sync purges old tombstones.
    expunged_at     timestamptz,
    -- Where a message moved by the user (applied locally, queued for IMAP) still is on the
    -- server; sync treats it as present there until the operation is applied or reverted.
    pending_from_folder bigint,
    pending_from_uid    bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, folder_id) REFERENCES folders (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, sha256) REFERENCES message_blobs (account_id, sha256)
);
-- UIDs are unique among live messages; tombstones keep their old UID for the record.
CREATE UNIQUE INDEX messages_folder_uid_key ON messages (folder_id, uid) WHERE expunged_at IS NULL;
CREATE INDEX messages_listing_idx ON messages (folder_id, sort_date DESC, id DESC)
    WHERE expunged_at IS NULL;
CREATE INDEX messages_stable_idx ON messages (account_id, stable_id);
CREATE INDEX messages_tombstones_idx ON messages (account_id, expunged_at)
    WHERE expunged_at IS NOT NULL;
CREATE INDEX messages_header_id_idx ON messages (account_id, header_message_id);
CREATE INDEX messages_search_idx ON messages USING gin (search);
CREATE INDEX messages_index_queue_idx ON messages (account_id, id) WHERE search_pending IS NOT NULL;

CREATE TABLE attachments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_id    bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part_id       text NOT NULL,           -- IMAP section number, e.g. "2" or "1.3"
    filename      text,
    content_type  text NOT NULL,
    size          bigint NOT NULL,
    content_id    text,
    inline        boolean NOT NULL DEFAULT false,
    UNIQUE (message_id, part_id)
);

-- Files uploaded for composing; the bytes live in message_blobs.
CREATE TABLE uploads (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    sha256        bytea NOT NULL,
    filename      text NOT NULL,
    content_type  text NOT NULL,
    size          bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, sha256) REFERENCES message_blobs (account_id, sha256)
);

-- User changes queued by the API and applied over IMAP by the owning worker, in id order
-- per account. `revert` holds what undoes the optimistic local change on permanent failure.
CREATE TABLE operations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind         text NOT NULL,
    payload      jsonb NOT NULL,
    revert       jsonb,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    not_before   timestamptz NOT NULL DEFAULT now(),
    error        text,
    epoch        bigint,                  -- the fencing epoch of the worker that last ran it
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operations_open_idx ON operations (account_id, id)
    WHERE status IN ('pending', 'running');

-- Outgoing mail. The row is durable before the API answers 202; the worker claims it under
-- its bucket epoch, and the Message-ID is fixed at compose time so an ambiguous SMTP ack can
-- be resolved by searching Sent.
CREATE TABLE outbox (
    id                 uuid PRIMARY KEY,
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    idempotency_key    text NOT NULL,
    request_hash       bytea NOT NULL,
    header_message_id  text NOT NULL,
    raw_sha256         bytea NOT NULL,
    envelope_from      text NOT NULL,
    recipients         text[] NOT NULL CHECK (cardinality(recipients) > 0),
    accepted           text[] NOT NULL DEFAULT '{}',
    refused            jsonb NOT NULL DEFAULT '{}'::jsonb,
    send_at            timestamptz NOT NULL DEFAULT now(),
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'sending', 'sent', 'partially_sent',
                                         'failed', 'unknown', 'cancelled')),
    draft_message_id   bigint,
    attempts           integer NOT NULL DEFAULT 0,
    claimed_epoch      bigint,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    UNIQUE (account_id, idempotency_key),
    FOREIGN KEY (account_id, raw_sha256) REFERENCES message_blobs (account_id, sha256)
);
CREATE INDEX outbox_due_idx ON outbox (send_at) WHERE status IN ('queued', 'unknown');

-- Drafts being edited from the app: the latest composed version of each, by Message-ID.
-- The worker APPENDs a version to the Drafts folder before removing older ones, so a crash
-- never loses a draft; sync shows them in the Drafts folder like any message.
CREATE TABLE drafts (
    account_id     uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id             text NOT NULL,           -- the draft's Message-ID (kept across versions)
    raw_sha256     bytea NOT NULL,
    envelope_from  text NOT NULL,
    recipients     text[] NOT NULL DEFAULT '{}',
    version        integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, id),
    FOREIGN KEY (account_id, raw_sha256) REFERENCES message_blobs (account_id, sha256)
);

-- The per-account change log behind /v1/changes. One modseq per committing transaction.
CREATE TABLE changes (
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    modseq       bigint NOT NULL,
    object_kind  text NOT NULL CHECK (object_kind IN ('message', 'folder')),
    object_id    bigint NOT NULL,
    change       text NOT NULL CHECK (change IN ('created', 'updated', 'destroyed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, modseq, object_kind, object_id)
);

-- Fencing: the newest epoch each bucket was claimed at. Written by workers only through
-- mailish.store.claims; every write on behalf of a bucket checks it in the same transaction.
CREATE TABLE bucket_claims (
    bucket      integer PRIMARY KEY CHECK (bucket >= 0),
    owner       text NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch >= 1),
    claimed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE push_subscriptions (
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id    text NOT NULL CHECK (device_id <> ''),
    endpoint     text NOT NULL,
    failures     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, device_id)
);
