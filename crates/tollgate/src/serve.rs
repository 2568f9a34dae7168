//! `tollgate serve`: open the store, make sure there is an operator key and
//! (on first start) a demo account, then serve HTTP until told to stop.

use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tollgate_core::money::format_usd;
use tollgate_core::{AccountId, Actor, GrantCommand, IdempotencyKey, NewAccount};
use tollgate_store::{ApiKeyRecord, PageRequest, SharedStore};
use tollgate_web::{AppState, WebConfig, auth};

use crate::ServeArgs;
use crate::cli::open_store;
use crate::config::Config;

/// Id of the account created on first start.
pub const DEMO_ACCOUNT_ID: &str = "demo";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // A second initialisation (tests) is harmless; ignore it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// What to tell the operator about the key.
enum OperatorKey {
    FromSettings,
    Generated(String),
    Stored,
}

async fn ensure_operator_key(store: &SharedStore, configured: Option<&str>) -> anyhow::Result<OperatorKey> {
    if configured.is_some() {
        return Ok(OperatorKey::FromSettings);
    }
    if store.count_api_keys().await? > 0 {
        return Ok(OperatorKey::Stored);
    }
    let secret = auth::generate_api_key();
    store
        .insert_api_key(ApiKeyRecord {
            id: "key_operator".to_owned(),
            key_hash: auth::hash_api_key(&secret),
            label: "operator (generated on first start)".to_owned(),
            created_at: time::OffsetDateTime::now_utc(),
        })
        .await?;
    Ok(OperatorKey::Generated(secret))
}

async fn ensure_demo_account(store: &SharedStore, config: &Config) -> anyhow::Result<bool> {
    if !config.create_demo_account
        || !store
            .list_accounts(PageRequest::new(1, None))
            .await?
            .data
            .is_empty()
    {
        return Ok(false);
    }
    let id = AccountId::parse(DEMO_ACCOUNT_ID)?;
    store
        .create_account(NewAccount::new(id.clone(), "Demo", "demo@tollgate.test")?)
        .await?;
    if config.demo_credit.is_positive() {
        let key = IdempotencyKey::parse("demo-credit")?;
        store
            .grant(GrantCommand::new(
                id,
                config.demo_credit,
                "Demo credit",
                Some(key),
                Actor::System,
            )?)
            .await?;
    }
    Ok(true)
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(database_url: &str, config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let store = open_store(database_url, &config)?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let local_addr = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local_addr}"));
    let operator_key = ensure_operator_key(&store, args.api_key.as_deref()).await?;
    let created_demo = ensure_demo_account(&store, &config).await?;
    let clock: std::sync::Arc<dyn tollgate_core::Clock> = std::sync::Arc::new(tollgate_store::SystemClock);
    let payments = crate::payments::start(store.clone(), clock.clone(), &config, &args, &public_url).await?;
    let recovery = crate::payments::spawn_recovery(
        payments.billing.clone(),
        config.recovery_interval_ms,
        config.recovery_min_age_seconds,
    );
    let auto_recharge = payments
        .billing
        .spawn_auto_recharge_worker(tollgate_billing::AUTO_RECHARGE_POLL_INTERVAL_MS);
    let state = AppState::with_billing(
        store.clone(),
        WebConfig {
            price_book: config.price_book.clone(),
            tier_basis: config.tier_basis,
            clock,
            default_hold_ttl: config.hold_ttl,
            operator_key: args.api_key.clone(),
            booking_url: config.booking_url.clone(),
            public_url: public_url.clone(),
            max_body_bytes: config.max_body_bytes,
            request_timeout_ms: config.request_timeout_ms,
            rate_limit_per_second: config.requests_per_second_per_key,
        },
        payments.billing.clone(),
    );
    let sweeper = tollgate_web::spawn_hold_sweeper(store.clone(), config.hold_sweep_interval_ms);
    let invoice_closer =
        tollgate_web::spawn_invoice_closer(store.clone(), tollgate_web::INVOICE_CLOSE_INTERVAL_MS);
    let event_sender = tollgate_web::spawn_event_sender(
        store.clone(),
        tollgate_web::EventSender::new(config.delivery_policy).context("building the event sender")?,
        config.delivery_poll_interval_ms,
    );

    println!("Tollgate is running at {public_url}");
    println!("  database:   {database_url}");
    println!("  payments:   {}", payments.description);
    match &operator_key {
        OperatorKey::FromSettings => println!("  operator key: from TOLLGATE_API_KEY / --api-key"),
        OperatorKey::Generated(secret) => {
            println!("  operator key: {secret}");
            println!("                (generated now and stored hashed: it is shown only this once)");
        }
        OperatorKey::Stored => {
            println!(
                "  operator key: stored hashed (shown on first start); set TOLLGATE_API_KEY to use your own"
            )
        }
    }
    if created_demo {
        println!(
            "  demo account: `{DEMO_ACCOUNT_ID}` with {} of credit",
            format_usd(config.demo_credit)
        );
    }
    // A ready link to the demo account's Billing & Usage page (single use, 5 minutes).
    let demo = AccountId::parse(DEMO_ACCOUNT_ID)?;
    if store.account(&demo).await.is_ok() {
        match tollgate_web::page::portal::create_link(&state, &demo, None, &Actor::System).await {
            Ok(link) => println!("  billing page: {} (single use, valid 5 minutes)", link.url),
            Err(error) => tracing::warn!(?error, "could not create the demo account's page link"),
        }
        // Only a hint that names an account which exists.
        println!(
            "  try:        curl -H 'Authorization: Bearer <key>' {public_url}/v1/accounts/{DEMO_ACCOUNT_ID}/billing"
        );
    }
    // Always the banner's last line: scripts (and the binary's tests) read up to it.
    println!("  stop:       Ctrl-C (finishes the requests in flight)");

    tollgate_web::serve(listener, state, shutdown_signal())
        .await
        .context("serving HTTP")?;
    sweeper.abort();
    invoice_closer.abort();
    event_sender.abort();
    recovery.abort();
    auto_recharge.abort();
    if let Some(sandbox) = payments.sandbox {
        sandbox.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
