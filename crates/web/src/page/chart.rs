//! This cycle's daily spend by action, as the geometry of an inline SVG that the
//! server renders: stacked bars, one per day of the cycle. All arithmetic is on
//! integer micro-dollars and integer SVG units, so what is drawn is exact.

use std::collections::BTreeMap;

use tollgate_core::money::format_usd;
use tollgate_core::{BillingCycle, Micros, PriceBook, Timestamp};

use crate::page::view::day_month;

/// Width of the drawing, in SVG units (it scales to the container).
pub(crate) const WIDTH: i64 = 720;
/// Height of the drawing.
pub(crate) const HEIGHT: i64 = 220;
const LEFT: i64 = 64;
const RIGHT: i64 = 8;
const TOP: i64 = 12;
const BOTTOM: i64 = 28;
/// Horizontal grid lines (and labels) above zero.
const TICKS: i64 = 4;
/// Colour classes; actions beyond these reuse them in turn.
const SERIES: usize = 6;

/// One coloured piece of a day's bar.
#[derive(Clone, Debug)]
pub(crate) struct Bar {
    /// Left edge.
    pub x: i64,
    /// Top edge.
    pub y: i64,
    /// Width.
    pub width: i64,
    /// Height.
    pub height: i64,
    /// `s0` … `s5`: the action's colour.
    pub series: String,
    /// `12 Nov · Email Finder: $0.30`, shown on hover and read by screen readers.
    pub title: String,
}

/// A label on an axis.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    /// Position along the axis.
    pub at: i64,
    /// Text.
    pub text: String,
}

/// An action in the legend and the table.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    /// Colour class.
    pub class: String,
    /// Action name.
    pub name: String,
    /// Total this cycle.
    pub total: String,
}

/// One row of the table that accompanies the chart.
#[derive(Clone, Debug)]
pub(crate) struct DayRow {
    /// `12 Nov`.
    pub day: String,
    /// Amount per series, in legend order.
    pub amounts: Vec<String>,
    /// The day's total.
    pub total: String,
}

/// The chart, ready to place.
#[derive(Clone, Debug)]
pub(crate) struct ChartView {
    /// Drawing width.
    pub width: i64,
    /// Drawing height.
    pub height: i64,
    /// Left edge of the plot.
    pub left: i64,
    /// Right edge of the plot.
    pub right: i64,
    /// The zero line.
    pub baseline: i64,
    /// The bars.
    pub bars: Vec<Bar>,
    /// Y positions and money labels of the grid lines.
    pub y_labels: Vec<Label>,
    /// X positions (centres) and day labels.
    pub x_labels: Vec<Label>,
    /// Actions spent on this cycle.
    pub series: Vec<Series>,
    /// Days with spend, for the table.
    pub days: Vec<DayRow>,
    /// Nothing spent this cycle yet.
    pub empty: bool,
    /// One sentence for screen readers.
    pub summary: String,
}

/// The smallest "nice" axis maximum (1, 2 or 5 × 10ⁿ per tick, in micro-dollars) at
/// or above `max`.
fn nice_axis_max(max: i64) -> i64 {
    let per_tick = (max + TICKS - 1) / TICKS;
    let mut magnitude: i64 = 1;
    loop {
        for step in [1, 2, 5] {
            let candidate = step * magnitude;
            if candidate >= per_tick {
                return candidate * TICKS;
            }
        }
        match magnitude.checked_mul(10) {
            Some(next) => magnitude = next,
            None => return max.max(1),
        }
    }
}

/// Lays out `daily` (UTC day, action id, amount) over the days of `cycle` up to `now`.
pub(crate) fn spend_chart(
    cycle: BillingCycle,
    daily: &[(time::Date, String, Micros)],
    book: &PriceBook,
    now: Timestamp,
) -> ChartView {
    let first_day = cycle.start.date();
    let days = usize::try_from((cycle.end - cycle.start).whole_days().max(1)).unwrap_or(31);
    // Book order, then any action the book no longer has (its charges stay real).
    let mut order: Vec<(String, String)> = book
        .actions()
        .iter()
        .map(|action| (action.id.to_string(), action.name.clone()))
        .collect();
    for (_, action, _) in daily {
        if !order.iter().any(|(id, _)| id == action) {
            order.push((action.clone(), action.clone()));
        }
    }
    let mut per_day: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    let mut totals = vec![0_i64; order.len()];
    for (date, action, amount) in daily {
        let Some(series) = order.iter().position(|(id, _)| id == action) else {
            continue;
        };
        let offset = (*date - first_day).whole_days();
        let Ok(day) = usize::try_from(offset) else {
            continue;
        };
        if day >= days || !amount.is_positive() {
            continue;
        }
        let slot = per_day.entry(day).or_insert_with(|| vec![0; order.len()]);
        slot[series] = slot[series].saturating_add(amount.get());
        totals[series] = totals[series].saturating_add(amount.get());
    }
    let used: Vec<usize> = (0..order.len()).filter(|&series| totals[series] > 0).collect();
    let max_day = per_day
        .values()
        .map(|amounts| {
            amounts
                .iter()
                .fold(0_i64, |sum, amount| sum.saturating_add(*amount))
        })
        .max()
        .unwrap_or(0);
    let axis_max = nice_axis_max(max_day.max(1));
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let baseline = TOP + plot_height;
    let slot = plot_width / i64::try_from(days).unwrap_or(31).max(1);
    let bar_width = (slot * 7 / 10).max(1);
    let height_of = |amount: i64| -> i64 {
        let scaled = i128::from(amount) * i128::from(plot_height) / i128::from(axis_max);
        i64::try_from(scaled).unwrap_or(plot_height)
    };
    let day_label = |day: usize| {
        let date = first_day + time::Duration::days(i64::try_from(day).unwrap_or(0));
        day_month(date.midnight().assume_utc())
    };
    let mut bars = Vec::new();
    let mut rows = Vec::new();
    for (&day, amounts) in &per_day {
        let x = LEFT + slot * i64::try_from(day).unwrap_or(0) + (slot - bar_width) / 2;
        let mut stacked = 0_i64;
        let label = day_label(day);
        for &series in &used {
            let amount = amounts[series];
            if amount <= 0 {
                continue;
            }
            // Heights from cumulative sums, so rounding never makes a stack taller than its total.
            let bottom = height_of(stacked);
            stacked = stacked.saturating_add(amount);
            let top = height_of(stacked);
            bars.push(Bar {
                x,
                y: baseline - top,
                width: bar_width,
                height: (top - bottom).max(1),
                series: format!("s{}", series % SERIES),
                title: format!(
                    "{label} · {}: {}",
                    order[series].1,
                    format_usd(Micros::new(amount))
                ),
            });
        }
        rows.push(DayRow {
            day: label,
            amounts: used
                .iter()
                .map(|&series| format_usd(Micros::new(amounts[series])))
                .collect(),
            total: format_usd(Micros::new(stacked)),
        });
    }
    let y_labels = (0..=TICKS)
        .map(|tick| Label {
            at: baseline - plot_height * tick / TICKS,
            text: format_usd(Micros::new(axis_max / TICKS * tick)),
        })
        .collect();
    // About six day labels, whatever the cycle's length.
    let every = days.div_ceil(6).max(1);
    let x_labels = (0..days)
        .step_by(every)
        .map(|day| Label {
            at: LEFT + slot * i64::try_from(day).unwrap_or(0) + slot / 2,
            text: day_label(day),
        })
        .collect();
    let total: i64 = totals.iter().fold(0, |sum, amount| sum.saturating_add(*amount));
    let summary = if per_day.is_empty() {
        format!("No spend yet this cycle (since {}).", day_month(cycle.start))
    } else {
        format!(
            "{} spent over {} day(s) this cycle, up to {}; the busiest day was {}.",
            format_usd(Micros::new(total)),
            per_day.len(),
            day_month(now),
            format_usd(Micros::new(max_day)),
        )
    };
    ChartView {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right: WIDTH - RIGHT,
        baseline,
        bars,
        y_labels,
        x_labels,
        series: used
            .iter()
            .map(|&series| Series {
                class: format!("s{}", series % SERIES),
                name: order[series].1.clone(),
                total: format_usd(Micros::new(totals[series])),
            })
            .collect(),
        days: rows,
        empty: per_day.is_empty(),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use tollgate_core::CycleAnchor;
    use tollgate_core::pricing::default_price_book;

    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_axis_max(1), 4);
        assert_eq!(nice_axis_max(3_450_000), 4_000_000);
        assert_eq!(nice_axis_max(4_100_000), 8_000_000);
        assert_eq!(nice_axis_max(30_000), 40_000);
    }

    #[test]
    fn bars_stack_per_day_within_the_plot() {
        let created = datetime!(2026-11-10 10:00 UTC);
        let cycle = BillingCycle::containing(CycleAnchor::from_created_at(created), created);
        let book = default_price_book();
        let day = |d: u8| time::Date::from_calendar_date(2026, time::Month::November, d).unwrap();
        let daily = vec![
            (day(10), "email_finder".to_owned(), Micros::new(300_000)),
            (day(10), "api".to_owned(), Micros::new(100_000)),
            (day(12), "api".to_owned(), Micros::new(2_000_000)),
        ];
        let chart = spend_chart(cycle, &daily, &book, datetime!(2026-11-12 12:00 UTC));
        assert!(!chart.empty);
        assert_eq!(chart.bars.len(), 3);
        assert_eq!(chart.series.len(), 2);
        assert_eq!(chart.days.len(), 2);
        assert_eq!(chart.days[0].total, "$0.40");
        for bar in &chart.bars {
            assert!(bar.y >= TOP && bar.y + bar.height <= chart.baseline, "{bar:?}");
        }
        // The busiest day reaches at least three quarters of the axis.
        let tallest = chart.bars.iter().map(|bar| bar.height).max().unwrap();
        assert!(tallest * 4 >= (HEIGHT - TOP - BOTTOM) * 3 / 2, "{tallest}");
        let empty = spend_chart(cycle, &[], &book, created);
        assert!(empty.empty && empty.bars.is_empty());
    }
}
