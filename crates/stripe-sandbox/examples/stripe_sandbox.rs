//! Runs the Stripe sandbox alone until Ctrl-C, for manual testing with Stripe's client libraries.
//!
//! `cargo run -p tollgate-stripe-sandbox --example stripe_sandbox -- 127.0.0.1:12111 [webhook-url] [whsec_…]`

use std::net::SocketAddr;

use tollgate_stripe_sandbox::{Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:12111").parse()?;
    let webhook_url = args.next();
    let secret = args.next().unwrap_or_else(|| "whsec_sandbox".to_string());
    let mut config = SandboxConfig::new(secret);
    config.webhook_url = webhook_url;
    let sandbox = Sandbox::start(addr, config).await?;
    println!("Stripe sandbox on {} (Ctrl-C to stop)", sandbox.base_url());
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
