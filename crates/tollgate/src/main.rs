//! `tollgate`: the one binary. `tollgate serve` (the default) runs the
//! service; the other subcommands operate on the store directly.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod payments;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Prepaid usage billing: balances, Spend & Save tiers, exactly-once charging.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    /// Where the data lives: sqlite://FILE (relative), sqlite:///ABSOLUTE/FILE, or postgres://…
    #[arg(
        long,
        env = "TOLLGATE_DATABASE_URL",
        default_value = "sqlite://tollgate.db",
        global = true
    )]
    database_url: String,
    /// Configuration file merged over the shipped defaults (price book, tiers, limits, sales link).
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Customer accounts.
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Credit (or, negative, debit) an account by operator decision.
    Grant {
        /// The account id.
        account: String,
        /// Amount in USD, e.g. 25.00 or -5.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Why: recorded in the ledger and the audit log.
        #[arg(long)]
        reason: String,
        /// Makes the grant happen at most once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// What Sales agreed with an account: billing mode, credit limit, discount, prices.
    Plan {
        #[command(subcommand)]
        command: PlanCommandLine,
    },
    /// The audit log of operator changes, newest first.
    Audit {
        /// How many entries (1–100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Run the built-in Stripe sandbox alone (for Stripe's own client libraries).
    StripeSandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:12111")]
        addr: SocketAddr,
        /// Where to POST signed events.
        #[arg(long)]
        webhook_url: Option<String>,
        /// The webhook signing secret (whsec_…).
        #[arg(long, default_value = "whsec_sandbox")]
        webhook_secret: String,
    },
}

/// Settings of `tollgate serve`; each is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Base URL for links Tollgate prints or sends (default http:// + the address).
    #[arg(long, env = "TOLLGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The operator's secret API key; generated, stored hashed and printed once when unset.
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Stripe secret key (`sk_…`); unset: Tollgate runs its built-in Stripe sandbox.
    #[arg(long, env = "TOLLGATE_STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Stripe webhook signing secret (`whsec_…`) of the `/webhooks/stripe` endpoint.
    #[arg(long, env = "TOLLGATE_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Stripe's API base URL (default Stripe's own; e.g. a `tollgate stripe-sandbox`).
    #[arg(long, env = "TOLLGATE_STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Where the built-in sandbox listens when there is no Stripe key (port 0: any free port).
    #[arg(long, env = "TOLLGATE_STRIPE_SANDBOX_ADDR", default_value = "127.0.0.1:0")]
    pub stripe_sandbox_addr: SocketAddr,
}

#[derive(Debug, Subcommand)]
enum PlanCommandLine {
    /// Print the account's plan.
    Show {
        /// The account id.
        account: String,
    },
    /// Replace the account's plan (audited as the CLI user).
    Set {
        /// The account id.
        account: String,
        /// Invoice billing with this credit limit (USD); without it: prepaid.
        #[arg(long)]
        invoice_credit_limit: Option<String>,
        /// Net terms of an invoice account, in days (default 30).
        #[arg(long)]
        net_terms_days: Option<u16>,
        /// Personal discount, whole percent.
        #[arg(long)]
        discount_percent: Option<u8>,
        /// A custom unit price, `action=price` (repeatable), e.g. `email_finder=0.010`.
        #[arg(long = "price")]
        prices: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Recompute every balance from its entries and check every invariant; exit 1 on any problem.
    Verify,
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an account.
    Create {
        /// The operator's id for the customer (letters, digits, _ and -).
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Billing e-mail address.
        #[arg(long)]
        email: String,
    },
    /// List accounts.
    List {
        /// Most accounts to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one account.
    Show {
        /// The account id.
        id: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = config::load(cli.config.as_deref())?;
    let database_url = cli.database_url;
    match cli.command {
        None => serve::run(&database_url, config, cli.serve).await,
        Some(Command::Serve(args)) => serve::run(&database_url, config, args).await,
        Some(Command::Migrate) => cli::migrate(&database_url),
        Some(Command::Ledger {
            command: LedgerCommand::Verify,
        }) => cli::verify(&database_url, config).await,
        Some(Command::Accounts { command }) => match command {
            AccountsCommand::Create { id, name, email } => {
                cli::create_account(&database_url, config, &id, &name, &email).await
            }
            AccountsCommand::List { limit } => cli::list_accounts(&database_url, config, limit).await,
            AccountsCommand::Show { id } => cli::show_account(&database_url, config, &id).await,
        },
        Some(Command::Plan { command }) => match command {
            PlanCommandLine::Show { account } => cli::show_plan(&database_url, config, &account).await,
            PlanCommandLine::Set {
                account,
                invoice_credit_limit,
                net_terms_days,
                discount_percent,
                prices,
            } => {
                let plan = cli::PlanArgs {
                    invoice_credit_limit,
                    net_terms_days,
                    discount_percent,
                    prices,
                };
                cli::set_plan(&database_url, config, &account, plan).await
            }
        },
        Some(Command::Audit { limit }) => cli::audit(&database_url, config, limit).await,
        Some(Command::StripeSandbox {
            addr,
            webhook_url,
            webhook_secret,
        }) => cli::stripe_sandbox(addr, webhook_url, webhook_secret).await,
        Some(Command::Grant {
            account,
            amount,
            reason,
            idempotency_key,
        }) => {
            cli::grant(
                &database_url,
                config,
                &account,
                &amount,
                &reason,
                idempotency_key.as_deref(),
            )
            .await
        }
    }
}
