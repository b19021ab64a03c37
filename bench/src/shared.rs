//! What the `chat` and `pairs` scenarios share: the CPU readings of the
//! processes under load, the latency table's rows, the error list, the
//! per-connection rate-limit warning, and the saturation search
//! (`--search`).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use crate::procstat::{Proc, Sample, cores_used};
use crate::stats::{Summary, round3};

/// The processes whose CPU a run reports.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct PidArgs {
    /// The gateway's pid, to report its CPU use during the run.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// The chat service's pid, to report its CPU use during the run.
    #[arg(long)]
    pub chat_pid: Option<u32>,
}

/// CPU time of the gateway, the chat service and this tool at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    gateway: Option<Sample>,
    chat: Option<Sample>,
    tool: Option<Sample>,
}

/// CPU used between two marks, in % of one core (2 cores = 200 %).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub gateway: Option<f64>,
    pub chat: Option<f64>,
    pub tool: Option<f64>,
}

impl PidArgs {
    pub fn mark(&self) -> CpuMark {
        let sample = |p: Option<Proc>| p.and_then(|p| p.sample().ok());
        CpuMark {
            gateway: sample(self.gateway_pid.map(Proc::Pid)),
            chat: sample(self.chat_pid.map(Proc::Pid)),
            tool: sample(Some(Proc::Myself)),
        }
    }
}

impl CpuMark {
    pub fn until(&self, later: &CpuMark) -> CpuUse {
        let used = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
            (Some(a), Some(b)) => Some(round3(cores_used(&a, &b) * 100.0)),
            _ => None,
        };
        CpuUse {
            gateway: used(self.gateway, later.gateway),
            chat: used(self.chat, later.chat),
            tool: used(self.tool, later.tool),
        }
    }
}

impl CpuUse {
    pub fn to_json(self) -> Value {
        json!({ "gateway": self.gateway, "chat": self.chat, "load_tool": self.tool })
    }
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0} %"));
        write!(
            f,
            "CPU while sending (% of one core; 2 cores = 200 %): gateway {}, chat service {}, load tool {}",
            show(self.gateway),
            show(self.chat),
            show(self.tool)
        )
    }
}

/// A latency table row: name, count, mean, p50, p90, p99, p99.9, max (ms).
pub fn latency_row(name: &str, s: Summary) -> Vec<String> {
    let ms = |v: f64| format!("{v:.2}");
    vec![
        name.into(),
        s.count.to_string(),
        ms(s.mean),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
    ]
}

/// The header of a table of [`latency_row`]s.
pub const LATENCY_HEADER: &[&str] = &[
    "latency ms",
    "count",
    "mean",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
];

/// Adds `from`'s counts to `into`.
pub fn add_errors(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (code, count) in from {
        *into.entry(code).or_default() += count;
    }
}

/// `errors: none` or `errors by code: a: 1, b: 2`.
pub fn errors_line(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "errors: none".to_owned();
    }
    let list: Vec<String> = errors
        .iter()
        .map(|(code, count)| format!("{code}: {count}"))
        .collect();
    format!("errors by code: {}", list.join(", "))
}

/// Warns when a connection is planned to send faster than the gateway allows.
pub fn warn_rate_limit(who: &str, per_connection: f64, limit: u32, fix: &str) {
    if per_connection > f64::from(limit) {
        eprintln!(
            "warning: {per_connection:.1} messages/s per {who} connection is above the gateway's limit of {limit} /s; expect rate_limited errors ({fix}, or start the gateway with a higher CHATAI_RATE_LIMIT_PER_SEC and pass it here)"
        );
    }
}

/// The saturation search (`--search`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SearchArgs {
    /// Find the highest rate with every p99 < --search-p99-ms and nothing
    /// lost or refused: try --search-min, then --search-max, then bisect
    /// (geometrically) between the best passing and the lowest failing rate,
    /// one run of --duration seconds per step on fresh user and operator ids.
    #[arg(long)]
    pub search: bool,
    /// Lowest rate tried (msg/s).
    #[arg(long, default_value_t = 100.0)]
    pub search_min: f64,
    /// Highest rate tried (msg/s).
    #[arg(long, default_value_t = 5000.0)]
    pub search_max: f64,
    /// At most this many runs.
    #[arg(long, default_value_t = 8)]
    pub search_steps: u32,
    /// Stop bisecting when the failing rate is within this fraction above the passing one.
    #[arg(long, default_value_t = 0.05)]
    pub search_tolerance: f64,
    /// The latency bound every measured p99 must stay under (ms).
    #[arg(long, default_value_t = 10.0)]
    pub search_p99_ms: f64,
    /// Seconds of rest between steps, for the system to settle.
    #[arg(long, default_value_t = 2)]
    pub search_pause: u64,
}

impl SearchArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.search_min > 0.0 && self.search_min < self.search_max,
            "--search-min must be > 0 and below --search-max"
        );
        anyhow::ensure!(
            self.search_max <= 100_000.0,
            "--search-max must be at most 100000"
        );
        anyhow::ensure!(
            (2..=20).contains(&self.search_steps),
            "--search-steps must be 2..=20"
        );
        anyhow::ensure!(
            self.search_tolerance > 0.0 && self.search_tolerance < 1.0,
            "--search-tolerance must be in (0, 1)"
        );
        Ok(())
    }

    pub fn bisection(&self) -> Bisection {
        Bisection::new(
            self.search_min,
            self.search_max,
            self.search_steps,
            self.search_tolerance,
        )
    }
}

/// What one step of a search measured, judged against the bound.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The highest p99 of every latency the run measured (ms).
    pub worst_p99_ms: f64,
    /// Messages lost (never delivered or never answered).
    pub lost: u64,
    /// Duplicates, refusals and other errors.
    pub errors: u64,
    /// The run's one-line summary.
    pub line: String,
    /// The run's JSON summary.
    pub json: Value,
}

impl StepOutcome {
    pub fn passes(&self, p99_bound_ms: f64) -> bool {
        self.worst_p99_ms < p99_bound_ms && self.lost == 0 && self.errors == 0
    }
}

/// The rates a search tries: `min`, then `max`, then the geometric middle of
/// the best passing and the lowest failing rate, until they are within
/// `tolerance` of each other or `steps` runs were made. Pure: the caller runs
/// each rate and reports whether it passed.
#[derive(Debug, Clone)]
pub struct Bisection {
    min: f64,
    max: f64,
    steps: u32,
    tolerance: f64,
    tried: u32,
    /// The highest rate that passed.
    passed: Option<f64>,
    /// The lowest rate that failed.
    failed: Option<f64>,
}

impl Bisection {
    pub fn new(min: f64, max: f64, steps: u32, tolerance: f64) -> Self {
        Bisection {
            min,
            max,
            steps,
            tolerance,
            tried: 0,
            passed: None,
            failed: None,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        if self.tried >= self.steps {
            return None;
        }
        match (self.passed, self.failed) {
            (None, None) => Some(self.min),
            // The lowest rate failed: nothing below it is tried.
            (None, Some(_)) => None,
            (Some(passed), None) if passed >= self.max => None,
            (Some(_), None) => Some(self.max),
            (Some(passed), Some(failed)) => {
                if failed <= passed * (1.0 + self.tolerance) {
                    None
                } else {
                    // Rounded to whole messages per second.
                    let middle = (passed * failed).sqrt().round();
                    (middle > passed && middle < failed).then_some(middle)
                }
            }
        }
    }

    /// Records the outcome of a run at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.tried += 1;
        if passed {
            self.passed = Some(self.passed.map_or(rate, |p| p.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that passed so far.
    pub fn best(&self) -> Option<f64> {
        self.passed
    }

    /// The lowest rate that failed so far.
    pub fn lowest_failing(&self) -> Option<f64> {
        self.failed
    }
}

/// Runs a search: `step(index, rate)` makes one run; prints one line per
/// step and the final rate, then the JSON summary as the last line.
pub async fn search<F, Fut>(mode: &str, args: &SearchArgs, mut step: F) -> anyhow::Result<()>
where
    F: FnMut(u32, f64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<StepOutcome>>,
{
    args.check()?;
    let mut bisection = args.bisection();
    let mut steps = Vec::new();
    println!(
        "{mode} search: highest rate in [{}, {}] msg/s with every p99 < {} ms and nothing lost, at most {} runs",
        args.search_min, args.search_max, args.search_p99_ms, args.search_steps
    );
    let mut index = 0;
    while let Some(rate) = bisection.next_rate() {
        if index > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(args.search_pause)).await;
        }
        let outcome = step(index, rate).await?;
        let passed = outcome.passes(args.search_p99_ms);
        println!(
            "step {}: {rate:.0} msg/s {} — {}",
            index + 1,
            if passed { "PASS" } else { "FAIL" },
            outcome.line
        );
        bisection.record(rate, passed);
        steps.push(json!({ "rate": rate, "passed": passed, "run": outcome.json }));
        index += 1;
    }
    match bisection.best() {
        Some(best) => println!(
            "saturation point: {best:.0} msg/s (lowest failing: {})",
            bisection
                .lowest_failing()
                .map_or("none tried".to_owned(), |f| format!("{f:.0} msg/s"))
        ),
        None => println!(
            "saturation point: below --search-min ({} msg/s failed)",
            args.search_min
        ),
    }
    println!(
        "{}",
        json!({
            "mode": format!("{mode}_search"),
            "saturation_rate": bisection.best(),
            "lowest_failing_rate": bisection.lowest_failing(),
            "p99_bound_ms": args.search_p99_ms,
            "steps": steps,
        })
    );
    Ok(())
}

/// Refuses a run whose rate or duration is out of the tool's bounds (every
/// run is bounded in count and time).
pub fn check_run(rate: f64, duration_secs: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate > 0.0 && rate <= 100_000.0,
        "--rate must be in (0, 100000]"
    );
    anyhow::ensure!(
        (1..=600).contains(&duration_secs),
        "--duration must be 1..=600 s"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a bisection against a system that passes up to `capacity`.
    fn simulate(mut bisection: Bisection, capacity: f64) -> (Option<f64>, Vec<f64>) {
        let mut tried = Vec::new();
        while let Some(rate) = bisection.next_rate() {
            tried.push(rate);
            bisection.record(rate, rate <= capacity);
        }
        (bisection.best(), tried)
    }

    /// The search closes in on the capacity within the tolerance, in few runs.
    #[test]
    fn bisection_finds_the_capacity() {
        let (best, tried) = simulate(Bisection::new(100.0, 5000.0, 12, 0.05), 1234.0);
        let best = best.expect("a passing rate");
        assert!(best <= 1234.0, "{best}");
        assert!(best >= 1234.0 / 1.05, "{best}, tried {tried:?}");
        assert_eq!(&tried[..2], &[100.0, 5000.0]);
        assert!(tried.len() <= 12);
    }

    /// Everything passes: two runs (min and max) and the result is max.
    #[test]
    fn bisection_stops_at_max_when_everything_passes() {
        let (best, tried) = simulate(Bisection::new(100.0, 5000.0, 8, 0.05), 1e9);
        assert_eq!(best, Some(5000.0));
        assert_eq!(tried, vec![100.0, 5000.0]);
    }

    /// The lowest rate fails: one run and no result.
    #[test]
    fn bisection_stops_when_min_fails() {
        let (best, tried) = simulate(Bisection::new(100.0, 5000.0, 8, 0.05), 50.0);
        assert_eq!(best, None);
        assert_eq!(tried, vec![100.0]);
    }

    /// The step budget bounds the runs whatever the tolerance.
    #[test]
    fn bisection_respects_the_step_budget() {
        let (_, tried) = simulate(Bisection::new(1.0, 100_000.0, 4, 1e-6), 777.0);
        assert_eq!(tried.len(), 4);
    }

    /// A run passes only with every p99 under the bound and nothing lost.
    #[test]
    fn outcome_passes_only_clean_and_fast() {
        let outcome = |p99: f64, lost: u64, errors: u64| StepOutcome {
            worst_p99_ms: p99,
            lost,
            errors,
            line: String::new(),
            json: Value::Null,
        };
        assert!(outcome(9.9, 0, 0).passes(10.0));
        assert!(!outcome(10.0, 0, 0).passes(10.0));
        assert!(!outcome(1.0, 1, 0).passes(10.0));
        assert!(!outcome(1.0, 0, 1).passes(10.0));
    }
}
