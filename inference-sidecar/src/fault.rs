//! Fault injection for the tests that prove the server survives (or reports) a crash of one of
//! its threads, as a real process. Only in debug builds: a release binary never reads the variable.
//!
//! `LEXSERVE_FAULT=<point>[,<point>...]` makes the named points panic: `engine-step` (the
//! generation engine, at its next step) and `batch-worker` (the encoder's batch worker, outside
//! the per-batch panic guard, at its next batch).

/// The variable that names the faults to inject.
pub const FAULT_ENV: &str = "LEXSERVE_FAULT";

/// Panics when `point` is named in [`FAULT_ENV`] (debug builds only). The variable is read once:
/// this runs on every engine step and every batch.
pub fn inject(point: &str) {
    #[cfg(debug_assertions)]
    {
        static NAMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let named = NAMED.get_or_init(|| {
            std::env::var(FAULT_ENV)
                .unwrap_or_default()
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        });
        if named.iter().any(|p| p == point) {
            panic!("fault injected at {point} ({FAULT_ENV})");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
