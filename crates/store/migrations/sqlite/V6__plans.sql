-- Net terms of invoice accounts (days an invoice may stay unpaid), set with the rest of
-- the plan Sales agreed. NULL for prepaid accounts.
ALTER TABLE accounts ADD COLUMN net_terms_days INTEGER CHECK (net_terms_days BETWEEN 1 AND 365);
