//! `tollgate-bench`: measures, in one run, the figures issue 7 asks for:
//! the disk's fsync rate (F), a trivial handler (H), a naive baseline (B0 on
//! SQLite, P0 on PostgreSQL), Tollgate's usage path on both stores, latency
//! at half load and peak RSS with many accounts. Ratios are only taken
//! between figures of the same run on the same machine. See README.md.

#![forbid(unsafe_code)]

mod cpu;
mod load;
mod naive;
mod report;
mod tollgate;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;

use crate::load::{Accounts, Shape, Spec};
use crate::report::{Row, ratio};

/// Default PostgreSQL server; a fresh database is created on it per run and dropped after.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Balance of each naive-baseline account: the same $1M Tollgate accounts get.
const NAIVE_BALANCE_MICROS: i64 = tollgate_core::commands::MAX_OPERATION_AMOUNT.get();

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "tollgate-bench",
    about = "Benchmarks Tollgate's usage path against a naive baseline (issue 7)"
)]
struct Args {
    /// Requests in flight at once in the closed-loop scenarios.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per load scenario.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Warm-up seconds before each measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Accounts the uniform scenarios spread over (each funded with $1M).
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Events per request in the batch scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Accounts created for the peak-RSS figure (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    accounts_for_rss: usize,
    /// Zero-priced charges the RSS process makes over random accounts before reading its peak.
    #[arg(long, default_value_t = 20_000)]
    rss_probe_events: usize,
    /// Seconds of the fsync loop (F).
    #[arg(long, default_value_t = 1.0)]
    fsync_seconds: f64,
    /// Hard cap on requests per scenario: every loop stops by time and by count.
    #[arg(long, default_value_t = 20_000_000)]
    max_requests: u64,
    /// PostgreSQL server for P0 and Tollgate on PostgreSQL (a fresh database per run).
    #[arg(long, default_value = DEFAULT_POSTGRES_URL)]
    postgres_url: String,
    /// Skip the PostgreSQL rows (printed as not measured).
    #[arg(long)]
    no_postgres: bool,
    /// Directory for the SQLite files and the fsync probe [default: the system temp dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the JSON [default: target/bench/results.json in the workspace, else the temp dir].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as the RSS probe process on this SQLite file.
    #[arg(long, hide = true)]
    rss_child: Option<PathBuf>,
}

impl Args {
    fn spec(&self, base: &str, token: &str, accounts: Accounts, shape: Shape, prefix: &str) -> Spec {
        Spec {
            base: base.to_owned(),
            token: token.to_owned(),
            accounts,
            shape,
            concurrency: self.concurrency.max(1),
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            measure: Duration::from_secs_f64(self.seconds.max(0.01)),
            max_requests: self.max_requests.max(1),
            key_prefix: prefix.to_owned(),
        }
    }
}

#[derive(Serialize)]
struct Results<'a> {
    tool: &'static str,
    started_unix: u64,
    wall_seconds: f64,
    cpus: usize,
    args: &'a Args,
    rows: &'a [Row],
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Two worker threads on this 2-core machine: client and servers share
    // them, as they would share the cores with any in-process generator.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate-bench: could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &args.rss_child {
        Some(path) => runtime.block_on(rss_child(
            path.clone(),
            args.accounts_for_rss,
            args.rss_probe_events,
        )),
        None => runtime.block_on(run(args)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tollgate-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let data_dir = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir_in(&data_dir)
        .with_context(|| format!("creating a scratch directory in {}", data_dir.display()))?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let client = load::client(args.concurrency)?;
    let mut rows: Vec<Row> = Vec::new();

    // F: what the disk allows one writer that syncs every commit.
    progress("F: fsync rate");
    let fsync_rate = fsync_rate(
        scratch.path(),
        Duration::from_secs_f64(args.fsync_seconds.max(0.05)),
    )
    .await?;
    let mut f = Row::new("F", "fsyncs/s of the data directory", Some(fsync_rate), "fsync/s");
    f.note = Some(format!(
        "F: write + fdatasync of 512 bytes in a loop, in {}",
        data_dir.display()
    ));
    rows.push(f);

    // H: the ceiling of this HTTP stack and this load generator.
    progress("H: trivial handler");
    let server = naive::Server::start(naive::trivial_router()).await?;
    let spec = args.spec(
        &server.base,
        "x",
        Accounts::Uniform(args.accounts),
        Shape::Single,
        "h",
    );
    let before = cpu::Snapshot::take();
    let h_out = load::closed_loop(&client, &spec).await;
    let h_cpu = before.describe_since(h_out.total_requests, cpu::Focus::Process);
    server.stop().await;
    let h = Some(h_out.events_per_second());
    let mut h_row = Row::new("H", "trivial axum handler (200 ok)", h, "req/s");
    h_row.errors = h_out.measured_errors;
    note_error(&mut h_row, &h_out.first_error);
    append_note(&mut h_row, &format!("H: {h_cpu}"));
    rows.push(h_row);

    // B0: the naive SQLite baseline.
    progress("B0: naive SQLite baseline");
    let b0_path = scratch.path().join("naive.db");
    {
        let path = b0_path.clone();
        let accounts = args.accounts;
        tokio::task::spawn_blocking(move || naive::sqlite_setup(&path, accounts, NAIVE_BALANCE_MICROS))
            .await??;
    }
    let server = naive::Server::start(naive::sqlite_router(&b0_path, tollgate::OPERATOR_KEY)?).await?;
    let spec = args.spec(
        &server.base,
        tollgate::OPERATOR_KEY,
        Accounts::Uniform(args.accounts),
        Shape::Single,
        &format!("{run_id}-b0"),
    );
    let before = cpu::Snapshot::take();
    let b0_out = load::closed_loop(&client, &spec).await;
    let b0_cpu = before.describe_since(b0_out.total_requests, cpu::Focus::Process);
    server.stop().await;
    let b0 = Some(b0_out.events_per_second());
    let mut b0_row = Row::new(
        "B0",
        format!("naive SQLite, 1 txn/event, uniform {}", args.accounts),
        b0,
        "req/s",
    );
    b0_row.vs_h = ratio(b0, h);
    b0_row.errors = b0_out.measured_errors;
    let stored = {
        let path = b0_path.clone();
        tokio::task::spawn_blocking(move || naive::sqlite_usage_count(&path)).await??
    };
    set_count_check(&mut b0_row, stored, b0_out.total_ok_events);
    note_error(&mut b0_row, &b0_out.first_error);
    append_note(&mut b0_row, &format!("B0: {b0_cpu}"));
    rows.push(b0_row);

    // Tollgate on SQLite: one store shared by the four scenarios; each check
    // compares the records with everything acknowledged so far.
    progress("Tollgate on SQLite: creating accounts");
    let t_path = scratch.path().join("tollgate.db");
    let store = tollgate::open_store(&tollgate::sqlite_url(&t_path)).await?;
    let setup = Instant::now();
    tollgate::create_accounts(&store, args.accounts, true).await?;
    progress(&format!(
        "  {} funded accounts in {:.1} s",
        args.accounts,
        setup.elapsed().as_secs_f64()
    ));
    let counter = tollgate::Counter::Sqlite(t_path.clone());
    let server = tollgate::serve(store.clone()).await?;
    let mut acknowledged = 0_u64;

    progress("T1: Tollgate single events, uniform");
    let spec = args.spec(
        &server.base,
        tollgate::OPERATOR_KEY,
        Accounts::Uniform(args.accounts),
        Shape::Single,
        &format!("{run_id}-t1"),
    );
    let before = cpu::Snapshot::take();
    let t1_out = load::closed_loop(&client, &spec).await;
    let t1_cpu = before.describe_since(t1_out.total_requests, cpu::Focus::SqliteWriter);
    acknowledged += t1_out.total_ok_events;
    let t1 = Some(t1_out.events_per_second());
    let mut t1_row = Row::new(
        "T1",
        format!("Tollgate SQLite, single event, uniform {}", args.accounts),
        t1,
        "req/s",
    );
    t1_row.vs_baseline = ratio(t1, b0);
    t1_row.vs_h = ratio(t1, h);
    t1_row.target = Some("≥10× B0 and ≥0.5× H".to_owned());
    t1_row.met = match (t1_row.vs_baseline, t1_row.vs_h) {
        (Some(vs_b0), Some(vs_h)) => Some(vs_b0 >= 10.0 && vs_h >= 0.5),
        _ => None,
    };
    t1_row.errors = t1_out.measured_errors;
    set_check(&mut t1_row, tollgate::check(&store, &counter, acknowledged).await);
    note_error(&mut t1_row, &t1_out.first_error);
    append_note(&mut t1_row, &format!("T1: {t1_cpu}"));
    rows.push(t1_row);

    progress("T2: Tollgate single events, one hot account");
    let spec = args.spec(
        &server.base,
        tollgate::OPERATOR_KEY,
        Accounts::Hot,
        Shape::Single,
        &format!("{run_id}-t2"),
    );
    let before = cpu::Snapshot::take();
    let t2_out = load::closed_loop(&client, &spec).await;
    let t2_cpu = before.describe_since(t2_out.total_requests, cpu::Focus::SqliteWriter);
    acknowledged += t2_out.total_ok_events;
    let t2 = Some(t2_out.events_per_second());
    let mut t2_row = Row::new(
        "T2",
        "Tollgate SQLite, single event, one hot account",
        t2,
        "req/s",
    );
    t2_row.vs_baseline = ratio(t2, b0);
    t2_row.vs_h = ratio(t2, h);
    t2_row.target = Some("≥0.8× T1".to_owned());
    t2_row.met = ratio(t2, t1).map(|r| r >= 0.8);
    t2_row.errors = t2_out.measured_errors;
    set_check(&mut t2_row, tollgate::check(&store, &counter, acknowledged).await);
    note_error(&mut t2_row, &t2_out.first_error);
    append_note(&mut t2_row, &format!("T2: {t2_cpu}"));
    if let Some(r) = ratio(t2, t1) {
        append_note(&mut t2_row, &format!("T2 = {r:.2}× T1"));
    }
    rows.push(t2_row);

    progress("T3: Tollgate batch endpoint");
    let spec = args.spec(
        &server.base,
        tollgate::OPERATOR_KEY,
        Accounts::Uniform(args.accounts),
        Shape::Batch(args.batch_size.clamp(1, tollgate_store::MAX_BATCH_EVENTS)),
        &format!("{run_id}-t3"),
    );
    let before = cpu::Snapshot::take();
    let t3_out = load::closed_loop(&client, &spec).await;
    let t3_cpu = before.describe_since(t3_out.total_requests, cpu::Focus::SqliteWriter);
    acknowledged += t3_out.total_ok_events;
    let t3 = Some(t3_out.events_per_second());
    let mut t3_row = Row::new(
        "T3",
        format!("Tollgate SQLite, batch of {} events", args.batch_size),
        t3,
        "debits/s",
    );
    t3_row.vs_baseline = ratio(t3, b0);
    t3_row.target = Some("≥300,000 durable debits/s".to_owned());
    t3_row.met = t3.map(|value| value >= 300_000.0);
    t3_row.errors = t3_out.measured_errors;
    set_check(&mut t3_row, tollgate::check(&store, &counter, acknowledged).await);
    note_error(&mut t3_row, &t3_out.first_error);
    append_note(&mut t3_row, &format!("T3: {t3_cpu}"));
    append_note(
        &mut t3_row,
        &format!(
            "T3: {:.0} batch requests/s; debits = usage slots in 2xx answers",
            t3_out.measured_ok_requests as f64 / t3_out.window.as_secs_f64().max(1e-9)
        ),
    );
    rows.push(t3_row);

    progress("L: latency at half of T1's rate (open loop)");
    let half = t1_out.events_per_second() / 2.0;
    let spec = args.spec(
        &server.base,
        tollgate::OPERATOR_KEY,
        Accounts::Uniform(args.accounts),
        Shape::Single,
        &format!("{run_id}-lat"),
    );
    let before = cpu::Snapshot::take();
    let latency = load::open_loop(&client, &spec, half).await;
    let latency_cpu = before.describe_since(latency.total_requests, cpu::Focus::SqliteWriter);
    acknowledged += latency.total_ok_events;
    let latency_check = tollgate::check(&store, &counter, acknowledged).await;
    for (key, label, q) in [
        ("L50", "p50", 0.5),
        ("L99", "p99", 0.99),
        ("L999", "p99.9", 0.999),
    ] {
        let mut row = Row::new(
            key,
            format!("latency {label} at {:.0} req/s (½ T1)", latency.offered_rate),
            latency.quantile_ms(q),
            "ms",
        );
        row.errors = latency.errors;
        if key == "L99" {
            row.target = Some("p99 ≤ 5 ms".to_owned());
            row.met = row.value.map(|value| value <= 5.0);
            set_check(&mut row, clone_check(&latency_check));
            note_error(&mut row, &latency.first_error);
            append_note(
                &mut row,
                &format!(
                    "L: open loop, latency from each request's scheduled send time, {} samples",
                    latency.sorted_micros.len()
                ),
            );
            append_note(&mut row, &latency_cpu);
        }
        rows.push(row);
    }
    server.stop().await;
    drop(store);

    // Peak RSS of a store process holding many accounts.
    if args.accounts_for_rss == 0 {
        rows.push(Row::not_measured(
            "RSS",
            "peak RSS with accounts loaded",
            "MiB",
            "--accounts-for-rss 0",
        ));
    } else {
        progress(&format!("RSS: creating {} accounts", args.accounts_for_rss));
        rows.push(rss_row(&args, scratch.path()).await?);
    }

    // PostgreSQL rows.
    if args.no_postgres {
        push_pg_not_measured(&mut rows, "--no-postgres");
    } else {
        match postgres_rows(&args, &client, &run_id, h).await {
            Ok(mut pg) => rows.append(&mut pg),
            Err(error) => {
                progress(&format!("PostgreSQL rows skipped: {error:#}"));
                push_pg_not_measured(&mut rows, &format!("PostgreSQL failed: {error:#}"));
            }
        }
    }

    let wall = started.elapsed().as_secs_f64();
    println!(
        "\ntollgate-bench — {} CPUs, concurrency {}, {:.1} s measured per scenario (+{:.1} s warm-up)\n",
        cpus(),
        args.concurrency,
        args.seconds,
        args.warmup
    );
    print!("{}", report::table(&rows));
    println!("\nwall time: {wall:.1} s");
    let json_path = write_json(
        &args,
        &Results {
            tool: "tollgate-bench",
            started_unix,
            wall_seconds: wall,
            cpus: cpus(),
            args: &args,
            rows: &rows,
        },
    )?;
    println!("JSON: {}", json_path.display());
    let failed = rows.iter().any(|row| row.check_passed == Some(false));
    if failed {
        eprintln!("tollgate-bench: a correctness check failed (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn note_error(row: &mut Row, first_error: &Option<String>) {
    if let Some(error) = first_error {
        let short: String = error.chars().take(160).collect();
        append_note(row, &format!("{}: first error: {short}", row.key));
    }
}

fn append_note(row: &mut Row, text: &str) {
    row.note = Some(match row.note.take() {
        Some(note) => format!("{note}; {text}"),
        None => text.to_owned(),
    });
}

fn set_count_check(row: &mut Row, stored: u64, acknowledged: u64) {
    let passed = stored == acknowledged;
    row.check_passed = Some(passed);
    row.check = Some(if passed {
        format!("{stored} usage rows = {acknowledged} acked")
    } else {
        format!("MISMATCH {stored} usage rows ≠ {acknowledged} acked")
    });
}

fn set_check(row: &mut Row, check: anyhow::Result<tollgate::Check>) {
    match check {
        Ok(check) => {
            row.check_passed = Some(check.passed());
            row.check = Some(check.describe());
        }
        Err(error) => {
            row.check_passed = Some(false);
            row.check = Some(format!("CHECK FAILED TO RUN: {error:#}"));
        }
    }
}

fn clone_check(check: &anyhow::Result<tollgate::Check>) -> anyhow::Result<tollgate::Check> {
    match check {
        Ok(check) => Ok(check.clone()),
        Err(error) => Err(anyhow::anyhow!("{error:#}")),
    }
}

/// F: write + fdatasync of a small file, as a commit's WAL append would.
async fn fsync_rate(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let block = [0x5a_u8; 512];
        // Bounded by count too: a disk that acknowledges instantly (tmpfs) still stops.
        const MAX_SYNCS: u64 = 10_000_000;
        let start = Instant::now();
        let mut syncs = 0_u64;
        while start.elapsed() < duration && syncs < MAX_SYNCS {
            file.write_all_at(&block, (syncs % 8) * 512)?;
            file.sync_data()?;
            syncs += 1;
        }
        let rate = syncs as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let _ = std::fs::remove_file(&path);
        anyhow::Ok(rate)
    })
    .await?
}

/// The RSS figure: accounts are created here, then a separate process opens
/// the store, charges random accounts and reports its own peak, so the
/// figure is the store process's alone, not this process's load generator.
async fn rss_row(args: &Args, dir: &Path) -> anyhow::Result<Row> {
    let path = dir.join("rss.db");
    let store = tollgate::open_store(&tollgate::sqlite_url(&path)).await?;
    let setup = Instant::now();
    tollgate::create_accounts(&store, args.accounts_for_rss, false).await?;
    let created_in = setup.elapsed().as_secs_f64();
    drop(store);
    progress(&format!(
        "  {} accounts in {created_in:.1} s; measuring in a child process",
        args.accounts_for_rss
    ));
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(&path)
        .arg("--accounts-for-rss")
        .arg(args.accounts_for_rss.to_string())
        .arg("--rss-probe-events")
        .arg(args.rss_probe_events.to_string())
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "the RSS process failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let probe: RssProbe =
        serde_json::from_slice(&output.stdout).context("reading the RSS process's report")?;
    let mut row = Row::new(
        "RSS",
        format!("peak RSS, store with {} accounts", args.accounts_for_rss),
        Some(probe.vm_hwm_kib as f64 / 1024.0),
        "MiB",
    );
    row.target = Some("≤200 MiB at 1M accounts".to_owned());
    row.met = (args.accounts_for_rss >= 1_000_000).then(|| probe.vm_hwm_kib as f64 / 1024.0 <= 200.0);
    row.errors = probe.probe_errors;
    row.note = Some(format!(
        "RSS: VmHWM of a child process that opened the SQLite store ({} accounts, created in {created_in:.1} s) \
         and made {} zero-priced charges over random accounts through the store API; no HTTP in that process; \
         VmRSS at the end {:.0} MiB",
        args.accounts_for_rss,
        probe.probe_ok,
        probe.vm_rss_kib as f64 / 1024.0
    ));
    Ok(row)
}

#[derive(Serialize, serde::Deserialize)]
struct RssProbe {
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
    probe_ok: u64,
    probe_errors: u64,
}

fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} not in /proc/self/status"))
}

/// The child side of [`rss_row`]: prints one JSON object on stdout.
async fn rss_child(path: PathBuf, accounts: usize, probe_events: usize) -> anyhow::Result<ExitCode> {
    use futures::StreamExt as _;
    let store = tollgate::open_store(&tollgate::sqlite_url(&path)).await?;
    let action = tollgate_core::ActionId::parse("ui_search")?;
    let mut results = futures::stream::iter(0..probe_events)
        .map(|index| {
            let store = store.clone();
            let action = action.clone();
            async move {
                let mut rng = load::SplitMix::new(index as u64);
                let command = tollgate_core::UsageCommand {
                    account: tollgate_core::AccountId::parse(&load::account_id(rng.below(accounts)))?,
                    action,
                    quantity: tollgate_core::Quantity::new(1)?,
                    idempotency_key: tollgate_core::IdempotencyKey::parse(&format!("rss-{index}"))?,
                };
                store.charge_usage(command).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(256);
    let (mut ok, mut errors) = (0_u64, 0_u64);
    while let Some(result) = results.next().await {
        match result {
            Ok(()) => ok += 1,
            Err(_) => errors += 1,
        }
    }
    let probe = RssProbe {
        vm_hwm_kib: status_kib("VmHWM:")?,
        vm_rss_kib: status_kib("VmRSS:")?,
        probe_ok: ok,
        probe_errors: errors,
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &probe)?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn push_pg_not_measured(rows: &mut Vec<Row>, why: &str) {
    rows.push(Row::not_measured(
        "P0u",
        "naive PostgreSQL, uniform",
        "req/s",
        why,
    ));
    rows.push(Row::not_measured(
        "P0h",
        "naive PostgreSQL, one hot account",
        "req/s",
        why,
    ));
    rows.push(Row::not_measured(
        "PGu",
        "Tollgate PostgreSQL, uniform",
        "req/s",
        why,
    ));
    rows.push(Row::not_measured(
        "PGh",
        "Tollgate PostgreSQL, one hot account",
        "req/s",
        why,
    ));
}

/// Replaces the database name in a `postgres://` URL.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Fresh databases on the server, dropped when the run ends (even on error).
struct PgDatabases {
    admin: tokio_postgres::Client,
    names: Vec<String>,
}

impl PgDatabases {
    async fn create(&mut self, server: &str, name: String) -> anyhow::Result<String> {
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        self.names.push(name.clone());
        Ok(with_database(server, &name))
    }

    async fn drop_all(&mut self) {
        for name in self.names.drain(..) {
            // FORCE: pools of the finished scenarios may still hold connections.
            if let Err(error) = self
                .admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
            {
                progress(&format!("could not drop {name}: {error}"));
            }
        }
    }
}

async fn postgres_rows(
    args: &Args,
    client: &reqwest::Client,
    run_id: &str,
    h: Option<f64>,
) -> anyhow::Result<Vec<Row>> {
    let server_url = &args.postgres_url;
    let (admin, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(server_url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to {server_url}"))?
    .with_context(|| format!("connecting to {server_url}"))?;
    let connection = tokio::spawn(connection);
    let mut databases = PgDatabases {
        admin,
        names: Vec::new(),
    };
    let result = postgres_scenarios(args, client, run_id, h, &mut databases).await;
    databases.drop_all().await;
    drop(databases);
    let _ = connection.await;
    result
}

async fn postgres_scenarios(
    args: &Args,
    client: &reqwest::Client,
    run_id: &str,
    h: Option<f64>,
    databases: &mut PgDatabases,
) -> anyhow::Result<Vec<Row>> {
    let server_url = &args.postgres_url;
    let mut rows = Vec::new();

    progress("P0: naive PostgreSQL baseline");
    let naive_url = databases
        .create(server_url, format!("tollgate_bench_naive_{run_id}"))
        .await?;
    naive::pg_setup(&naive_url, args.accounts, NAIVE_BALANCE_MICROS).await?;
    let server = naive::Server::start(naive::pg_router(&naive_url, tollgate::OPERATOR_KEY)?).await?;
    let mut naive_acked = 0_u64;
    let mut p0 = [None, None];
    for (slot, (key, name, accounts)) in [
        (
            "P0u",
            format!("naive PostgreSQL, uniform {}", args.accounts),
            Accounts::Uniform(args.accounts),
        ),
        (
            "P0h",
            "naive PostgreSQL, one hot account".to_owned(),
            Accounts::Hot,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = args.spec(
            &server.base,
            tollgate::OPERATOR_KEY,
            accounts,
            Shape::Single,
            &format!("{run_id}-{key}"),
        );
        let before = cpu::Snapshot::take();
        let out = load::closed_loop(client, &spec).await;
        let cpu_note = before.describe_since(out.total_requests, cpu::Focus::Postgres);
        naive_acked += out.total_ok_events;
        let value = Some(out.events_per_second());
        p0[slot] = value;
        let mut row = Row::new(key, name, value, "req/s");
        row.vs_h = ratio(value, h);
        row.errors = out.measured_errors;
        set_count_check(&mut row, naive::pg_usage_count(&naive_url).await?, naive_acked);
        note_error(&mut row, &out.first_error);
        append_note(&mut row, &format!("{key}: {cpu_note}"));
        rows.push(row);
    }
    server.stop().await;

    progress("Tollgate on PostgreSQL: creating accounts");
    let url = databases
        .create(server_url, format!("tollgate_bench_{run_id}"))
        .await?;
    let store = tollgate::open_store(&url).await?;
    let setup = Instant::now();
    tollgate::create_accounts(&store, args.accounts, true).await?;
    progress(&format!(
        "  {} funded accounts in {:.1} s",
        args.accounts,
        setup.elapsed().as_secs_f64()
    ));
    let counter = tollgate::Counter::Postgres(url.clone());
    let server = tollgate::serve(store.clone()).await?;
    let mut acknowledged = 0_u64;
    let mut pg_uniform = None;
    for (slot, (key, name, accounts)) in [
        (
            "PGu",
            format!("Tollgate PostgreSQL, uniform {}", args.accounts),
            Accounts::Uniform(args.accounts),
        ),
        (
            "PGh",
            "Tollgate PostgreSQL, one hot account".to_owned(),
            Accounts::Hot,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        progress(&format!("{key}: {name}"));
        let spec = args.spec(
            &server.base,
            tollgate::OPERATOR_KEY,
            accounts,
            Shape::Single,
            &format!("{run_id}-{key}"),
        );
        let before = cpu::Snapshot::take();
        let out = load::closed_loop(client, &spec).await;
        let cpu_note = before.describe_since(out.total_requests, cpu::Focus::Postgres);
        acknowledged += out.total_ok_events;
        let value = Some(out.events_per_second());
        let mut row = Row::new(key, name, value, "req/s");
        row.vs_baseline = ratio(value, p0[slot]);
        row.vs_h = ratio(value, h);
        if slot == 0 {
            pg_uniform = value;
        } else {
            row.target = Some("≥20× P0 (hot)".to_owned());
            row.met = row.vs_baseline.map(|r| r >= 20.0);
            if let Some(r) = ratio(value, pg_uniform) {
                append_note(&mut row, &format!("PGh = {r:.2}× PGu"));
            }
        }
        row.errors = out.measured_errors;
        set_check(&mut row, tollgate::check(&store, &counter, acknowledged).await);
        note_error(&mut row, &out.first_error);
        append_note(&mut row, &format!("{key}: {cpu_note}"));
        rows.push(row);
    }
    server.stop().await;
    drop(store);
    Ok(rows)
}

/// Writes the JSON where asked, else under the workspace's `target/bench/`,
/// else in the temp dir; returns where it went.
fn write_json(args: &Args, results: &Results<'_>) -> anyhow::Result<PathBuf> {
    let text = serde_json::to_string_pretty(results)?;
    let write = |path: &Path| -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &text)
    };
    if let Some(path) = &args.json {
        write(path).with_context(|| format!("writing {}", path.display()))?;
        return Ok(path.clone());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/results.json");
    if write(&workspace).is_ok() {
        // Print `/work/main/target/…`, not `crates/bench/../../target/…`.
        return Ok(std::fs::canonicalize(&workspace).unwrap_or(workspace));
    }
    let fallback = std::env::temp_dir().join("tollgate-bench/results.json");
    write(&fallback).with_context(|| format!("writing {}", fallback.display()))?;
    Ok(fallback)
}
