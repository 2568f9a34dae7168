-- Tollgate's PostgreSQL schema: the same tables and constraints as the
-- SQLite one. Money is BIGINT micro-dollars; times are BIGINT microseconds
-- since the Unix epoch (UTC). Plain SQL that CockroachDB and YugabyteDB run
-- too: no sequences, no triggers, no advisory locks. Ids and actions compare
-- bytewise (COLLATE "C"), as in SQLite, so pages and ties order the same.

CREATE TABLE accounts (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    billing_mode TEXT NOT NULL DEFAULT 'prepaid' CHECK (billing_mode IN ('prepaid', 'invoice')),
    credit_limit_micros BIGINT NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    available_micros BIGINT NOT NULL DEFAULT 0,
    held_micros BIGINT NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    journal_sequence BIGINT NOT NULL DEFAULT 0,
    cycle_start BIGINT NOT NULL,
    cycle_spend_micros BIGINT NOT NULL DEFAULT 0,
    previous_cycle_spend_micros BIGINT NOT NULL DEFAULT 0,
    lifetime_spend_micros BIGINT NOT NULL DEFAULT 0,
    cycle_savings_micros BIGINT NOT NULL DEFAULT 0,
    lifetime_savings_micros BIGINT NOT NULL DEFAULT 0,
    personal_discount_percent BIGINT CHECK (personal_discount_percent BETWEEN 0 AND 100),
    -- Second line of defence: the application refuses such debits first.
    CHECK (available_micros + credit_limit_micros >= 0)
);

-- Per-action prices agreed by Sales; they win over tiers and discounts.
CREATE TABLE account_prices (
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    action TEXT COLLATE "C" NOT NULL,
    price_micros BIGINT NOT NULL CHECK (price_micros >= 0),
    PRIMARY KEY (account_id, action)
);

-- One row per money movement. `sequence` numbers an account's journal
-- 1, 2, 3 … without gaps, so the chain of balances can be checked; the
-- unique constraint is the backstop if two writers ever skip the row lock.
CREATE TABLE journal_transactions (
    id TEXT COLLATE "C" PRIMARY KEY,
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    sequence BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount_micros BIGINT NOT NULL,
    available_amount_micros BIGINT NOT NULL,
    available_after_micros BIGINT NOT NULL,
    held_after_micros BIGINT NOT NULL,
    description TEXT NOT NULL,
    reference_id TEXT COLLATE "C",
    idempotency_key TEXT,
    request_fingerprint TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, sequence)
);

-- One charge per key even across processes: the backstop of the row lock.
CREATE UNIQUE INDEX journal_transactions_idempotency
    ON journal_transactions (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Double entry: each transfer debits one ledger account and credits another
-- by the same positive amount, so every transaction sums to zero.
CREATE TABLE transfers (
    transaction_id TEXT COLLATE "C" NOT NULL REFERENCES journal_transactions (id),
    leg BIGINT NOT NULL,
    from_account TEXT NOT NULL,
    to_account TEXT NOT NULL,
    amount_micros BIGINT NOT NULL CHECK (amount_micros > 0),
    CHECK (from_account <> to_account),
    PRIMARY KEY (transaction_id, leg)
);

CREATE TABLE usage_records (
    transaction_id TEXT COLLATE "C" PRIMARY KEY REFERENCES journal_transactions (id),
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    action TEXT COLLATE "C" NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_micros BIGINT NOT NULL CHECK (unit_price_micros >= 0),
    unit_list_price_micros BIGINT NOT NULL CHECK (unit_list_price_micros >= 0),
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    list_amount_micros BIGINT NOT NULL CHECK (list_amount_micros >= 0),
    savings_micros BIGINT NOT NULL CHECK (savings_micros >= 0),
    price_source TEXT NOT NULL,
    tier_id TEXT NOT NULL,
    price_book_version TEXT NOT NULL,
    hold_id TEXT COLLATE "C",
    created_at BIGINT NOT NULL
);

CREATE INDEX usage_records_by_account_time ON usage_records (account_id, created_at);

CREATE TABLE holds (
    id TEXT COLLATE "C" PRIMARY KEY,
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    action TEXT COLLATE "C" NOT NULL,
    amount_micros BIGINT NOT NULL CHECK (amount_micros > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'captured', 'voided', 'expired')),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    placed_transaction_id TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES journal_transactions (id),
    closed_transaction_id TEXT COLLATE "C" REFERENCES journal_transactions (id),
    closed_at BIGINT,
    captured_micros BIGINT,
    CHECK ((status = 'active') = (closed_transaction_id IS NULL))
);

CREATE INDEX holds_active_by_expiry ON holds (expires_at) WHERE status = 'active';
CREATE INDEX holds_active_by_account ON holds (account_id, expires_at) WHERE status = 'active';

CREATE TABLE api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE audit_log (
    id TEXT COLLATE "C" PRIMARY KEY,
    actor TEXT NOT NULL,
    action TEXT COLLATE "C" NOT NULL,
    account_id TEXT COLLATE "C",
    before_state TEXT,
    after_state TEXT,
    created_at BIGINT NOT NULL
);
