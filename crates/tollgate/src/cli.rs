//! The operator's command line: migrate, verify, accounts, grants. These
//! act on the store directly, with the same rules as the service.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use tollgate_core::money::format_usd;
use tollgate_core::{AccountId, Actor, GrantCommand, IdempotencyKey, Micros, NewAccount};
use tollgate_store::postgres::{DEFAULT_POOL_SIZE, PgStore};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{AccountRecord, DatabaseUrl, PageRequest, SharedStore, StoreRules, SystemClock};

use crate::config::Config;

/// Opens the store named by `database_url`, migrating it as needed.
pub fn open_store(database_url: &str, config: &Config) -> anyhow::Result<SharedStore> {
    let rules = StoreRules {
        price_book: config.price_book.clone(),
        tier_basis: config.tier_basis,
        clock: Arc::new(SystemClock),
        balance_low_level: config.balance_low_level,
    };
    match DatabaseUrl::parse(database_url).map_err(anyhow::Error::msg)? {
        DatabaseUrl::Sqlite(path) => {
            let store = SqliteStore::open(&path, rules)
                .with_context(|| format!("opening the SQLite database {}", path.display()))?;
            Ok(Arc::new(store))
        }
        DatabaseUrl::Postgres(url) => {
            let target = url.clone();
            block_on_helper(async move { tollgate_store::migrate(&target).await })?
                .context("migrating the PostgreSQL database")?;
            // The pool connects lazily, on the caller's runtime.
            let store = PgStore::connect(&url, rules, pool_size()?).context("opening the PostgreSQL pool")?;
            Ok(Arc::new(store))
        }
    }
}

/// Connections one process keeps to PostgreSQL: `TOLLGATE_DATABASE_POOL_SIZE`
/// (default 16); see docs/deploy.md for sizing.
fn pool_size() -> anyhow::Result<usize> {
    match std::env::var("TOLLGATE_DATABASE_POOL_SIZE") {
        Err(_) => Ok(DEFAULT_POOL_SIZE),
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(size) if (1..=1_000).contains(&size) => Ok(size),
            _ => bail!("TOLLGATE_DATABASE_POOL_SIZE must be a number from 1 to 1000, not {value:?}"),
        },
    }
}

/// Runs a future to completion on a small runtime of its own, on a thread of
/// its own: callable from synchronous code and from inside any runtime.
fn block_on_helper<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the database helper thread panicked"))?
    .context("starting the database helper runtime")
}

/// `tollgate migrate`.
pub fn migrate(database_url: &str) -> anyhow::Result<ExitCode> {
    match DatabaseUrl::parse(database_url).map_err(anyhow::Error::msg)? {
        DatabaseUrl::Sqlite(path) => {
            tollgate_store::sqlite::migrate(&path)
                .with_context(|| format!("migrating the SQLite database {}", path.display()))?;
            println!("migrated {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        DatabaseUrl::Postgres(url) => {
            let target = url.clone();
            block_on_helper(async move { tollgate_store::migrate(&target).await })?
                .context("migrating the PostgreSQL database")?;
            println!("migrated the PostgreSQL database");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tollgate ledger verify`: exit 0 only when every invariant holds.
pub async fn verify(database_url: &str, config: Config) -> anyhow::Result<ExitCode> {
    let store = open_store(database_url, &config)?;
    let report = store.verify_ledger().await.context("verifying the ledger")?;
    println!(
        "checked {} accounts and {} journal transactions",
        report.accounts_checked, report.transactions_checked
    );
    if report.is_clean() {
        println!("ledger OK: every balance equals its entries");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("MISMATCH {problem}");
    }
    println!("ledger BROKEN: {} problem(s)", report.problems.len());
    Ok(ExitCode::FAILURE)
}

fn describe(account: &AccountRecord, config: &Config) -> String {
    let book = &config.price_book;
    let tier = book.tier(account.spend.current_tier(book, config.tier_basis));
    format!(
        "{id}\t{name} <{email}>\tbalance {balance} (available {available}, held {held})\t{mode}\ttier {tier} \
         ({discount}%)\tspent this cycle {spent}",
        id = account.id,
        name = account.name,
        email = account.email,
        balance = format_usd(account.balances.total().unwrap_or(Micros::MAX)),
        available = format_usd(account.balances.available),
        held = format_usd(account.balances.held),
        mode = account.mode.code(),
        tier = tier.name,
        discount = tier.discount.get(),
        spent = format_usd(account.spend.cycle_spend),
    )
}

/// `tollgate accounts create`.
pub async fn create_account(
    database_url: &str,
    config: Config,
    id: &str,
    name: &str,
    email: &str,
) -> anyhow::Result<ExitCode> {
    let id = AccountId::parse(id)?;
    let account = NewAccount::new(id, name, email)?.created_by(cli_actor());
    let store = open_store(database_url, &config)?;
    let created = store.create_account(account).await?;
    println!("{}", describe(&created, &config));
    Ok(ExitCode::SUCCESS)
}

/// `tollgate accounts list`.
pub async fn list_accounts(database_url: &str, config: Config, limit: u32) -> anyhow::Result<ExitCode> {
    let store = open_store(database_url, &config)?;
    let mut cursor = None;
    let mut shown = 0;
    loop {
        let page = store
            .list_accounts(PageRequest::new(limit.min(100), cursor))
            .await?;
        for account in &page.data {
            println!("{}", describe(account, &config));
            shown += 1;
        }
        cursor = page.data.last().map(|account| account.id.to_string());
        if !page.has_more || shown >= limit {
            break;
        }
    }
    if shown == 0 {
        println!("no accounts");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tollgate accounts show ID`.
pub async fn show_account(database_url: &str, config: Config, id: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(database_url, &config)?;
    let account = store.account(&AccountId::parse(id)?).await?;
    println!("{}", describe(&account, &config));
    Ok(ExitCode::SUCCESS)
}

fn cli_actor() -> Actor {
    Actor::Cli(std::env::var("USER").unwrap_or_else(|_| "operator".to_owned()))
}

/// `tollgate grant ACCOUNT AMOUNT --reason …`.
pub async fn grant(
    database_url: &str,
    config: Config,
    account: &str,
    amount: &str,
    reason: &str,
    idempotency_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let amount = Micros::parse(amount).with_context(|| format!("`{amount}` is not an amount of money"))?;
    let key = idempotency_key.map(IdempotencyKey::parse).transpose()?;
    let command = GrantCommand::new(AccountId::parse(account)?, amount, reason, key, cli_actor())?;
    let store = open_store(database_url, &config)?;
    let outcome = store.grant(command).await?;
    let line = outcome.value;
    println!(
        "{} {} {} to {}: balance now {}{}",
        line.id,
        if line.amount.is_negative() {
            "debited"
        } else {
            "credited"
        },
        format_usd(line.amount),
        line.account,
        format_usd(line.balances_after.total().unwrap_or(Micros::MAX)),
        if outcome.replayed {
            " (replayed: nothing moved)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags of `tollgate plan set`.
#[derive(Debug, Default)]
pub struct PlanArgs {
    /// Invoice billing with this credit limit; none: prepaid.
    pub invoice_credit_limit: Option<String>,
    /// Net terms (invoice only).
    pub net_terms_days: Option<u16>,
    /// Personal discount.
    pub discount_percent: Option<u8>,
    /// `action=price` pairs.
    pub prices: Vec<String>,
}

fn print_plan(plan: &tollgate_store::PlanRecord) {
    println!(
        "{}: {}",
        plan.account,
        tollgate_core::PlanCommand::describe(plan.mode, &plan.plan, plan.net_terms_days)
    );
}

/// `tollgate plan show`.
pub async fn show_plan(database_url: &str, config: Config, account: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(database_url, &config)?;
    print_plan(&store.plan(&AccountId::parse(account)?).await?);
    Ok(ExitCode::SUCCESS)
}

/// `tollgate plan set`: the whole plan, validated like the API's.
pub async fn set_plan(
    database_url: &str,
    config: Config,
    account: &str,
    args: PlanArgs,
) -> anyhow::Result<ExitCode> {
    let money = |field: &str, text: &str| {
        Micros::parse(text).with_context(|| format!("{field}: `{text}` is not an amount of money"))
    };
    let mut prices = std::collections::BTreeMap::new();
    for pair in &args.prices {
        let Some((action, price)) = pair.split_once('=') else {
            bail!("--price takes action=price, not `{pair}`");
        };
        prices.insert(action.to_owned(), money(&format!("--price {action}"), price)?);
    }
    let request = tollgate_core::PlanRequest {
        invoice: args.invoice_credit_limit.is_some(),
        credit_limit: args
            .invoice_credit_limit
            .as_deref()
            .map(|text| money("--invoice-credit-limit", text))
            .transpose()?,
        discount_percent: args.discount_percent,
        prices,
        net_terms_days: args.net_terms_days,
    };
    let command = tollgate_core::PlanCommand::new(
        AccountId::parse(account)?,
        request,
        &config.price_book,
        cli_actor(),
    )?;
    let store = open_store(database_url, &config)?;
    print_plan(&store.set_plan(command).await?);
    Ok(ExitCode::SUCCESS)
}

/// `tollgate audit`: the newest entries of the audit log.
pub async fn audit(database_url: &str, config: Config, limit: u32) -> anyhow::Result<ExitCode> {
    let store = open_store(database_url, &config)?;
    let page = store.audit_log(PageRequest::new(limit, None)).await?;
    for entry in &page.data {
        println!(
            "{}  {}  {}  {}  before: {}  after: {}",
            entry.created_at,
            entry.actor,
            entry.action,
            entry.account.as_ref().map_or("-".to_owned(), ToString::to_string),
            entry.before.as_deref().unwrap_or("-"),
            entry.after.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tollgate stripe-sandbox`: the sandbox alone until Ctrl-C.
pub async fn stripe_sandbox(
    addr: std::net::SocketAddr,
    webhook_url: Option<String>,
    webhook_secret: String,
) -> anyhow::Result<ExitCode> {
    let mut config = tollgate_stripe_sandbox::SandboxConfig::new(webhook_secret);
    config.webhook_url = webhook_url;
    let sandbox = tollgate_stripe_sandbox::Sandbox::start(addr, config).await?;
    println!(
        "Stripe sandbox listening at {} (secret key: any sk_test_…; Ctrl-C stops it)",
        sandbox.base_url()
    );
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
