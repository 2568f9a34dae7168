-- Card payments: the processor customer and default card of each account,
-- top-ups, refunds, disputes and processed webhook events.
--
-- A refund or a lost dispute can take back money that was already spent, so a
-- prepaid balance may now go below zero, but only when the account is flagged
-- for attention (`attention_since`).

ALTER TABLE accounts ADD COLUMN attention_since BIGINT;
-- V1 left the floor CHECK unnamed; PostgreSQL names such a table constraint
-- `accounts_check`. No IF EXISTS: should the name ever differ, the migration
-- fails instead of quietly keeping the old floor beside the new one.
-- (An engine that names unnamed constraints otherwise needs this line adjusted.)
ALTER TABLE accounts DROP CONSTRAINT accounts_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_floor
    CHECK (available_micros + credit_limit_micros >= 0 OR attention_since IS NOT NULL);

CREATE TABLE payment_profiles (
    account_id TEXT COLLATE "C" PRIMARY KEY REFERENCES accounts (id),
    processor_customer_id TEXT UNIQUE,
    card_id TEXT,
    card_brand TEXT,
    card_last4 TEXT,
    card_exp_month BIGINT CHECK (card_exp_month BETWEEN 1 AND 12),
    card_exp_year BIGINT,
    card_added_at BIGINT,
    updated_at BIGINT NOT NULL,
    CHECK ((card_id IS NULL) = (card_brand IS NULL)
       AND (card_id IS NULL) = (card_last4 IS NULL)
       AND (card_id IS NULL) = (card_exp_month IS NULL)
       AND (card_id IS NULL) = (card_exp_year IS NULL)
       AND (card_id IS NULL) = (card_added_at IS NULL))
);

-- Hosted card-setup pages opened for an account; each is confirmed at most once,
-- so a replayed return link can never bring back a replaced card.
CREATE TABLE card_setups (
    session_id TEXT PRIMARY KEY,
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    card_id TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    CHECK ((card_id IS NULL) = (completed_at IS NULL))
);

CREATE TABLE topups (
    id TEXT COLLATE "C" PRIMARY KEY,
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    amount_micros BIGINT NOT NULL CHECK (amount_micros > 0 AND amount_micros % 10000 = 0),
    source TEXT NOT NULL CHECK (source IN ('saved_card', 'hosted_page', 'auto_recharge')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'requires_payment_method', 'requires_action',
        'succeeded', 'failed', 'canceled')),
    idempotency_key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    checkout_session_id TEXT UNIQUE,
    payment_reference TEXT UNIQUE,
    charge_reference TEXT,
    card_brand TEXT,
    card_last4 TEXT,
    failure_code TEXT,
    failure_message TEXT,
    credited_transaction_id TEXT COLLATE "C" UNIQUE REFERENCES journal_transactions (id),
    refunded_micros BIGINT NOT NULL DEFAULT 0 CHECK (refunded_micros >= 0 AND refunded_micros <= amount_micros),
    disputed_micros BIGINT NOT NULL DEFAULT 0 CHECK (disputed_micros >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    succeeded_at BIGINT,
    UNIQUE (account_id, idempotency_key),
    -- Credited exactly when succeeded: the credit and the status change are one write.
    CHECK ((status = 'succeeded') = (credited_transaction_id IS NOT NULL)),
    CHECK ((status = 'succeeded') = (succeeded_at IS NOT NULL))
);

CREATE INDEX topups_by_account ON topups (account_id, created_at);
CREATE INDEX topups_open ON topups (created_at)
    WHERE status IN ('pending', 'requires_payment_method', 'requires_action');
CREATE INDEX topups_by_charge ON topups (charge_reference) WHERE charge_reference IS NOT NULL;

CREATE TABLE topup_refunds (
    id TEXT COLLATE "C" PRIMARY KEY,
    topup_id TEXT COLLATE "C" NOT NULL REFERENCES topups (id),
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    amount_micros BIGINT NOT NULL CHECK (amount_micros > 0),
    state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    processor_refund_id TEXT UNIQUE,
    reason TEXT NOT NULL,
    idempotency_key TEXT,
    request_fingerprint TEXT,
    taken_transaction_id TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES journal_transactions (id),
    returned_transaction_id TEXT COLLATE "C" UNIQUE REFERENCES journal_transactions (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (topup_id, idempotency_key),
    CHECK ((state = 'failed') = (returned_transaction_id IS NOT NULL))
);

CREATE TABLE topup_disputes (
    id TEXT COLLATE "C" PRIMARY KEY,
    topup_id TEXT COLLATE "C" NOT NULL REFERENCES topups (id),
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    amount_micros BIGINT NOT NULL CHECK (amount_micros > 0),
    status TEXT NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    taken_transaction_id TEXT COLLATE "C" UNIQUE REFERENCES journal_transactions (id),
    returned_transaction_id TEXT COLLATE "C" UNIQUE REFERENCES journal_transactions (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Webhook events already applied, by the processor's event id.
CREATE TABLE processor_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
