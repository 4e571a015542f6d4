//! What every benchmark binary shares: choosing benchmarks (`--only a,b`), running each in a
//! child process of its own (so memory figures are not polluted by the ones before it), and
//! printing one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.

#![allow(dead_code, clippy::expect_used)] // not every binary uses every helper

/// The benchmarks `--only` selects (all of `names` without it).
pub fn selected<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let args: Vec<String> = std::env::args().collect();
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|p| args.get(p + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    names.iter().copied().filter(|name| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name))).collect()
}

/// The benchmark to run when this process is a child (`--child NAME`).
pub fn child_name() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--child").map(|pos| args.get(pos + 1).cloned().unwrap_or_default())
}

/// Runs each selected benchmark in a child process of this binary; exits non-zero if one fails.
pub fn run_children(names: &[&str]) {
    let exe = std::env::current_exe().expect("the benchmark binary knows its path");
    for name in selected(names) {
        let status = std::process::Command::new(&exe).args(["--child", name]).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("benchmark {name} failed: {status:?}");
            std::process::exit(1);
        }
    }
}

/// Prints one figure: median, min and max of `samples`.
pub fn report(bench: &str, metric: &str, unit: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "bench": bench, "metric": metric,
        "median": round(median), "min": round(samples[0]), "max": round(samples[n - 1]),
        "unit": unit, "n": n,
    });
    println!("{line}");
}

/// This process's resident memory now, in bytes.
pub fn rss_bytes() -> i64 {
    status_kb("VmRSS:") * 1024
}

/// This process's peak resident memory, in bytes.
pub fn peak_rss_bytes() -> i64 {
    status_kb("VmHWM:") * 1024
}

fn status_kb(field: &str) -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
