//! Double-entry rules: what each money movement writes, and when a debit fits.
//!
//! A movement is a journal transaction of transfers. Each transfer takes an
//! amount out of one ledger account and puts it into another, so every
//! transaction sums to zero across accounts by construction.

use crate::ids::AccountId;
use crate::money::{Micros, MoneyOverflow};

/// A ledger account: a customer's funds, or one of the operator's books.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerAccount {
    /// A customer's spendable funds.
    Available(AccountId),
    /// A customer's funds reserved by active holds.
    Held(AccountId),
    /// Income from usage.
    Revenue,
    /// Card money on its way from the processor.
    CardClearing,
    /// Operator credits and debits.
    Grants,
    /// Money returned to cards.
    Refunds,
    /// Money taken back by card disputes.
    Disputes,
    /// Invoice payments received.
    InvoicePayments,
}

impl LedgerAccount {
    /// Stable text form used in storage: `available:acme`, `revenue`, …
    pub fn code(&self) -> String {
        match self {
            LedgerAccount::Available(account) => format!("available:{account}"),
            LedgerAccount::Held(account) => format!("held:{account}"),
            LedgerAccount::Revenue => "revenue".to_owned(),
            LedgerAccount::CardClearing => "card_clearing".to_owned(),
            LedgerAccount::Grants => "grants".to_owned(),
            LedgerAccount::Refunds => "refunds".to_owned(),
            LedgerAccount::Disputes => "disputes".to_owned(),
            LedgerAccount::InvoicePayments => "invoice_payments".to_owned(),
        }
    }

    /// Parses [`LedgerAccount::code`].
    pub fn parse(code: &str) -> Option<LedgerAccount> {
        if let Some((kind, account)) = code.split_once(':') {
            let account = AccountId::parse(account).ok()?;
            return match kind {
                "available" => Some(LedgerAccount::Available(account)),
                "held" => Some(LedgerAccount::Held(account)),
                _ => None,
            };
        }
        match code {
            "revenue" => Some(LedgerAccount::Revenue),
            "card_clearing" => Some(LedgerAccount::CardClearing),
            "grants" => Some(LedgerAccount::Grants),
            "refunds" => Some(LedgerAccount::Refunds),
            "disputes" => Some(LedgerAccount::Disputes),
            "invoice_payments" => Some(LedgerAccount::InvoicePayments),
            _ => None,
        }
    }
}

/// Moves `amount` (always positive) out of `from` into `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Account debited.
    pub from: LedgerAccount,
    /// Account credited.
    pub to: LedgerAccount,
    /// Amount moved; positive.
    pub amount: Micros,
}

/// What a journal transaction is, as listed to customers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    /// A usage charge (also a captured hold).
    Usage,
    /// A one-time card top-up.
    Topup,
    /// An automatic top-up.
    AutoRecharge,
    /// An operator credit or debit.
    Grant,
    /// A card refund taking money back.
    Refund,
    /// A lost card dispute taking money back.
    Dispute,
    /// A correction.
    Adjustment,
    /// An invoice paid.
    InvoicePayment,
    /// Funds reserved for an action of unknown cost.
    HoldPlaced,
    /// Reserved funds returned (void or expiry).
    HoldReleased,
}

impl TransactionKind {
    /// Every kind, for exhaustive parsing.
    pub const ALL: [TransactionKind; 10] = [
        TransactionKind::Usage,
        TransactionKind::Topup,
        TransactionKind::AutoRecharge,
        TransactionKind::Grant,
        TransactionKind::Refund,
        TransactionKind::Dispute,
        TransactionKind::Adjustment,
        TransactionKind::InvoicePayment,
        TransactionKind::HoldPlaced,
        TransactionKind::HoldReleased,
    ];

    /// Stable snake_case code, as in the API.
    pub const fn code(self) -> &'static str {
        match self {
            TransactionKind::Usage => "usage",
            TransactionKind::Topup => "topup",
            TransactionKind::AutoRecharge => "auto_recharge",
            TransactionKind::Grant => "grant",
            TransactionKind::Refund => "refund",
            TransactionKind::Dispute => "dispute",
            TransactionKind::Adjustment => "adjustment",
            TransactionKind::InvoicePayment => "invoice_payment",
            TransactionKind::HoldPlaced => "hold",
            TransactionKind::HoldReleased => "hold_release",
        }
    }

    /// Parses [`TransactionKind::code`].
    pub fn parse(code: &str) -> Option<TransactionKind> {
        TransactionKind::ALL.into_iter().find(|kind| kind.code() == code)
    }
}

/// A customer's two balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// Spendable funds (negative only for invoice accounts or after a refund of spent money).
    pub available: Micros,
    /// Funds reserved by active holds; never negative.
    pub held: Micros,
}

impl Balances {
    /// `available + held`: the balance shown to the customer.
    pub fn total(self) -> Result<Micros, MoneyOverflow> {
        self.available.checked_add(self.held)
    }
}

/// How far an account may spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillingMode {
    /// Pays in advance; never below zero.
    Prepaid,
    /// Invoiced monthly; may go down to `-credit_limit`.
    Invoice {
        /// How far below zero the account may go.
        credit_limit: Micros,
    },
}

impl BillingMode {
    /// Stable code.
    pub const fn code(self) -> &'static str {
        match self {
            BillingMode::Prepaid => "prepaid",
            BillingMode::Invoice { .. } => "invoice",
        }
    }

    /// How far below zero the available balance may go.
    pub fn credit_limit(self) -> Micros {
        match self {
            BillingMode::Prepaid => Micros::ZERO,
            BillingMode::Invoice { credit_limit } => credit_limit,
        }
    }
}

/// A debit that does not fit the account's balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insufficient balance: {required} needed, {spendable} available")]
pub struct InsufficientFunds {
    /// What the account may still spend (available + credit limit).
    pub spendable: Micros,
    /// What the debit needs.
    pub required: Micros,
}

/// Checks that `amount` can leave the available balance. A zero amount always
/// fits: free actions pass even on an empty (or refunded-negative) balance.
pub fn check_debit(mode: BillingMode, balances: Balances, amount: Micros) -> Result<(), InsufficientFunds> {
    debug_assert!(!amount.is_negative());
    if amount.is_zero() {
        return Ok(());
    }
    let spendable = balances
        .available
        .checked_add(mode.credit_limit())
        .unwrap_or(Micros::MAX);
    if spendable >= amount {
        Ok(())
    } else {
        Err(InsufficientFunds {
            spendable: spendable.max(Micros::ZERO),
            required: amount,
        })
    }
}

/// A balanced set of transfers touching one customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalTransaction {
    /// What it is.
    pub kind: TransactionKind,
    /// The customer it concerns.
    pub account: AccountId,
    /// The transfers; zero-amount ones are omitted.
    pub transfers: Vec<Transfer>,
}

/// A signed change of a customer's balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceDelta {
    /// Change of the available balance.
    pub available: Micros,
    /// Change of the held balance.
    pub held: Micros,
}

impl BalanceDelta {
    /// Change of the total balance.
    pub fn total(self) -> Result<Micros, MoneyOverflow> {
        self.available.checked_add(self.held)
    }

    /// The balances after this change.
    pub fn apply(self, balances: Balances) -> Result<Balances, MoneyOverflow> {
        Ok(Balances {
            available: balances.available.checked_add(self.available)?,
            held: balances.held.checked_add(self.held)?,
        })
    }
}

impl JournalTransaction {
    pub(crate) fn new(
        kind: TransactionKind,
        account: &AccountId,
        transfers: Vec<(LedgerAccount, LedgerAccount, Micros)>,
    ) -> JournalTransaction {
        let transfers = transfers
            .into_iter()
            .filter(|(_, _, amount)| !amount.is_zero())
            .map(|(from, to, amount)| {
                debug_assert!(amount.is_positive(), "transfers move positive amounts");
                debug_assert!(from != to);
                Transfer { from, to, amount }
            })
            .collect();
        JournalTransaction {
            kind,
            account: account.clone(),
            transfers,
        }
    }

    /// A usage charge: available → revenue.
    pub fn usage(account: &AccountId, amount: Micros) -> JournalTransaction {
        JournalTransaction::new(
            TransactionKind::Usage,
            account,
            vec![(
                LedgerAccount::Available(account.clone()),
                LedgerAccount::Revenue,
                amount,
            )],
        )
    }

    /// An operator grant: grants → available, or back for a negative amount.
    pub fn grant(account: &AccountId, amount: Micros) -> Result<JournalTransaction, MoneyOverflow> {
        let available = LedgerAccount::Available(account.clone());
        let transfer = if amount.is_negative() {
            (available, LedgerAccount::Grants, amount.checked_neg()?)
        } else {
            (LedgerAccount::Grants, available, amount)
        };
        Ok(JournalTransaction::new(
            TransactionKind::Grant,
            account,
            vec![transfer],
        ))
    }

    /// Money paid by card arrives: card clearing → available.
    pub fn card_payment(kind: TransactionKind, account: &AccountId, amount: Micros) -> JournalTransaction {
        debug_assert!(matches!(
            kind,
            TransactionKind::Topup | TransactionKind::AutoRecharge | TransactionKind::InvoicePayment
        ));
        JournalTransaction::new(
            kind,
            account,
            vec![(
                LedgerAccount::CardClearing,
                LedgerAccount::Available(account.clone()),
                amount,
            )],
        )
    }

    /// Money taken back by a refund or a lost dispute: available → refunds/disputes.
    pub fn clawback(kind: TransactionKind, account: &AccountId, amount: Micros) -> JournalTransaction {
        let book = match kind {
            TransactionKind::Dispute => LedgerAccount::Disputes,
            _ => LedgerAccount::Refunds,
        };
        JournalTransaction::new(
            kind,
            account,
            vec![(LedgerAccount::Available(account.clone()), book, amount)],
        )
    }

    /// Money taken back and then returned (a refund that failed, a dispute won):
    /// refunds/disputes → available.
    pub fn give_back(kind: TransactionKind, account: &AccountId, amount: Micros) -> JournalTransaction {
        let book = match kind {
            TransactionKind::Dispute => LedgerAccount::Disputes,
            _ => LedgerAccount::Refunds,
        };
        JournalTransaction::new(
            kind,
            account,
            vec![(book, LedgerAccount::Available(account.clone()), amount)],
        )
    }

    /// A hold: available → held.
    pub fn hold_placed(account: &AccountId, amount: Micros) -> JournalTransaction {
        JournalTransaction::new(
            TransactionKind::HoldPlaced,
            account,
            vec![(
                LedgerAccount::Available(account.clone()),
                LedgerAccount::Held(account.clone()),
                amount,
            )],
        )
    }

    /// A capture: held → revenue for the cost, held → available for the rest.
    pub fn hold_captured(
        account: &AccountId,
        held: Micros,
        cost: Micros,
    ) -> Result<JournalTransaction, MoneyOverflow> {
        debug_assert!(cost <= held);
        let rest = held.checked_sub(cost)?;
        let held_account = LedgerAccount::Held(account.clone());
        Ok(JournalTransaction::new(
            TransactionKind::Usage,
            account,
            vec![
                (held_account.clone(), LedgerAccount::Revenue, cost),
                (held_account, LedgerAccount::Available(account.clone()), rest),
            ],
        ))
    }

    /// A void or expiry: held → available.
    pub fn hold_released(account: &AccountId, amount: Micros) -> JournalTransaction {
        JournalTransaction::new(
            TransactionKind::HoldReleased,
            account,
            vec![(
                LedgerAccount::Held(account.clone()),
                LedgerAccount::Available(account.clone()),
                amount,
            )],
        )
    }

    /// What the transaction does to its customer's balances.
    pub fn customer_delta(&self) -> Result<BalanceDelta, MoneyOverflow> {
        let mut delta = BalanceDelta::default();
        for transfer in &self.transfers {
            for (ledger_account, sign_in) in [(&transfer.from, false), (&transfer.to, true)] {
                let signed = if sign_in {
                    transfer.amount
                } else {
                    transfer.amount.checked_neg()?
                };
                match ledger_account {
                    LedgerAccount::Available(id) if id == &self.account => {
                        delta.available = delta.available.checked_add(signed)?;
                    }
                    LedgerAccount::Held(id) if id == &self.account => {
                        delta.held = delta.held.checked_add(signed)?;
                    }
                    _ => {}
                }
            }
        }
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    #[test]
    fn codes_round_trip() {
        for account in [
            LedgerAccount::Available(acme()),
            LedgerAccount::Held(acme()),
            LedgerAccount::Revenue,
            LedgerAccount::CardClearing,
            LedgerAccount::Grants,
            LedgerAccount::Refunds,
            LedgerAccount::Disputes,
            LedgerAccount::InvoicePayments,
        ] {
            assert_eq!(LedgerAccount::parse(&account.code()), Some(account));
        }
        assert_eq!(LedgerAccount::parse("nope"), None);
        for kind in TransactionKind::ALL {
            assert_eq!(TransactionKind::parse(kind.code()), Some(kind));
        }
    }

    #[test]
    fn deltas_follow_the_transfers() {
        let usage = JournalTransaction::usage(&acme(), Micros::new(30_000));
        assert_eq!(usage.customer_delta().unwrap().available, Micros::new(-30_000));
        let hold = JournalTransaction::hold_placed(&acme(), Micros::new(5));
        assert_eq!(
            hold.customer_delta().unwrap(),
            BalanceDelta {
                available: Micros::new(-5),
                held: Micros::new(5)
            }
        );
        let capture = JournalTransaction::hold_captured(&acme(), Micros::new(5), Micros::new(3)).unwrap();
        assert_eq!(
            capture.customer_delta().unwrap(),
            BalanceDelta {
                available: Micros::new(2),
                held: Micros::new(-5)
            }
        );
        let debit = JournalTransaction::grant(&acme(), Micros::new(-7)).unwrap();
        assert_eq!(debit.customer_delta().unwrap().available, Micros::new(-7));
        assert!(
            JournalTransaction::usage(&acme(), Micros::ZERO)
                .transfers
                .is_empty()
        );
    }

    #[test]
    fn debits_respect_the_billing_mode() {
        let empty = Balances::default();
        assert!(check_debit(BillingMode::Prepaid, empty, Micros::ZERO).is_ok());
        assert!(check_debit(BillingMode::Prepaid, empty, Micros::new(1)).is_err());
        let invoice = BillingMode::Invoice {
            credit_limit: Micros::new(10),
        };
        assert!(check_debit(invoice, empty, Micros::new(10)).is_ok());
        assert!(check_debit(invoice, empty, Micros::new(11)).is_err());
        let negative = Balances {
            available: Micros::new(-3),
            held: Micros::ZERO,
        };
        assert!(check_debit(BillingMode::Prepaid, negative, Micros::ZERO).is_ok());
        assert_eq!(
            check_debit(BillingMode::Prepaid, negative, Micros::new(1)),
            Err(InsufficientFunds {
                spendable: Micros::ZERO,
                required: Micros::new(1)
            })
        );
    }
}
