//! Runs the whole benchmark for a fraction of a second per scenario with
//! tiny sizes and checks that every row was measured and every correctness
//! check passed. Speed is never asserted here: the figures of a debug build
//! on a shared machine mean nothing; only their presence does.
//!
//! PostgreSQL rows need a server, as the store's PostgreSQL tests do:
//! `TOLLGATE_TEST_POSTGRES_URL` or the default `postgres://postgres@127.0.0.1:5432/postgres`
//! (`scripts/test` starts it). An unreachable server fails the test.

use std::process::Command;

use serde_json::Value;

const ROWS: [&str; 14] = [
    "F", "H", "B0", "T1", "T2", "T3", "L50", "L99", "L999", "RSS", "P0u", "P0h", "PGu", "PGh",
];

#[test]
fn every_scenario_runs_and_reports_a_positive_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let postgres_url = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate-bench"))
        .args([
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--fsync-seconds",
            "0.1",
            "--concurrency",
            "4",
            "--accounts",
            "50",
            "--batch-size",
            "5",
            "--accounts-for-rss",
            "300",
            "--rss-probe-events",
            "50",
            "--postgres-url",
            &postgres_url,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("wall time"), "no table printed:\n{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().expect("rows");
    for key in ROWS {
        let row = rows
            .iter()
            .find(|row| row["key"] == key)
            .unwrap_or_else(|| panic!("no row {key} in {report:#}"));
        let value = row["value"].as_f64();
        assert!(
            value.is_some_and(|value| value > 0.0),
            "row {key} has no positive figure: {row:#}\nstdout:\n{stdout}"
        );
        assert_ne!(
            row["check_passed"],
            Value::Bool(false),
            "row {key} failed its check: {row:#}"
        );
    }
    // Every Tollgate scenario was verified against the ledger.
    for key in ["T1", "T2", "T3", "L99", "PGu", "PGh"] {
        let row = rows.iter().find(|row| row["key"] == key).unwrap();
        assert_eq!(row["check_passed"], Value::Bool(true), "row {key}: {row:#}");
        assert!(
            row["check"].as_str().unwrap().starts_with("ledger clean"),
            "row {key}: {row:#}"
        );
    }
}
