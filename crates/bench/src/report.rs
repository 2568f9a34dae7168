//! The table and the JSON: one row per figure, with its ratios, its target
//! from issue 7, and whether it was met. A figure that was not measured is
//! `None` and says why; nothing is ever filled in.

use serde::Serialize;

/// One figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Short stable key (`F`, `H`, `B0`, `T1`, …); the smoke test looks rows up by it.
    pub key: &'static str,
    pub name: String,
    /// The figure, or `None` when it was not measured (`note` says why).
    pub value: Option<f64>,
    pub unit: &'static str,
    /// Ratio to B0 (SQLite rows) or P0 (PostgreSQL rows), when meaningful.
    pub vs_baseline: Option<f64>,
    /// Ratio to H, for single-event HTTP rows.
    pub vs_h: Option<f64>,
    /// The target, in words.
    pub target: Option<String>,
    pub met: Option<bool>,
    /// Failed requests (non-2xx or transport) inside the measured window.
    pub errors: u64,
    /// The correctness check after the scenario, in words.
    pub check: Option<String>,
    /// False when the correctness check failed.
    pub check_passed: Option<bool>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(key: &'static str, name: impl Into<String>, value: Option<f64>, unit: &'static str) -> Row {
        Row {
            key,
            name: name.into(),
            value,
            unit,
            vs_baseline: None,
            vs_h: None,
            target: None,
            met: None,
            errors: 0,
            check: None,
            check_passed: None,
            note: None,
        }
    }

    pub fn not_measured(key: &'static str, name: impl Into<String>, unit: &'static str, why: &str) -> Row {
        let mut row = Row::new(key, name, None, unit);
        row.note = Some(format!("not measured ({why})"));
        row
    }
}

/// Ratio of two figures when both exist.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => Some(value / base),
        _ => None,
    }
}

fn figure(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "—".to_owned(),
        Some(value) if unit == "ms" => format!("{value:.2}"),
        Some(value) if value >= 100.0 => group_thousands(value.round() as u64),
        Some(value) => format!("{value:.1}"),
    }
}

fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(String::new, |value| format!("{value:.2}×"))
}

/// The table, for people.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<4} {:<44} {:>12} {:<10} {:>8} {:>7}  {:<28} {:<7} {:>6}\n",
        "key", "scenario", "figure", "unit", "×B0/P0", "×H", "target", "met", "errors"
    ));
    out.push_str(&format!("{}\n", "-".repeat(135)));
    for row in rows {
        let met = match row.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        };
        out.push_str(&format!(
            "{:<4} {:<44} {:>12} {:<10} {:>8} {:>7}  {:<28} {:<7} {:>6}\n",
            row.key,
            row.name,
            figure(row.value, row.unit),
            row.unit,
            times(row.vs_baseline),
            times(row.vs_h),
            row.target.as_deref().unwrap_or(""),
            met,
            row.errors,
        ));
    }
    let checks: Vec<&Row> = rows.iter().filter(|row| row.check.is_some()).collect();
    if !checks.is_empty() {
        out.push_str("\ncorrectness after each scenario:\n");
        for row in checks {
            let verdict = if row.check_passed == Some(false) {
                "FAIL"
            } else {
                "ok"
            };
            out.push_str(&format!(
                "  {:<4} {:<4} {}\n",
                row.key,
                verdict,
                row.check.as_deref().unwrap_or("")
            ));
        }
    }
    let notes: Vec<&Row> = rows.iter().filter(|row| row.note.is_some()).collect();
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        for row in notes {
            out.push_str(&format!(
                "  {:<4} {}\n",
                row.key,
                row.note.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped_and_absent_ones_shown_as_a_dash() {
        assert_eq!(figure(Some(1_234_567.4), "req/s"), "1,234,567");
        assert_eq!(figure(Some(512.0), "req/s"), "512");
        assert_eq!(figure(Some(1.234), "ms"), "1.23");
        assert_eq!(figure(None, "req/s"), "—");
        assert_eq!(ratio(Some(10.0), Some(4.0)), Some(2.5));
        assert_eq!(ratio(Some(10.0), None), None);
    }
}
