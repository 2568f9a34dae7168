-- The largest refunded total the payment processor reported for a top-up's payment
-- (`charge.refunded`): its totals only grow, but their news may arrive out of order. It is
-- kept even when it adds nothing to what the store recorded: while a refund of Tollgate's is
-- pending the store counts it as refunded already, so a total heard then may hide a refund
-- made in the processor's dashboard. If the processor then refuses Tollgate's refund, what
-- this total says beyond the store's refunded total is recorded as that dashboard refund.
ALTER TABLE topups ADD COLUMN processor_refunded_micros BIGINT NOT NULL DEFAULT 0
    CHECK (processor_refunded_micros >= 0);
