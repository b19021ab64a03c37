//! Latency percentiles and plain-text tables.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// Latencies in microseconds, summarised by sorting (a run records at most a
/// few million, so an exact sort beats a histogram's rounding).
#[derive(Debug, Default)]
pub struct Latencies(Vec<u32>);

/// What a table row and the JSON summary show of a set of latencies, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latencies {
    pub fn record(&mut self, micros: u128) {
        self.0.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn summary(&mut self) -> Summary {
        let values = &mut self.0;
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_unstable();
        let n = values.len();
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(values[rank - 1]) / 1000.0
        };
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        Summary {
            count: n,
            mean: sum / n as f64 / 1000.0,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: f64::from(values[n - 1]) / 1000.0,
        }
    }
}

impl Summary {
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "mean_ms": round3(self.mean),
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "p999_ms": round3(self.p999),
            "max_ms": round3(self.max),
        })
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A plain-text table: a header row, right-aligned columns after the first.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.len());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                if i == 0 {
                    let _ = write!(text, "{cell:<width$}", width = widths[i]);
                } else {
                    let _ = write!(text, "  {cell:>width$}", width = widths[i]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule);
        for row in &self.rows {
            line(row);
        }
        out
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles of 1..=100 ms are the obvious values.
    #[test]
    fn percentiles_by_nearest_rank() {
        let mut latencies = Latencies::default();
        for ms in (1..=100).rev() {
            latencies.record(ms * 1000);
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50 - 50.0).abs() < 1e-9);
        assert!((summary.p90 - 90.0).abs() < 1e-9);
        assert!((summary.p99 - 99.0).abs() < 1e-9);
        assert!((summary.max - 100.0).abs() < 1e-9);
        assert!((summary.mean - 50.5).abs() < 1e-9);
    }

    /// Columns line up whatever the cell widths.
    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["a", "bb"]);
        table.row(vec!["long name".into(), "1".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a          bb");
        assert_eq!(lines[2], "long name   1");
    }
}
