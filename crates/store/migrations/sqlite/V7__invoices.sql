-- Invoice billing. An invoice account carries the period it is being invoiced for
-- (`invoice_period_start` .. `invoice_period_end`, NULL for prepaid accounts): closing the
-- period writes the invoice and moves the period on in one transaction, so it happens once.
-- `invoice_due_at` is the due date of the account's oldest open invoice, read with the rest
-- of the account on every charge: past it, usage is refused.
ALTER TABLE accounts ADD COLUMN invoice_period_start INTEGER;
ALTER TABLE accounts ADD COLUMN invoice_period_end INTEGER;
ALTER TABLE accounts ADD COLUMN invoice_due_at INTEGER;

CREATE INDEX accounts_invoice_period_end ON accounts (invoice_period_end)
    WHERE invoice_period_end IS NOT NULL;

-- The last invoice number given out: one row, moved in the transaction that writes the
-- invoice, so a rolled-back close gives its number back and numbers have no gaps.
CREATE TABLE invoice_numbers (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_number INTEGER NOT NULL CHECK (last_number >= 0)
) STRICT;
INSERT INTO invoice_numbers (singleton, last_number) VALUES (1, 0);

CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE CHECK (number > 0),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL CHECK (period_end > period_start),
    subtotal_micros INTEGER NOT NULL CHECK (subtotal_micros >= 0),
    credit_applied_micros INTEGER NOT NULL CHECK (credit_applied_micros >= 0),
    brought_forward_micros INTEGER NOT NULL CHECK (brought_forward_micros >= 0),
    carried_forward_micros INTEGER NOT NULL CHECK (carried_forward_micros >= 0),
    amount_due_micros INTEGER NOT NULL CHECK (amount_due_micros >= 0 AND amount_due_micros % 10000 = 0),
    status TEXT NOT NULL CHECK (status IN ('open', 'paid', 'void')),
    due_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    paid_at INTEGER,
    paid_by TEXT CHECK (paid_by IN ('card', 'bank_transfer', 'credit')),
    payment_reference TEXT,
    paid_transaction_id TEXT REFERENCES journal_transactions (id),
    -- The card top-up paying it now, and how many card attempts were made.
    card_topup_id TEXT REFERENCES topups (id),
    card_attempts INTEGER NOT NULL DEFAULT 0,
    -- A period is invoiced once.
    UNIQUE (account_id, period_start),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CHECK ((status = 'paid') = (paid_by IS NOT NULL))
) STRICT;

CREATE INDEX invoices_by_account ON invoices (account_id, number);
CREATE INDEX invoices_open_by_account ON invoices (account_id, due_at) WHERE status = 'open';
CREATE INDEX invoices_by_card_topup ON invoices (card_topup_id) WHERE card_topup_id IS NOT NULL;

CREATE TABLE invoice_lines (
    invoice_id TEXT NOT NULL REFERENCES invoices (id),
    line INTEGER NOT NULL,
    action TEXT NOT NULL,
    description TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_micros INTEGER NOT NULL CHECK (unit_price_micros >= 0),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    PRIMARY KEY (invoice_id, line)
) STRICT, WITHOUT ROWID;
