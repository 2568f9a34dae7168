-- Invoice billing. An invoice account carries the period it is being invoiced for
-- (`invoice_period_start` .. `invoice_period_end`, NULL for prepaid accounts): closing the
-- period writes the invoice and moves the period on in one transaction, so it happens once.
-- `invoice_due_at` is the due date of the account's oldest open invoice, read with the rest
-- of the account on every charge: past it, usage is refused.
ALTER TABLE accounts ADD COLUMN invoice_period_start BIGINT;
ALTER TABLE accounts ADD COLUMN invoice_period_end BIGINT;
ALTER TABLE accounts ADD COLUMN invoice_due_at BIGINT;

CREATE INDEX accounts_invoice_period_end ON accounts (invoice_period_end)
    WHERE invoice_period_end IS NOT NULL;

-- The last invoice number given out: one row, moved in the transaction that writes the
-- invoice, so a rolled-back close gives its number back and numbers have no gaps.
CREATE TABLE invoice_numbers (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_number BIGINT NOT NULL CHECK (last_number >= 0)
);
INSERT INTO invoice_numbers (singleton, last_number) VALUES (1, 0);

CREATE TABLE invoices (
    id TEXT COLLATE "C" PRIMARY KEY,
    number BIGINT NOT NULL UNIQUE CHECK (number > 0),
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL CHECK (period_end > period_start),
    subtotal_micros BIGINT NOT NULL CHECK (subtotal_micros >= 0),
    credit_applied_micros BIGINT NOT NULL CHECK (credit_applied_micros >= 0),
    brought_forward_micros BIGINT NOT NULL CHECK (brought_forward_micros >= 0),
    carried_forward_micros BIGINT NOT NULL CHECK (carried_forward_micros >= 0),
    amount_due_micros BIGINT NOT NULL CHECK (amount_due_micros >= 0 AND amount_due_micros % 10000 = 0),
    status TEXT NOT NULL CHECK (status IN ('open', 'paid', 'void')),
    due_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    paid_at BIGINT,
    paid_by TEXT CHECK (paid_by IN ('card', 'bank_transfer', 'credit')),
    payment_reference TEXT,
    paid_transaction_id TEXT REFERENCES journal_transactions (id),
    -- The card top-up paying it now, and how many card attempts were made.
    card_topup_id TEXT REFERENCES topups (id),
    card_attempts BIGINT NOT NULL DEFAULT 0,
    -- A period is invoiced once.
    UNIQUE (account_id, period_start),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CHECK ((status = 'paid') = (paid_by IS NOT NULL))
);

CREATE INDEX invoices_by_account ON invoices (account_id, number);
CREATE INDEX invoices_open_by_account ON invoices (account_id, due_at) WHERE status = 'open';
CREATE INDEX invoices_by_card_topup ON invoices (card_topup_id) WHERE card_topup_id IS NOT NULL;

CREATE TABLE invoice_lines (
    invoice_id TEXT COLLATE "C" NOT NULL REFERENCES invoices (id),
    line BIGINT NOT NULL,
    action TEXT NOT NULL,
    description TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_micros BIGINT NOT NULL CHECK (unit_price_micros >= 0),
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    PRIMARY KEY (invoice_id, line)
);
