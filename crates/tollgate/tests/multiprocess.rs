//! Three `tollgate serve` processes on one PostgreSQL database, 64 clients
//! charging one account whose balance fits exactly `FITS` charges, each
//! idempotency key sent to two different processes at the same instant (two
//! different live ones after the kill too), and one process killed with
//! SIGKILL mid-run. Only the database keeps them consistent: exactly `FITS`
//! charges, one per key, no overdraft, and `tollgate ledger verify` is clean.
//! The same with Auto Top-Up on: the balance crosses the threshold several
//! times and the journal shows exactly one recharge per crossing, one card
//! charge each. Needs PostgreSQL (scripts/test starts it); fails without it.
//!
//! And one process on the embedded SQLite store, killed with SIGKILL under load and
//! started again: every acknowledged charge is there exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};
use tollgate_core::Micros;
use tollgate_store::testing::{Backend, TestDatabase};

const KEY: &str = "tg_sk_multiProcessOperatorKey0123456789";
/// Charges of $0.03 the balance pays for exactly.
const FITS: usize = 150;
/// Distinct idempotency keys sent: more than fit, so some are refused.
const KEYS: usize = 240;
const CLIENTS: usize = 64;

fn tollgate(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_DATABASE_URL", database_url)
        .env("TOLLGATE_API_KEY", KEY)
        .env("TOLLGATE_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_DEMO__CREATE_ACCOUNT", "false")
        .env("TOLLGATE_LIMITS__REQUESTS_PER_SECOND_PER_KEY", "100000")
        .env("TOLLGATE_DATABASE_POOL_SIZE", "8")
        .env("RUST_LOG", "warn");
    command
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: &str) -> Server {
    spawn_server(tollgate(database_url))
}

/// Runs `tollgate serve` with `command`'s settings and reads the URL off its banner.
fn spawn_server(mut command: Command) -> Server {
    let mut child = command
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        if let Some(rest) = line.strip_prefix("Tollgate is running at ") {
            url = Some(rest.trim().to_owned());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        url: url.expect("the banner prints the URL"),
    }
}

/// The processes still running: all three, or the first two once the third is killed.
fn live_processes(killed: &AtomicBool) -> &'static [usize] {
    if killed.load(Ordering::SeqCst) {
        &[0, 1]
    } else {
        &[0, 1, 2]
    }
}

/// What a process answered to one usage request.
struct Answer {
    status: u16,
    body: Value,
    /// Which process answered.
    process: usize,
    /// Whether the process first asked answered (no failover).
    first_try: bool,
}

/// Sends one `email_finder` charge for `key` as copy `copy` (0 or 1) of its pair.
async fn charge(
    client: &reqwest::Client,
    urls: &[String],
    killed: &AtomicBool,
    key_index: usize,
    copy: usize,
) -> Answer {
    let body =
        json!({"action": "email_finder", "quantity": 1, "idempotency_key": format!("key-{key_index}")});
    send_usage(client, urls, killed, key_index + copy, &body).await
}

/// One `api` charge of 12 requests ($0.24) for `key` as copy `copy` of its pair;
/// refused for want of funds (402, which records nothing), it is sent again until
/// it is paid, as a client waiting for its auto top-up would.
async fn charge_api_until_paid(
    client: &reqwest::Client,
    urls: &[String],
    killed: &AtomicBool,
    key_index: usize,
    copy: usize,
    refusals: &AtomicUsize,
) -> Answer {
    let body = json!({"action": "api", "quantity": 12, "idempotency_key": format!("cross-{key_index}")});
    for _ in 0..2_000 {
        let answer = send_usage(client, urls, killed, key_index + copy, &body).await;
        if answer.status != 402 {
            return answer;
        }
        refusals.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("key cross-{key_index} was refused for 40 s: no auto top-up came");
}

/// Posts a usage event to the live process in position `slot` (modulo the live
/// ones), then to the next live ones until one answers (anything but a 5xx: a
/// killed process, or one shedding load, does not count). The two copies of a key
/// use consecutive slots, so while two or three processes live they go to two
/// different ones, before the kill and after it.
async fn send_usage(
    client: &reqwest::Client,
    urls: &[String],
    killed: &AtomicBool,
    slot: usize,
    body: &Value,
) -> Answer {
    for attempt in 0..20 {
        let live = live_processes(killed);
        let process = live[(slot + attempt) % live.len()];
        let sent = client
            .post(format!("{}/v1/accounts/acme/usage", urls[process]))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await
                && status < 500
            {
                return Answer {
                    status,
                    body,
                    process,
                    first_try: attempt == 0,
                };
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no process answered for {body}");
}

/// Sends both copies of a key at the same instant; says whether the kill had
/// already happened when they were sent. Copies sent after the kill that were
/// answered without failover must have been answered by two different processes.
async fn send_pair<F, Fut>(killed: &AtomicBool, send: F) -> (bool, Answer, Answer)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let after_kill = killed.load(Ordering::SeqCst);
    let (first, second) = tokio::join!(send(0), send(1));
    if after_kill && first.first_try && second.first_try {
        assert_ne!(
            first.process, second.process,
            "after the kill both copies of a key went to process {}",
            first.process
        );
    }
    (after_kill, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_one_database_exact_charges_through_a_sigkill() {
    let database = TestDatabase::of(Backend::Postgres);
    let url = database.url().to_owned();
    let migrated = tollgate(&url)
        .arg("migrate")
        .output()
        .expect("tollgate migrate runs");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let mut servers: Vec<Server> = (0..3).map(|_| start(&url)).collect();
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|server| server.url.clone()).collect());
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/accounts", urls[0]))
        .bearer_auth(KEY)
        .json(&json!({"id": "acme", "name": "Acme", "email": "billing@acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let funded = client
        .post(format!("{}/v1/accounts/acme/grants", urls[1]))
        .bearer_auth(KEY)
        .json(&json!({"amount": format!("{}.{:02}", FITS * 3 / 100, FITS * 3 % 100), "reason": "funding"}))
        .send()
        .await
        .unwrap();
    assert_eq!(funded.status().as_u16(), 201);

    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, killed, urls, client) = (next.clone(), killed.clone(), urls.clone(), client.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                loop {
                    let key_index = next.fetch_add(1, Ordering::SeqCst);
                    if key_index >= KEYS {
                        break results;
                    }
                    // The same key to two different processes at the same instant.
                    let (after_kill, first, second) =
                        send_pair(&killed, |copy| charge(&client, &urls, &killed, key_index, copy)).await;
                    results.push((format!("key-{key_index}"), after_kill, first, second));
                }
            })
        })
        .collect();
    // SIGKILL one process while charges are in flight.
    while next.load(Ordering::SeqCst) < KEYS / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    servers[2].child.kill().expect("SIGKILL the third process");
    let _ = servers[2].child.wait();

    let mut charged_ids = std::collections::BTreeSet::new();
    let (mut charged_keys, mut refused_keys, mut pairs_after_kill) = (0, 0, 0);
    for task in tasks {
        for (key, after_kill, first, second) in task.await.unwrap() {
            pairs_after_kill += usize::from(after_kill);
            let (body_a, body_b) = (&first.body, &second.body);
            match (first.status, second.status) {
                (200 | 201, 200 | 201) => {
                    assert_eq!(
                        body_a["id"], body_b["id"],
                        "key {key} charged twice: {body_a} {body_b}"
                    );
                    charged_ids.insert(body_a["id"].as_str().unwrap().to_owned());
                    charged_keys += 1;
                }
                (402, 402) => refused_keys += 1,
                other => panic!("key {key}: inconsistent answers {other:?}: {body_a} {body_b}"),
            }
        }
    }
    assert_eq!(charged_keys, FITS, "exactly what fits is charged");
    assert_eq!(charged_ids.len(), FITS, "one charge per key");
    assert_eq!(refused_keys, KEYS - FITS);
    assert!(pairs_after_kill > 0, "the kill came after the last key");

    let account: Value = client
        .get(format!("{}/v1/accounts/acme", urls[0]))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        account["available_balance"],
        json!("0.00"),
        "no overdraft, nothing left: {account}"
    );
    assert_eq!(account["held_balance"], json!("0.00"), "{account}");

    drop(servers);
    let verified = tollgate(&url)
        .args(["ledger", "verify"])
        .output()
        .expect("verify runs");
    let report = String::from_utf8_lossy(&verified.stdout).into_owned();
    println!("{report}");
    assert!(verified.status.success(), "ledger verify failed: {report}");
    assert!(report.contains("ledger OK"));
}

/// A `tollgate stripe-sandbox` process that the three servers share, as they would
/// share Stripe.
struct SharedSandbox {
    child: Child,
    url: String,
}

impl Drop for SharedSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SANDBOX_SECRET: &str = "whsec_multiprocess";

fn start_sandbox() -> SharedSandbox {
    // A free port: bound, read, released, then handed to the sandbox.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "stripe-sandbox",
            "--addr",
            &addr,
            "--webhook-secret",
            SANDBOX_SECRET,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the sandbox starts");
    // Owned from here on, so the process is killed and reaped on every path.
    let sandbox = SharedSandbox {
        child,
        url: format!("http://{addr}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return sandbox;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the sandbox did not start on {addr}");
}

fn start_with_stripe(database_url: &str, sandbox: &SharedSandbox) -> Server {
    start_with_stripe_env(database_url, sandbox, &[])
}

fn start_with_stripe_env(database_url: &str, sandbox: &SharedSandbox, env: &[(&str, &str)]) -> Server {
    let mut command = tollgate(database_url);
    command
        .envs(env.iter().copied())
        .env("TOLLGATE_STRIPE_SECRET_KEY", "sk_test_multiprocess")
        .env("TOLLGATE_STRIPE_API_BASE", &sandbox.url)
        .env("TOLLGATE_STRIPE_WEBHOOK_SECRET", SANDBOX_SECRET);
    spawn_server(command)
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_recharge_once_per_crossing_through_a_sigkill() {
    let database = TestDatabase::of(Backend::Postgres);
    let url = database.url().to_owned();
    let migrated = tollgate(&url)
        .arg("migrate")
        .output()
        .expect("tollgate migrate runs");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let sandbox = start_sandbox();
    let mut servers: Vec<Server> = (0..3).map(|_| start_with_stripe(&url, &sandbox)).collect();
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|server| server.url.clone()).collect());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Stripe's webhooks go to the first process (the one that is never killed).
    client
        .post(format!("{}/__sandbox/webhooks/config", sandbox.url))
        .json(&json!({"url": format!("{}/webhooks/stripe", urls[0])}))
        .send()
        .await
        .unwrap();

    let created = client
        .post(format!("{}/v1/accounts", urls[0]))
        .bearer_auth(KEY)
        .json(&json!({"id": "acme", "name": "Acme", "email": "billing@acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    // A card, saved through the hosted page and the second process's return endpoint.
    let setup: Value = client
        .post(format!("{}/v1/accounts/acme/payment_method/setup", urls[1]))
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = setup["url"].as_str().expect("hosted page url").to_owned();
    let paid = client
        .post(&page)
        .form(&[
            ("cardNumber", "4242424242424242"),
            ("cardExpiry", "12 / 34"),
            ("cardCvc", "123"),
            ("billingName", "Acme"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status().as_u16(), 303);
    let back = paid.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(client.get(&back).send().await.unwrap().status().as_u16(), 303);
    let funded = client
        .post(format!("{}/v1/accounts/acme/grants", urls[2]))
        .bearer_auth(KEY)
        .json(&json!({"amount": "60.00", "reason": "funding"}))
        .send()
        .await
        .unwrap();
    assert_eq!(funded.status().as_u16(), 201);
    let rule = client
        .put(format!("{}/v1/accounts/acme/auto_recharge", urls[0]))
        .bearer_auth(KEY)
        .json(&json!({"enabled": true, "threshold": "50.00", "target": "100.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rule.status().as_u16(), 200);

    // 64 clients, CROSSING_KEYS distinct keys of 12 API requests ($0.24; $0.216 once
    // $100 spent this cycle earns the Growth tier), each key sent to two processes at
    // once, while every process's worker races to recharge. Each recharge brings the
    // available balance from under $50 to $100 minus what was spent while it was in
    // flight, i.e. it adds more than $50 and at most $100; so the k-th crossing of $50
    // comes after $10 + (k - 1) × ($50 to $100) of spending, and the $226 spent crosses
    // at least 3 and at most 5 times whatever the timing.
    const CROSSING_KEYS: usize = 1_000;
    let prices = [Micros::parse("0.24").unwrap(), Micros::parse("0.216").unwrap()];
    let (threshold, funded) = (Micros::parse("50.00").unwrap(), Micros::parse("60.00").unwrap());
    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, killed, urls, client, refusals) = (
                next.clone(),
                killed.clone(),
                urls.clone(),
                client.clone(),
                refusals.clone(),
            );
            tokio::spawn(async move {
                let mut charge_ids = Vec::new();
                loop {
                    let key_index = next.fetch_add(1, Ordering::SeqCst);
                    if key_index >= CROSSING_KEYS {
                        break charge_ids;
                    }
                    let (_, first, second) = send_pair(&killed, |copy| {
                        charge_api_until_paid(&client, &urls, &killed, key_index, copy, &refusals)
                    })
                    .await;
                    assert_eq!(first.status, 200, "{}", first.body);
                    assert_eq!(second.status, 200, "{}", second.body);
                    assert_eq!(first.body["id"], second.body["id"], "one charge per key");
                    charge_ids.push(first.body["id"].as_str().unwrap().to_owned());
                }
            })
        })
        .collect();
    while next.load(Ordering::SeqCst) < CROSSING_KEYS / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    servers[2].child.kill().expect("SIGKILL the third process");
    let _ = servers[2].child.wait();
    let mut charge_ids = std::collections::BTreeSet::new();
    for task in tasks {
        charge_ids.extend(task.await.unwrap());
    }
    assert_eq!(charge_ids.len(), CROSSING_KEYS, "one charge per key");

    // The last crossing's recharge settles: the rule is armed again and the balance is
    // at or above the threshold, so no further recharge is due (nothing is spent any more).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let account = get_json(&client, &format!("{}/v1/accounts/acme", urls[0])).await;
        let available = Micros::parse(account["available_balance"].as_str().unwrap()).unwrap();
        let status = account["auto_recharge"]["status"].as_str().unwrap().to_owned();
        assert!(
            status == "active" || status == "in_progress",
            "the rule left the happy path: {account}"
        );
        if status == "active" && available >= threshold {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last recharge did not settle: {account}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The whole journal, oldest first: every page, newest first, reversed.
    let mut lines: Vec<Value> = Vec::new();
    let mut page_url = format!("{}/v1/accounts/acme/transactions?limit=100", urls[1]);
    loop {
        let page = get_json(&client, &page_url).await;
        let data = page["data"].as_array().unwrap();
        lines.extend(data.iter().cloned());
        if page["has_more"] != true {
            break;
        }
        let last = data.last().unwrap()["id"].as_str().unwrap();
        page_url = format!(
            "{}/v1/accounts/acme/transactions?limit=100&starting_after={last}",
            urls[1]
        );
    }
    lines.reverse();
    let money = |line: &Value, field: &str| Micros::parse(line[field].as_str().unwrap()).unwrap();
    // The funding grant comes first; the rule was switched on right after it.
    assert_eq!(lines[0]["type"], "grant", "{}", lines[0]);
    assert_eq!(money(&lines[0], "available_balance_after"), funded);
    // Walk it: a crossing is a line taking the available balance from at or above the
    // threshold to below it. Each crossing is answered by exactly one recharge before the
    // next crossing, and each recharge answers a crossing since the previous recharge.
    let (mut crossings, mut recharges, mut usage_lines) = (0, 0, 0);
    let (mut recharged, mut spent) = (Micros::ZERO, Micros::ZERO);
    let mut awaiting_recharge = false;
    let mut above = true;
    for line in &lines[1..] {
        let available = money(line, "available_balance_after");
        assert!(!available.is_negative(), "overdraft: {line}");
        match line["type"].as_str().unwrap() {
            "auto_recharge" => {
                assert!(
                    awaiting_recharge,
                    "recharge {} without a crossing since the previous one: {line}",
                    recharges + 1
                );
                awaiting_recharge = false;
                recharges += 1;
                recharged = recharged.checked_add(money(line, "amount")).unwrap();
                // Adding more than target - threshold brings the balance back above it.
                assert!(
                    available >= threshold,
                    "a recharge left the balance below the threshold: {line}"
                );
            }
            "usage" => {
                usage_lines += 1;
                let cost = money(line, "amount").checked_neg().unwrap();
                assert!(
                    prices.contains(&cost),
                    "12 API requests at Starter or Growth prices: {line}"
                );
                spent = spent.checked_add(cost).unwrap();
                if above && available < threshold {
                    assert!(
                        !awaiting_recharge,
                        "crossing {} before crossing {} was recharged: {line}",
                        crossings + 1,
                        crossings
                    );
                    crossings += 1;
                    awaiting_recharge = true;
                }
            }
            other => panic!("unexpected {other} line: {line}"),
        }
        above = available >= threshold;
    }
    assert!(!awaiting_recharge, "crossing {crossings} was never recharged");
    assert_eq!(recharges, crossings, "exactly one recharge per crossing");
    // Over $210.24 spent (three crossings however large the recharges), under $260
    // (six would need more, however small).
    assert!(
        spent > Micros::parse("210.24").unwrap() && spent < Micros::parse("260.00").unwrap(),
        "{spent}"
    );
    assert!(
        (3..=5).contains(&crossings),
        "${spent} of spending crosses $50 three to five times, not {crossings}"
    );
    assert_eq!(usage_lines, CROSSING_KEYS, "one usage line per key");
    println!(
        "{crossings} crossings, {recharges} recharges of ${recharged} for ${spent} spent, {} refusals (402) retried",
        refusals.load(Ordering::SeqCst)
    );

    // Stripe charged the card once per recharge, no more.
    let state = get_json(&client, &format!("{}/__sandbox/state", sandbox.url)).await;
    let charges = state["charges"].as_array().unwrap();
    let succeeded = charges
        .iter()
        .filter(|charge| charge["status"] == "succeeded")
        .count();
    assert_eq!(succeeded, recharges, "one card charge per recharge: {charges:?}");
    assert_eq!(charges.len(), recharges, "no other charge attempted: {charges:?}");

    // No cent created or lost.
    let account = get_json(&client, &format!("{}/v1/accounts/acme", urls[0])).await;
    assert_eq!(
        Micros::parse(account["balance"].as_str().unwrap()).unwrap(),
        funded.checked_sub(spent).unwrap().checked_add(recharged).unwrap(),
        "{account}"
    );
    assert_eq!(account["held_balance"], json!("0.00"), "{account}");

    drop(servers);
    let verified = tollgate(&url)
        .args(["ledger", "verify"])
        .output()
        .expect("verify runs");
    let report = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "ledger verify failed: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_charge_and_the_credit_is_recovered_after_restart_with_one_credit() {
    let database = TestDatabase::of(Backend::Postgres);
    let url = database.url().to_owned();
    let migrated = tollgate(&url)
        .arg("migrate")
        .output()
        .expect("tollgate migrate runs");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let sandbox = start_sandbox();
    // Recovery looks at every open top-up, at start and every second.
    let env = [
        ("TOLLGATE_PAYMENTS__RECOVERY_MIN_AGE_SECONDS", "0"),
        ("TOLLGATE_PAYMENTS__RECOVERY_INTERVAL_MS", "1000"),
    ];
    let mut server = start_with_stripe_env(&url, &sandbox, &env);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let admin = |path: &str| format!("{}/__sandbox/{path}", sandbox.url);
    client
        .post(admin("webhooks/config"))
        .json(&json!({"url": format!("{}/webhooks/stripe", server.url)}))
        .send()
        .await
        .unwrap();
    let created = client
        .post(format!("{}/v1/accounts", server.url))
        .bearer_auth(KEY)
        .json(&json!({"id": "acme", "name": "Acme", "email": "billing@acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let setup: Value = client
        .post(format!("{}/v1/accounts/acme/payment_method/setup", server.url))
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = setup["url"].as_str().expect("hosted page url").to_owned();
    let paid = client
        .post(&page)
        .form(&[
            ("cardNumber", "4242424242424242"),
            ("cardExpiry", "12 / 34"),
            ("cardCvc", "123"),
            ("billingName", "Acme"),
        ])
        .send()
        .await
        .unwrap();
    let back = paid.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(client.get(&back).send().await.unwrap().status().as_u16(), 303);

    // Stripe charges, but its answer never arrives and neither do its webhooks.
    client
        .post(admin("webhooks/faults"))
        .json(&json!({"drop_next": 1000}))
        .send()
        .await
        .unwrap();
    client
        .post(admin("faults/fail_next"))
        .json(&json!({"count": 10, "when": "after", "path_prefix": "/v1/payment_intents"}))
        .send()
        .await
        .unwrap();
    let topup = |base: String| {
        client
            .post(format!("{base}/v1/accounts/acme/topups"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", "buy-40")
            .json(&json!({"amount": "40.00"}))
            .send()
    };
    let lost = topup(server.url.clone()).await.unwrap();
    assert_eq!(lost.status().as_u16(), 503, "{}", lost.text().await.unwrap());
    // The process dies before it learns anything more.
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    client.delete(admin("faults")).send().await.unwrap();

    let state = get_json(&client, &admin("state")).await;
    let succeeded = |state: &Value| {
        state["charges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|charge| charge["status"] == "succeeded")
            .count()
    };
    assert_eq!(succeeded(&state), 1, "Stripe did charge");

    // Restarted on the same database: the recovery pass asks Stripe and credits once.
    let server = start_with_stripe_env(&url, &sandbox, &env);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let account = get_json(&client, &format!("{}/v1/accounts/acme", server.url)).await;
        if account["balance"] == "40.00" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recovered: {account}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The customer's retry, more recovery passes and the redelivered webhooks change nothing.
    let retried: Value = topup(server.url.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(retried["status"], "succeeded", "{retried}");
    client
        .post(admin("webhooks/faults"))
        .json(&json!({"drop_next": 0}))
        .send()
        .await
        .unwrap();
    client
        .post(admin("webhooks/config"))
        .json(&json!({"url": format!("{}/webhooks/stripe", server.url)}))
        .send()
        .await
        .unwrap();
    client
        .post(admin("webhooks/flush"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let account = get_json(&client, &format!("{}/v1/accounts/acme", server.url)).await;
    assert_eq!(account["balance"], "40.00", "credited exactly once: {account}");
    assert_eq!(
        succeeded(&get_json(&client, &admin("state")).await),
        1,
        "charged exactly once"
    );
    drop(server);
    let verified = tollgate(&url)
        .args(["ledger", "verify"])
        .output()
        .expect("verify runs");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

/// Accounts the SQLite crash run spreads its charges over.
const CRASH_ACCOUNTS: usize = 20;
/// Keys the SQLite crash run sends before and after the kill.
const CRASH_KEYS: usize = 1_200;

/// One `tollgate serve` on the embedded SQLite store, loaded by 32 clients, killed with
/// SIGKILL mid-run and started again on the same file: every charge that was acknowledged
/// is in the ledger exactly once (its key replays the same charge), every key ever sent is
/// charged at most once, the balances equal the charges, and `tollgate ledger verify` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_acknowledged_charges_survive_a_sigkill_exactly_once() {
    let database = TestDatabase::of(Backend::Sqlite);
    let url = database.url().to_owned();
    let server = start(&url);
    let client = reqwest::Client::new();
    for index in 0..CRASH_ACCOUNTS {
        let id = format!("acct{index}");
        let created = client
            .post(format!("{}/v1/accounts", server.url))
            .bearer_auth(KEY)
            .json(&json!({"id": id, "name": id, "email": "billing@example.test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        let funded = client
            .post(format!("{}/v1/accounts/{id}/grants", server.url))
            .bearer_auth(KEY)
            .json(&json!({"amount": "1000.00", "reason": "funding"}))
            .send()
            .await
            .unwrap();
        assert_eq!(funded.status().as_u16(), 201);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let base = Arc::new(server.url.clone());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (next, base, client) = (next.clone(), base.clone(), client.clone());
            tokio::spawn(async move {
                // (key, account, charge id when acknowledged)
                let mut sent: Vec<(String, String, Option<String>)> = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= CRASH_KEYS {
                        break sent;
                    }
                    let (key, account) = (
                        format!("crash-{index}"),
                        format!("acct{}", index % CRASH_ACCOUNTS),
                    );
                    let answer = client
                        .post(format!("{base}/v1/accounts/{account}/usage"))
                        .bearer_auth(KEY)
                        .json(&json!({"action": "email_finder", "quantity": 1, "idempotency_key": key}))
                        .send()
                        .await;
                    let acknowledged = match answer {
                        Ok(response) if response.status().as_u16() == 200 => response
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|body| body["id"].as_str().map(str::to_owned)),
                        // Killed: this one and everything after it are unanswered.
                        _ => {
                            sent.push((key, account, None));
                            break sent;
                        }
                    };
                    sent.push((key, account, acknowledged));
                }
            })
        })
        .collect();
    while next.load(Ordering::SeqCst) < CRASH_KEYS / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut server = server;
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    let acknowledged = sent.iter().filter(|(_, _, id)| id.is_some()).count();
    assert!(
        acknowledged > 0,
        "the kill came before any charge was acknowledged"
    );
    assert!(sent.len() < CRASH_KEYS, "the kill came after the run");

    // Started again on the same file: every key sent, sent again.
    let restarted = start(&url);
    for (key, account, acknowledged) in &sent {
        let body: Value = client
            .post(format!("{}/v1/accounts/{account}/usage", restarted.url))
            .bearer_auth(KEY)
            .json(&json!({"action": "email_finder", "quantity": 1, "idempotency_key": key}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = acknowledged {
            assert_eq!(body["replayed"], true, "acknowledged {key} was lost: {body}");
            assert_eq!(body["id"].as_str(), Some(id.as_str()), "{key} charged twice");
        }
    }
    // Now every key sent is charged: each exactly once, and the balances say so.
    let mut usage_lines = 0;
    for index in 0..CRASH_ACCOUNTS {
        let id = format!("acct{index}");
        let mut starting_after: Option<String> = None;
        loop {
            let mut page_url = format!("{}/v1/accounts/{id}/transactions?limit=100", restarted.url);
            if let Some(cursor) = &starting_after {
                page_url.push_str(&format!("&starting_after={cursor}"));
            }
            let page: Value = client
                .get(page_url)
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let data = page["data"].as_array().unwrap();
            usage_lines += data.iter().filter(|line| line["type"] == "usage").count();
            if page["has_more"] != true {
                break;
            }
            starting_after = data
                .last()
                .and_then(|line| line["id"].as_str())
                .map(str::to_owned);
        }
    }
    assert_eq!(usage_lines, sent.len(), "one charge per key sent, no more");
    drop(restarted);
    let verified = tollgate(&url)
        .args(["ledger", "verify"])
        .output()
        .expect("verify runs");
    let report = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "ledger verify failed: {report}");
    println!(
        "{acknowledged} of {} charges acknowledged before the SIGKILL; {report}",
        sent.len()
    );
}
