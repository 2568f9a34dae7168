//! A built-in Stripe sandbox: a stateful HTTP server speaking Stripe's wire protocol.
//!
//! It serves the slice of Stripe's API Tollgate uses (customers, Checkout sessions with a hosted
//! card page, payment methods, setup and payment intents, charges, refunds, disputes, events),
//! behaves like Stripe's test cards, and delivers signed webhooks. Sandbox-only endpoints under
//! `/__sandbox` (and the matching methods on [`Sandbox`]) inject faults for tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate_stripe_sandbox::SandboxError> {
//! use tollgate_stripe_sandbox::{Sandbox, SandboxConfig};
//! let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxConfig::new("whsec_test")).await?;
//! // Point a Stripe client at `sandbox.base_url()` with any `sk_test_…` key.
//! sandbox.set_webhook_url("http://127.0.0.1:9000/webhooks/stripe");
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```

#![recursion_limit = "256"]
#![warn(missing_docs)]

mod admin;
mod api;
mod cards;
mod faults;
mod hosted;
mod objects;
mod state;
mod webhooks;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use faults::{ApiFault, ApiFaultKind, FaultTiming, WebhookFaults};
pub use objects::DeliveryStatus;
pub use webhooks::{DeliveryRecord, RetryPolicy, signature_header};

use state::State;

/// Default cap on stored events; the oldest are forgotten first.
const DEFAULT_MAX_EVENTS: usize = 10_000;

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where events are POSTed; `None` keeps them until a URL is set and they are flushed.
    pub webhook_url: Option<String>,
    /// The endpoint's signing secret (`whsec_…`), used for `Stripe-Signature`.
    pub webhook_secret: String,
    /// Base of hosted-page links (Checkout `url`); default `http://<bound address>`.
    pub public_base_url: Option<String>,
    /// Webhook retries.
    pub retry: RetryPolicy,
    /// Most events kept (at least 1).
    pub max_events: usize,
}

impl SandboxConfig {
    /// A configuration with this webhook secret and defaults for everything else.
    pub fn new(webhook_secret: impl Into<String>) -> Self {
        SandboxConfig {
            webhook_url: None,
            webhook_secret: webhook_secret.into(),
            public_base_url: None,
            retry: RetryPolicy::default(),
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
}

/// Why the sandbox could not start or an admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listening socket could not be bound.
    #[error("cannot bind the Stripe sandbox to {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid Stripe sandbox configuration: {0}")]
    Config(String),
    /// An admin operation was refused (unknown id, wrong state…).
    #[error("{message}")]
    Rejected {
        /// HTTP status the admin endpoint would answer.
        status: u16,
        /// Stripe-style message.
        message: String,
    },
}

impl From<wire::ApiError> for SandboxError {
    fn from(e: wire::ApiError) -> Self {
        let message = e
            .body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("rejected")
            .to_string();
        SandboxError::Rejected {
            status: e.status.as_u16(),
            message,
        }
    }
}

/// State shared by the server, the webhook deliverer and the [`Sandbox`] handle.
pub(crate) struct App {
    state: Mutex<State>,
    wake: Notify,
    public_base: String,
    webhook_secret: String,
    retry: RetryPolicy,
    http: reqwest::Client,
}

impl App {
    /// Runs `f` under the state lock, then wakes the deliverer if events were queued.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, wake) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let r = f(&mut state);
            (r, std::mem::take(&mut state.wake))
        };
        if wake {
            self.wake.notify_one();
        }
        r
    }
}

/// A running sandbox; dropping it stops the server and the webhook deliverer.
pub struct Sandbox {
    app: Arc<App>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    deliverer: JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `addr` (port 0 picks a free port) and starts the server and webhook deliverer.
    pub async fn start(addr: SocketAddr, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if config.webhook_secret.is_empty() {
            return Err(SandboxError::Config(
                "the webhook secret must not be empty".into(),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SandboxError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr, source })?;
        // rustls refuses to choose when a build links two crypto providers.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.retry.attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| SandboxError::Config(format!("webhook HTTP client: {e}")))?;
        let public_base = config
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_string();
        let app = Arc::new(App {
            state: Mutex::new(State::new(
                public_base.clone(),
                config.webhook_url.clone(),
                config.max_events,
            )),
            wake: Notify::new(),
            public_base,
            webhook_secret: config.webhook_secret,
            retry: config.retry,
            http,
        });
        let (stop, stop_rx) = watch::channel(false);
        let router = build_router(app.clone());
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "Stripe sandbox server stopped");
            }
        });
        let deliverer = tokio::spawn(webhooks::run_deliverer(app.clone(), stop_rx.clone()));
        tokio::spawn(sweep_expired_sessions(app.clone(), stop_rx));
        tracing::info!(%addr, "Stripe sandbox listening");
        Ok(Sandbox {
            app,
            addr,
            stop,
            server,
            deliverer,
        })
    }

    /// The API base to give a Stripe client, e.g. `http://127.0.0.1:12345`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The secret webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.app.webhook_secret
    }

    /// Sets (or changes) where webhooks go; events that waited for an endpoint are sent there.
    pub fn set_webhook_url(&self, url: impl Into<String>) {
        let url = url.into();
        self.app.with(|state| state.set_webhook_url(Some(url)));
    }

    /// Replaces the webhook fault settings.
    pub fn set_webhook_faults(&self, faults: WebhookFaults) {
        self.app.with(|state| state.webhook_faults = faults);
    }

    /// Queues a fault for upcoming `/v1` calls; returns false if too many are queued.
    pub fn inject_api_fault(&self, fault: ApiFault) -> bool {
        admin::push_fault(&self.app, fault)
    }

    /// Removes every queued API fault and webhook fault.
    pub fn clear_faults(&self) {
        self.app.with(|state| {
            state.api_faults.clear();
            state.webhook_faults = WebhookFaults::default();
        });
    }

    /// Queues one event for delivery again; false if the event is unknown.
    pub fn redeliver_event(&self, event_id: &str) -> bool {
        webhooks::redeliver(&self.app, event_id)
    }

    /// Queues every event not yet acknowledged (dropped, held, failed); returns how many.
    pub fn flush_webhooks(&self) -> usize {
        webhooks::flush(&self.app, false)
    }

    /// Queues every stored event for delivery again, in creation order; returns how many.
    pub fn redeliver_all_events(&self) -> usize {
        webhooks::flush(&self.app, true)
    }

    /// Webhook delivery attempts so far (most recent last, bounded).
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.app.with(|state| state.deliveries.iter().cloned().collect())
    }

    /// Delivery status of one event.
    pub fn delivery_status(&self, event_id: &str) -> Option<DeliveryStatus> {
        self.app
            .with(|state| state.events.get(event_id).map(|e| e.delivery))
    }

    /// Opens a dispute on a successful charge (emits `charge.dispute.created`, then
    /// `charge.dispute.funds_withdrawn`); returns the dispute.
    pub fn open_dispute(&self, charge_id: &str, reason: Option<&str>) -> Result<Value, SandboxError> {
        Ok(self
            .app
            .with(|state| state.open_dispute(charge_id, reason.map(str::to_string), None))?)
    }

    /// Closes a dispute as won or lost (emits `charge.dispute.closed`, then, if won,
    /// `charge.dispute.funds_reinstated`); returns the dispute.
    pub fn close_dispute(&self, dispute_id: &str, won: bool) -> Result<Value, SandboxError> {
        Ok(self.app.with(|state| state.close_dispute(dispute_id, won))?)
    }

    /// A JSON dump of everything the sandbox holds, for debugging.
    pub fn state(&self) -> Value {
        self.app.with(|state| state.dump())
    }

    /// Forgets all objects, events, keys and faults (the webhook URL stays).
    pub fn reset(&self) {
        self.app.with(State::reset);
    }

    /// Stops the server and the webhook deliverer and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let server = std::mem::replace(&mut self.server, tokio::spawn(async {}));
        let deliverer = std::mem::replace(&mut self.deliverer, tokio::spawn(async {}));
        // A hanging injected fault could keep a connection open; don't wait for it forever.
        let grace = std::time::Duration::from_secs(5);
        for task in [server, deliverer] {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Expires Checkout sessions in the background so `checkout.session.expired` is sent on time.
async fn sweep_expired_sessions(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => app.with(State::expire_due_sessions),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn build_router(app: Arc<App>) -> Router {
    Router::new()
        .merge(api::router(app.clone()))
        .merge(hosted::router())
        .merge(admin::router())
        .fallback(api::unrecognized)
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .with_state(app)
}
