//! The ledger's invariants as pure checks over facts a backend reads.
//!
//! Each backend's `verify` only gathers facts (with its own SQL, in one
//! snapshot) and feeds them here, so SQLite and PostgreSQL are held to
//! exactly the same rules.

use std::collections::HashMap;

use tollgate_core::{LedgerAccount, Micros};

use crate::LedgerReport;

/// What the ledger says an account should hold, recomputed from its entries.
#[derive(Default)]
struct Recomputed {
    available: i64,
    held: i64,
    active_holds: i64,
    usage_amount: i64,
    usage_savings: i64,
}

/// Where an account's journal chain stands: sequence and balances after.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct ChainLink {
    sequence: i64,
    available_after: i64,
    held_after: i64,
}

/// One usage record's stored amounts.
pub(crate) struct UsageFacts {
    pub id: String,
    pub account: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub unit_list_price: i64,
    pub amount: i64,
    pub list_amount: i64,
    pub savings: i64,
}

/// One journal transaction and what its transfers do to its customer.
pub(crate) struct JournalFacts {
    pub id: String,
    pub account: String,
    pub sequence: i64,
    pub amount: i64,
    pub available_amount: i64,
    pub available_after: i64,
    pub held_after: i64,
    /// Sum of its transfers into minus out of `available:<account>`.
    pub available_delta: i64,
    /// Sum of its transfers into minus out of `held:<account>`.
    pub held_delta: i64,
}

/// One account's stored state, plus the usage recorded since its cycle start.
pub(crate) struct AccountFacts {
    pub id: String,
    pub billing_mode: String,
    pub credit_limit: i64,
    pub available: i64,
    pub held: i64,
    pub journal_sequence: i64,
    pub lifetime_spend: i64,
    pub lifetime_savings: i64,
    pub cycle_spend: i64,
    pub cycle_usage: i64,
    /// Flagged for attention: money taken back (refund, dispute) left it below its floor.
    pub flagged: bool,
}

/// One top-up, its credit and its refunds.
pub(crate) struct TopupFacts {
    pub id: String,
    pub status: String,
    pub amount: i64,
    /// The available-balance change of its credit transaction, if it has one.
    pub credited_amount: Option<i64>,
    /// `refunded_micros` as stored on the top-up.
    pub refunded_recorded: i64,
    /// Sum of its refunds that are not failed.
    pub refunded_by_refunds: i64,
    /// `disputed_micros` as stored on the top-up.
    pub disputed_recorded: i64,
    /// Sum of its disputes whose money was taken back and not returned.
    pub disputed_by_disputes: i64,
}

/// One account's Auto Top-Up rule: the recharge it has in flight and the last
/// sequence it handed out.
pub(crate) struct RechargeRuleFacts {
    pub account: String,
    pub in_flight: Option<i64>,
    pub last_sequence: i64,
}

/// One auto top-up (a top-up whose source is `auto_recharge`).
pub(crate) struct AutoTopupFacts {
    pub id: String,
    pub account: String,
    pub sequence: Option<i64>,
    pub status: String,
}

/// Reads one [`InvoiceFacts`] per invoice (both backends run it as it is).
pub(crate) const INVOICE_FACTS_SQL: &str = "SELECT i.id, i.number, i.status, i.amount_due_micros, i.subtotal_micros, \
     i.credit_applied_micros, i.brought_forward_micros, i.carried_forward_micros, i.paid_by, j.available_amount_micros, \
     CAST((SELECT COALESCE(SUM(l.amount_micros), 0) FROM invoice_lines l WHERE l.invoice_id = i.id) AS BIGINT) \
     FROM invoices i LEFT JOIN journal_transactions j ON j.id = i.paid_transaction_id ORDER BY i.number";

/// Reads the invoice count, the largest number and the counter.
pub(crate) const INVOICE_NUMBERS_SQL: &str = "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(MAX(number), 0) AS BIGINT), \
     (SELECT last_number FROM invoice_numbers) FROM invoices";

/// Reads, per account, the stored due date and the oldest open invoice's.
pub(crate) const INVOICE_DUE_SQL: &str = "SELECT a.id, a.invoice_due_at, \
     (SELECT MIN(i.due_at) FROM invoices i WHERE i.account_id = a.id AND i.status = 'open') FROM accounts a";

/// One invoice's stored totals and what paid it.
pub(crate) struct InvoiceFacts {
    pub id: String,
    pub number: i64,
    pub status: String,
    pub amount_due: i64,
    pub subtotal: i64,
    pub credit_applied: i64,
    pub brought_forward: i64,
    pub carried_forward: i64,
    pub paid_by: Option<String>,
    /// The available-balance change of the transaction that paid it, if any.
    pub paid_amount: Option<i64>,
    /// The sum of its lines.
    pub lines_total: i64,
}

/// Accumulates facts in the order: transfer sums, active holds, usage rows,
/// journal rows (ordered by account, then sequence), accounts; rules and auto
/// top-ups in any order.
#[derive(Default)]
pub(crate) struct LedgerCheck {
    report: LedgerReport,
    recomputed: HashMap<String, Recomputed>,
    chain: Option<(String, ChainLink)>,
    chain_ends: HashMap<String, ChainLink>,
    recharge_rules: HashMap<String, RechargeRuleFacts>,
    auto_topups: Vec<AutoTopupFacts>,
}

impl LedgerCheck {
    fn problem(&mut self, text: String) {
        self.report.problems.push(text);
    }

    /// The net of all transfers into and out of one ledger account.
    pub fn transfer_sum(&mut self, code: &str, sum: i64) {
        match LedgerAccount::parse(code) {
            Some(LedgerAccount::Available(account)) => {
                self.recomputed.entry(account.to_string()).or_default().available = sum;
            }
            Some(LedgerAccount::Held(account)) => {
                self.recomputed.entry(account.to_string()).or_default().held = sum;
            }
            Some(_) => {}
            None => self.problem(format!("transfers use unknown ledger account `{code}`")),
        }
    }

    /// The total of an account's active holds.
    pub fn active_holds(&mut self, account: String, sum: i64) {
        self.recomputed.entry(account).or_default().active_holds = sum;
    }

    /// A usage record: exact arithmetic, and its part of the spend totals.
    pub fn usage(&mut self, usage: UsageFacts) {
        let id = &usage.id;
        if usage.quantity.checked_mul(usage.unit_price) != Some(usage.amount)
            || usage.quantity.checked_mul(usage.unit_list_price) != Some(usage.list_amount)
        {
            self.problem(format!("usage {id}: amount is not quantity × unit price"));
        }
        if usage.savings != (usage.list_amount - usage.amount).max(0) {
            self.problem(format!("usage {id}: savings are not list − paid"));
        }
        let totals = self.recomputed.entry(usage.account).or_default();
        totals.usage_amount = totals.usage_amount.saturating_add(usage.amount);
        totals.usage_savings = totals.usage_savings.saturating_add(usage.savings);
    }

    /// A journal transaction: it matches its transfers and follows the one before.
    pub fn journal(&mut self, journal: JournalFacts) {
        self.report.transactions_checked += 1;
        let JournalFacts { id, account, .. } = &journal;
        if journal.available_amount != journal.available_delta
            || journal.amount != journal.available_delta + journal.held_delta
        {
            self.problem(format!(
                "transaction {id}: recorded amounts differ from its transfers"
            ));
        }
        let previous = match &self.chain {
            Some((chain_account, link)) if chain_account == account => *link,
            _ => ChainLink::default(),
        };
        if journal.sequence != previous.sequence + 1 {
            self.problem(format!(
                "account {account}: journal sequence jumps from {} to {}",
                previous.sequence, journal.sequence
            ));
        }
        if journal.available_after != previous.available_after + journal.available_delta
            || journal.held_after != previous.held_after + journal.held_delta
        {
            self.problem(format!(
                "transaction {id}: balance after does not follow from the one before"
            ));
        }
        let link = ChainLink {
            sequence: journal.sequence,
            available_after: journal.available_after,
            held_after: journal.held_after,
        };
        self.chain_ends.insert(journal.account.clone(), link);
        self.chain = Some((journal.account, link));
    }

    /// An account's stored state against everything recomputed.
    pub fn account(&mut self, account: AccountFacts) {
        self.report.accounts_checked += 1;
        let id = &account.id;
        let recomputed = self.recomputed.remove(id).unwrap_or_default();
        let last = self.chain_ends.remove(id).unwrap_or_default();
        let mut problems = Vec::new();
        if account.available != recomputed.available {
            problems.push(format!(
                "account {id}: available balance {} but its transfers sum to {}",
                Micros::new(account.available),
                Micros::new(recomputed.available)
            ));
        }
        if account.held != recomputed.held || account.held != recomputed.active_holds {
            problems.push(format!(
                "account {id}: held {} but transfers say {} and active holds {}",
                Micros::new(account.held),
                Micros::new(recomputed.held),
                Micros::new(recomputed.active_holds)
            ));
        }
        if account.billing_mode == "prepaid" && account.credit_limit != 0 {
            problems.push(format!("account {id}: a prepaid account has a credit limit"));
        }
        if account.available + account.credit_limit < 0 && !account.flagged {
            problems.push(format!(
                "account {id}: available balance {} is below its limit",
                Micros::new(account.available)
            ));
        }
        if account.journal_sequence != last.sequence
            || account.available != last.available_after
            || account.held != last.held_after
        {
            problems.push(format!(
                "account {id}: stored balances differ from its last journal transaction"
            ));
        }
        if account.lifetime_spend != recomputed.usage_amount
            || account.lifetime_savings != recomputed.usage_savings
        {
            problems.push(format!(
                "account {id}: lifetime spend or savings differ from its usage records"
            ));
        }
        if account.cycle_spend != account.cycle_usage {
            problems.push(format!(
                "account {id}: cycle spend differs from this cycle's usage records"
            ));
        }
        self.report.problems.extend(problems);
    }

    /// A top-up against its credit: credited exactly when succeeded, by exactly its amount,
    /// and its refunded and disputed totals equal to its refunds' and disputes'.
    pub fn topup(&mut self, topup: TopupFacts) {
        let id = &topup.id;
        match (topup.status.as_str(), topup.credited_amount) {
            ("succeeded", Some(credited)) if credited == topup.amount => {}
            ("succeeded", credited) => self.problem(format!(
                "top-up {id}: succeeded for {} but credited {}",
                Micros::new(topup.amount),
                credited
                    .map(Micros::new)
                    .map_or("nothing".to_owned(), |amount| amount.to_string())
            )),
            (_, Some(_)) => self.problem(format!("top-up {id}: credited but {}", topup.status)),
            (_, None) => {}
        }
        if topup.refunded_recorded != topup.refunded_by_refunds {
            self.problem(format!(
                "top-up {id}: refunded {} but its refunds sum to {}",
                Micros::new(topup.refunded_recorded),
                Micros::new(topup.refunded_by_refunds)
            ));
        }
        if topup.disputed_recorded != topup.disputed_by_disputes {
            self.problem(format!(
                "top-up {id}: disputed {} but its disputes hold {}",
                Micros::new(topup.disputed_recorded),
                Micros::new(topup.disputed_by_disputes)
            ));
        }
    }

    /// Card credits in the journal against the top-ups that claim them: one each, no strays.
    pub fn card_credits(&mut self, journal_credits: i64, credited_topups: i64) {
        if journal_credits != credited_topups {
            self.problem(format!(
                "{journal_credits} card credits in the journal but {credited_topups} credited top-ups"
            ));
        }
    }

    /// An account's Auto Top-Up rule.
    /// An invoice: its totals add up, and it is paid exactly when its payment is in the ledger.
    pub fn invoice(&mut self, invoice: InvoiceFacts) {
        let id = &invoice.id;
        if invoice.lines_total != invoice.subtotal {
            self.problem(format!("invoice {id}: lines do not sum to the subtotal"));
        }
        if invoice.subtotal - invoice.credit_applied + invoice.brought_forward
            != invoice.amount_due + invoice.carried_forward
        {
            self.problem(format!("invoice {id}: totals do not add up"));
        }
        let consistent = match (invoice.status.as_str(), invoice.paid_by.as_deref()) {
            ("open", None) => invoice.amount_due > 0 && invoice.paid_amount.is_none(),
            ("paid", Some("credit")) => invoice.amount_due == 0 && invoice.paid_amount.is_none(),
            ("paid", Some("card" | "bank_transfer")) => invoice.paid_amount == Some(invoice.amount_due),
            ("void", None) => invoice.paid_amount.is_none(),
            _ => false,
        };
        if !consistent {
            self.problem(format!(
                "invoice {id} (number {}): status {} does not match its payment",
                invoice.number, invoice.status
            ));
        }
    }

    /// Invoice numbers run 1..=count without gaps, up to the counter.
    pub fn invoice_numbers(&mut self, count: i64, largest: i64, counter: i64) {
        if largest != count || counter != count {
            self.problem(format!(
                "invoice numbers have gaps: {count} invoices, largest number {largest}, counter at {counter}"
            ));
        }
    }

    /// An account's stored due date is its oldest open invoice's.
    pub fn invoice_due(&mut self, account: &str, stored: Option<i64>, oldest_open: Option<i64>) {
        if stored != oldest_open {
            self.problem(format!(
                "account {account}: stored invoice due date differs from its oldest open invoice's"
            ));
        }
    }

    pub fn recharge_rule(&mut self, rule: RechargeRuleFacts) {
        self.recharge_rules.insert(rule.account.clone(), rule);
    }

    /// An auto top-up.
    pub fn auto_topup(&mut self, topup: AutoTopupFacts) {
        self.auto_topups.push(topup);
    }

    /// Exactly one recharge in flight: at most one open auto top-up per account; a rule
    /// in flight has a pending auto top-up of that sequence and every pending auto
    /// top-up is its rule's recharge in flight (an auto top-up waiting for the customer,
    /// `requires_action`, has resolved its rule already and only blocks the next one).
    fn check_auto_recharges(&mut self) {
        let mut problems = Vec::new();
        let mut open: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut pending: HashMap<&str, i64> = HashMap::new();
        for topup in &self.auto_topups {
            let (id, account) = (&topup.id, topup.account.as_str());
            let rule = self.recharge_rules.get(account);
            let Some(sequence) = topup.sequence else {
                problems.push(format!("auto top-up {id}: no recharge sequence"));
                continue;
            };
            match rule {
                None => problems.push(format!(
                    "auto top-up {id}: account {account} has no auto top-up rule"
                )),
                Some(rule) if sequence > rule.last_sequence => problems.push(format!(
                    "auto top-up {id}: recharge {sequence} is beyond the rule's last sequence {}",
                    rule.last_sequence
                )),
                Some(_) => {}
            }
            if matches!(topup.status.as_str(), "pending" | "requires_action") {
                open.entry(account).or_default().push(id);
            }
            if topup.status == "pending" {
                pending.insert(account, sequence);
                let in_flight = rule.and_then(|rule| rule.in_flight);
                if in_flight != Some(sequence) {
                    problems.push(format!(
                        "auto top-up {id}: recharge {sequence} is pending but the rule has {} in flight",
                        in_flight.map_or("nothing".to_owned(), |flight| format!("recharge {flight}"))
                    ));
                }
            }
        }
        let mut crowded: Vec<_> = open.into_iter().filter(|(_, ids)| ids.len() > 1).collect();
        crowded.sort();
        for (account, ids) in crowded {
            problems.push(format!(
                "account {account}: {} open auto top-ups ({})",
                ids.len(),
                ids.join(", ")
            ));
        }
        let mut rules: Vec<&RechargeRuleFacts> = self.recharge_rules.values().collect();
        rules.sort_by(|left, right| left.account.cmp(&right.account));
        for rule in rules {
            if let Some(flight) = rule.in_flight
                && pending.get(rule.account.as_str()) != Some(&flight)
            {
                problems.push(format!(
                    "account {}: recharge {flight} is in flight but has no pending auto top-up",
                    rule.account
                ));
            }
        }
        self.report.problems.extend(problems);
    }

    /// The report, with entries of accounts that do not exist flagged.
    pub fn finish(mut self) -> LedgerReport {
        self.check_auto_recharges();
        let mut orphans: Vec<String> = self
            .recomputed
            .keys()
            .chain(self.chain_ends.keys())
            .cloned()
            .collect();
        orphans.sort();
        orphans.dedup();
        for orphan in orphans {
            self.problem(format!("ledger entries for unknown account `{orphan}`"));
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(sequence: i64, available_delta: i64, available_after: i64) -> JournalFacts {
        JournalFacts {
            id: format!("txn_{sequence}"),
            account: "acme".to_owned(),
            sequence,
            amount: available_delta,
            available_amount: available_delta,
            available_after,
            held_after: 0,
            available_delta,
            held_delta: 0,
        }
    }

    fn account(available: i64, journal_sequence: i64) -> AccountFacts {
        AccountFacts {
            id: "acme".to_owned(),
            billing_mode: "prepaid".to_owned(),
            credit_limit: 0,
            available,
            held: 0,
            journal_sequence,
            lifetime_spend: 30_000,
            lifetime_savings: 0,
            cycle_spend: 30_000,
            cycle_usage: 30_000,
            flagged: false,
        }
    }

    fn ledger(journal_rows: Vec<JournalFacts>, stored: AccountFacts) -> LedgerReport {
        let mut check = LedgerCheck::default();
        check.transfer_sum("available:acme", 970_000);
        check.transfer_sum("revenue", 30_000);
        check.transfer_sum("grants", -1_000_000);
        check.usage(UsageFacts {
            id: "txn_2".to_owned(),
            account: "acme".to_owned(),
            quantity: 1,
            unit_price: 30_000,
            unit_list_price: 30_000,
            amount: 30_000,
            list_amount: 30_000,
            savings: 0,
        });
        for row in journal_rows {
            check.journal(row);
        }
        check.account(stored);
        check.finish()
    }

    #[test]
    fn a_consistent_ledger_is_clean() {
        let report = ledger(
            vec![journal(1, 1_000_000, 1_000_000), journal(2, -30_000, 970_000)],
            account(970_000, 2),
        );
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.accounts_checked, report.transactions_checked), (1, 2));
    }

    #[test]
    fn top_ups_are_credited_once_and_their_totals_match() {
        let facts =
            |status: &str, credited: Option<i64>, refunded: (i64, i64), disputed: (i64, i64)| TopupFacts {
                id: "top_1".to_owned(),
                status: status.to_owned(),
                amount: 100,
                credited_amount: credited,
                refunded_recorded: refunded.0,
                refunded_by_refunds: refunded.1,
                disputed_recorded: disputed.0,
                disputed_by_disputes: disputed.1,
            };
        let problems = |topup: TopupFacts| {
            let mut check = LedgerCheck::default();
            check.topup(topup);
            check.finish().problems
        };
        assert!(problems(facts("succeeded", Some(100), (30, 30), (60, 60))).is_empty());
        assert!(problems(facts("pending", None, (0, 0), (0, 0))).is_empty());
        assert!(problems(facts("succeeded", None, (0, 0), (0, 0)))[0].contains("credited nothing"));
        assert!(problems(facts("succeeded", Some(50), (0, 0), (0, 0)))[0].contains("credited"));
        assert!(problems(facts("failed", Some(100), (0, 0), (0, 0)))[0].contains("credited but failed"));
        assert!(problems(facts("succeeded", Some(100), (30, 20), (0, 0)))[0].contains("refunds sum"));
        assert!(problems(facts("succeeded", Some(100), (0, 0), (15, 0)))[0].contains("disputes hold"));
        let mut credits = LedgerCheck::default();
        credits.card_credits(2, 1);
        assert_eq!(credits.finish().problems.len(), 1);
    }

    #[test]
    fn one_recharge_is_in_flight_per_account() {
        let rule = |in_flight: Option<i64>, last_sequence| RechargeRuleFacts {
            account: "acme".to_owned(),
            in_flight,
            last_sequence,
        };
        let topup = |id: &str, sequence: Option<i64>, status: &str| AutoTopupFacts {
            id: id.to_owned(),
            account: "acme".to_owned(),
            sequence,
            status: status.to_owned(),
        };
        let problems = |rule: RechargeRuleFacts, topups: Vec<AutoTopupFacts>| {
            let mut check = LedgerCheck::default();
            check.recharge_rule(rule);
            for topup in topups {
                check.auto_topup(topup);
            }
            check.finish().problems
        };
        assert!(problems(rule(None, 0), vec![]).is_empty());
        assert!(
            problems(
                rule(Some(3), 3),
                vec![
                    topup("top_1", Some(1), "succeeded"),
                    topup("top_2", Some(2), "requires_action"),
                    topup("top_3", Some(3), "pending")
                ]
            )
            .iter()
            .any(|problem| problem.contains("2 open auto top-ups"))
        );
        assert!(problems(rule(Some(3), 3), vec![topup("top_3", Some(3), "pending")]).is_empty());
        assert!(problems(rule(None, 2), vec![topup("top_2", Some(2), "requires_action")]).is_empty());
        assert!(
            problems(rule(Some(2), 2), vec![topup("top_2", Some(2), "failed")])[0]
                .contains("no pending auto top-up")
        );
        assert!(
            problems(rule(None, 2), vec![topup("top_2", Some(2), "pending")])[0]
                .contains("nothing in flight")
        );
        assert!(
            problems(rule(None, 1), vec![topup("top_2", Some(2), "failed")])[0]
                .contains("beyond the rule's last sequence")
        );
        assert!(
            problems(rule(None, 1), vec![topup("top_2", None, "failed")])[0].contains("no recharge sequence")
        );
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let created = ledger(
            vec![journal(1, 1_000_000, 1_000_000), journal(2, -30_000, 970_000)],
            account(970_001, 2),
        );
        assert!(
            created
                .problems
                .iter()
                .any(|problem| problem.contains("transfers sum to"))
        );
        let gap = ledger(
            vec![journal(1, 1_000_000, 1_000_000), journal(3, -30_000, 970_000)],
            account(970_000, 3),
        );
        assert!(
            gap.problems
                .iter()
                .any(|problem| problem.contains("jumps from 1 to 3"))
        );
        let broken_chain = ledger(
            vec![journal(1, 1_000_000, 1_000_000), journal(2, -30_000, 970_500)],
            account(970_000, 2),
        );
        assert!(
            broken_chain
                .problems
                .iter()
                .any(|problem| problem.contains("does not follow"))
        );
        let mut unknown = LedgerCheck::default();
        unknown.transfer_sum("available:ghost", 5);
        unknown.transfer_sum("nonsense", 5);
        let report = unknown.finish();
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.contains("unknown ledger account `nonsense`"))
        );
        assert!(
            report
                .problems
                .iter()
                .any(|problem| problem.contains("unknown account `ghost`"))
        );
    }

    fn invoice(
        status: &str,
        paid_by: Option<&str>,
        amount_due: i64,
        paid_amount: Option<i64>,
    ) -> InvoiceFacts {
        InvoiceFacts {
            id: "inv_1".to_owned(),
            number: 1,
            status: status.to_owned(),
            amount_due,
            subtotal: amount_due + 500,
            credit_applied: 0,
            brought_forward: 0,
            carried_forward: 500,
            paid_by: paid_by.map(str::to_owned),
            paid_amount,
            lines_total: amount_due + 500,
        }
    }

    fn problems_of(facts: InvoiceFacts) -> Vec<String> {
        let mut check = LedgerCheck::default();
        check.invoice(facts);
        check.finish().problems
    }

    #[test]
    fn invoices_are_paid_exactly_when_the_ledger_says_so() {
        assert!(problems_of(invoice("open", None, 10_000, None)).is_empty());
        assert!(problems_of(invoice("paid", Some("bank_transfer"), 10_000, Some(10_000))).is_empty());
        assert!(problems_of(invoice("paid", Some("card"), 10_000, Some(10_000))).is_empty());
        assert!(problems_of(invoice("paid", Some("credit"), 0, None)).is_empty());
        // Paid without the money, the wrong money, or open with money received: each a problem.
        assert_eq!(problems_of(invoice("paid", Some("card"), 10_000, None)).len(), 1);
        assert_eq!(
            problems_of(invoice("paid", Some("bank_transfer"), 10_000, Some(9_999))).len(),
            1
        );
        assert_eq!(problems_of(invoice("open", None, 10_000, Some(10_000))).len(), 1);
        assert_eq!(problems_of(invoice("open", None, 0, None)).len(), 1);
        let mut unbalanced = invoice("open", None, 10_000, None);
        unbalanced.lines_total += 1;
        unbalanced.carried_forward += 1;
        assert_eq!(problems_of(unbalanced).len(), 2);
    }

    #[test]
    fn invoice_numbers_without_gaps() {
        let mut check = LedgerCheck::default();
        check.invoice_numbers(3, 3, 3);
        check.invoice_numbers(0, 0, 0);
        check.invoice_due("acme", Some(5), Some(5));
        assert!(check.finish().problems.is_empty());
        let mut check = LedgerCheck::default();
        check.invoice_numbers(3, 4, 4);
        check.invoice_numbers(3, 3, 4);
        check.invoice_due("acme", None, Some(5));
        assert_eq!(check.finish().problems.len(), 3);
    }
}
