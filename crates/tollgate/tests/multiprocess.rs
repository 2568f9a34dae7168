//! Three `tollgate serve` processes on one PostgreSQL database, 64 clients
//! charging one account whose balance fits exactly `FITS` charges, each
//! idempotency key sent to two processes at the same instant, and one
//! process killed with SIGKILL mid-run. Only the database keeps them
//! consistent: exactly `FITS` charges, one per key, no overdraft, and
//! `tollgate ledger verify` is clean. Needs PostgreSQL (scripts/test starts it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};
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
    let mut child = tollgate(database_url)
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

/// Sends one charge, moving to another live process when one does not answer.
async fn charge(
    client: &reqwest::Client,
    urls: &[String],
    killed: &AtomicBool,
    first: usize,
    key: &str,
) -> (u16, Value) {
    for attempt in 0..20 {
        let mut index = (first + attempt) % urls.len();
        if killed.load(Ordering::SeqCst) && index == 2 {
            index = attempt % 2;
        }
        let sent = client
            .post(format!("{}/v1/accounts/acme/usage", urls[index]))
            .bearer_auth(KEY)
            .json(&json!({"action": "email_finder", "quantity": 1, "idempotency_key": key}))
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await
                && status != 503
                && status < 500
            {
                return (status, body);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no process answered for key {key}");
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
                    let key = format!("key-{key_index}");
                    // The same key to two different processes at the same instant.
                    let (first, second) = tokio::join!(
                        charge(&client, &urls, &killed, key_index % 3, &key),
                        charge(&client, &urls, &killed, key_index % 3 + 1, &key),
                    );
                    results.push((key, first, second));
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
    let (mut charged_keys, mut refused_keys) = (0, 0);
    for task in tasks {
        for (key, (status_a, body_a), (status_b, body_b)) in task.await.unwrap() {
            match (status_a, status_b) {
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
