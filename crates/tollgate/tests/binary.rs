//! The `tollgate` binary as an operator meets it: first start, CLI, verify.
//!
//! On SQLite (the default) each test runs in a directory of its own with no
//! `TOLLGATE_DATABASE_URL`, as `cargo run --release` does, so the default
//! `sqlite://tollgate.db` is what is exercised. With
//! `TOLLGATE_TEST_STORE=postgres` each test gets a fresh PostgreSQL database
//! instead (created by the store crate's test helper, dropped at the end) and
//! every command is given its `TOLLGATE_DATABASE_URL`; an unreachable server
//! fails the test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tollgate_store::testing::{Backend, TestDatabase};

/// Where one test runs: its working directory, and its database.
struct Place {
    dir: tempfile::TempDir,
    /// The test's PostgreSQL database; `None` on SQLite, whose file is the
    /// default `tollgate.db` in `dir`.
    postgres: Option<TestDatabase>,
}

impl Place {
    /// A new place on the store `TOLLGATE_TEST_STORE` names.
    fn new() -> Place {
        let postgres = match Backend::from_env() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::of(Backend::Postgres)),
        };
        Place {
            dir: tempfile::tempdir().unwrap(),
            postgres,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one SQL statement on the test's database, bypassing Tollgate (to tamper with it).
    fn execute_sql(&self, sql: &str) {
        match &self.postgres {
            None => {
                let connection = rusqlite::Connection::open(self.path().join("tollgate.db")).unwrap();
                connection.execute_batch(sql).unwrap();
            }
            Some(database) => {
                // psql, which comes with PostgreSQL: this crate has no PostgreSQL client of its own.
                let output = Command::new("psql")
                    .args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", sql, database.url()])
                    .output()
                    .expect("psql runs (it is installed with PostgreSQL)");
                assert!(
                    output.status.success(),
                    "psql {sql:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}

fn tollgate(place: &Place) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .current_dir(place.path())
        .env_remove("TOLLGATE_API_KEY")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_STRIPE_SECRET_KEY")
        .env_remove("TOLLGATE_STRIPE_API_BASE")
        .env("TOLLGATE_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    if let Some(database) = &place.postgres {
        command.env("TOLLGATE_DATABASE_URL", database.url());
    }
    command
}

struct Server {
    child: Child,
    url: String,
    key: Option<String>,
    page_link: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tollgate` (no subcommand, as `cargo run --release` does) and reads its banner.
fn start(place: &Place) -> Server {
    let mut child = tollgate(place)
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    let mut key = None;
    let mut page_link = None;
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        if let Some(rest) = line.strip_prefix("Tollgate is running at ") {
            url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("operator key: ")
            && rest.starts_with("tg_sk_")
        {
            key = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("billing page: ") {
            page_link = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.trim_start().starts_with("stop:") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        url: url.expect("the banner prints the URL"),
        key,
        page_link,
    }
}

fn run_ok(place: &Place, args: &[&str]) -> String {
    let output = tollgate(place).args(args).output().expect("tollgate runs");
    assert!(
        output.status.success(),
        "tollgate {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn first_start_prints_the_url_and_key_and_creates_the_demo_account() {
    let place = Place::new();
    let server = start(&place);
    let key = server
        .key
        .clone()
        .expect("a generated key is printed on first start");
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let billing: serde_json::Value = client
        .get(format!("{}/v1/accounts/demo/billing", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(billing["balance"], "25.00");
    assert_eq!(billing["tier"]["id"], "starter");
    let unauthorized = client
        .get(format!("{}/v1/accounts/demo", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    drop(server);

    // Second start: same database, key not printed again, demo not recreated.
    let again = start(&place);
    assert_eq!(again.key, None);
    let account: serde_json::Value = client
        .get(format!("{}/v1/accounts/demo", again.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["balance"], "25.00");
}

#[test]
fn cli_manages_accounts_and_verify_catches_a_tampered_balance() {
    let place = Place::new();
    run_ok(&place, &["migrate"]);
    run_ok(
        &place,
        &[
            "accounts",
            "create",
            "--id",
            "acme",
            "--name",
            "Acme",
            "--email",
            "b@acme.test",
        ],
    );
    let granted = run_ok(
        &place,
        &[
            "grant",
            "acme",
            "12.50",
            "--reason",
            "goodwill",
            "--idempotency-key",
            "g1",
        ],
    );
    assert!(granted.contains("credited $12.50"), "{granted}");
    let replay = run_ok(
        &place,
        &[
            "grant",
            "acme",
            "12.50",
            "--reason",
            "goodwill",
            "--idempotency-key",
            "g1",
        ],
    );
    assert!(replay.contains("replayed"), "{replay}");
    let debit = run_ok(&place, &["grant", "acme", "-2.50", "--reason", "correction"]);
    assert!(debit.contains("balance now $10.00"), "{debit}");
    let shown = run_ok(&place, &["accounts", "show", "acme"]);
    assert!(
        shown.contains("balance $10.00") && shown.contains("tier Starter"),
        "{shown}"
    );
    assert!(run_ok(&place, &["accounts", "list"]).contains("acme"));
    let verified = run_ok(&place, &["ledger", "verify"]);
    assert!(verified.contains("ledger OK"), "{verified}");

    // Sales sets a plan from the command line; it is shown, validated and audited.
    let plan = run_ok(
        &place,
        &[
            "plan",
            "set",
            "acme",
            "--invoice-credit-limit",
            "250.00",
            "--discount-percent",
            "20",
            "--price",
            "email_finder=0.010",
        ],
    );
    assert!(
        plan.contains("acme: billing_mode=invoice credit_limit=250.00 net_terms_days=30 discount_percent=20 price.email_finder=0.01"),
        "{plan}"
    );
    assert_eq!(run_ok(&place, &["plan", "show", "acme"]), plan);
    let refused = tollgate(&place)
        .args(["plan", "set", "acme", "--price", "teleport=0.01"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("prices.teleport"));
    assert_eq!(run_ok(&place, &["plan", "show", "acme"]), plan);
    let audit = run_ok(&place, &["audit", "--limit", "5"]);
    let newest = audit.lines().next().unwrap_or_default();
    assert!(
        newest.contains("cli:") && newest.contains("plan.updated") && newest.contains("credit_limit=250.00"),
        "{audit}"
    );
    assert!(audit.contains("grant.created"), "{audit}");
    run_ok(&place, &["plan", "set", "acme"]);

    // Money created out of thin air must be caught.
    place.execute_sql("UPDATE accounts SET available_micros = available_micros + 1 WHERE id = 'acme'");
    let output = tollgate(&place).args(["ledger", "verify"]).output().unwrap();
    assert!(!output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("MISMATCH account acme"), "{report}");

    // Bad input is refused with a reason and changes nothing.
    let refused = tollgate(&place)
        .args(["grant", "acme", "1.0000001", "--reason", "x"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not an amount"));
}

#[test]
fn a_bad_config_stops_start_up_with_the_reason() {
    let place = Place::new();
    let config = place.path().join("bad.toml");
    std::fs::write(&config, "[billing]\ntier_basis = \"weekly\"\n").unwrap();
    let output = tollgate(&place)
        .env("TOLLGATE_CONFIG", &config)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("tier_basis"));
}

#[test]
fn the_stripe_sandbox_runs_alone_on_the_given_address() {
    let place = Place::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tollgate(&place)
        .args([
            "stripe-sandbox",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-secret",
            "whsec_test",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains(&format!("127.0.0.1:{port}")), "{banner}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/customers"))
            .bearer_auth("sk_test_123")
            .form(&[("email", "a@b.test")])
            .send()
            .await
            .unwrap()
            .status()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_a_stripe_key_the_binary_takes_card_payments_through_its_own_sandbox() {
    let place = Place::new();
    let server = start(&place);
    let key = server.key.clone().expect("a generated key");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let topup = |amount: &'static str, idempotency_key: &'static str| {
        client
            .post(format!("{}/v1/accounts/demo/topups", server.url))
            .bearer_auth(&key)
            .header("Idempotency-Key", idempotency_key)
            .json(&serde_json::json!({"amount": amount}))
            .send()
    };
    // The printed link opens the demo account's Billing & Usage page.
    let link = server
        .page_link
        .clone()
        .expect("the banner prints a link to the billing page");
    let opened = client.get(&link).send().await.unwrap();
    assert_eq!(opened.status(), 303, "{link}");
    let cookie = opened.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = client
        .get(format!("{}/billing", server.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("$25.00"), "the demo balance is on the page");
    // No card yet: the sandbox's hosted page takes the card and the payment.
    let first: serde_json::Value = topup("30.00", "first").await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "requires_payment_method", "{first}");
    let page_url = first["url"].as_str().unwrap().to_owned();
    let page = client.get(&page_url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"cardNumber\""), "{page}");
    let paid = client
        .post(&page_url)
        .form(&[
            ("cardNumber", "4242 4242 4242 4242"),
            ("cardExpiry", "12 / 34"),
            ("cardCvc", "123"),
            ("billingName", "Demo"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 303);
    let back = paid.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{}/checkout/return?session_id=", server.url)),
        "{back}"
    );
    let landed = client.get(&back).send().await.unwrap();
    assert_eq!(landed.status(), 303);
    let landed = landed.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        landed.starts_with(&format!("{}/billing?", server.url)),
        "{landed}"
    );
    assert!(landed.contains("topup_status=succeeded"), "{landed}");

    // The card is saved: the next top-up charges it at once.
    let second: serde_json::Value = topup("20.00", "second").await.unwrap().json().await.unwrap();
    assert_eq!(second["status"], "succeeded", "{second}");
    let account: serde_json::Value = client
        .get(format!("{}/v1/accounts/demo", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["balance"], "75.00", "{account}");
    assert_eq!(account["payment_method"]["last4"], "4242", "{account}");
    drop(server);
    let verified = run_ok(&place, &["ledger", "verify"]);
    assert!(verified.contains("ledger OK"), "{verified}");
}
