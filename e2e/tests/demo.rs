//! The README's demo command, run end to end as a newcomer runs it (`scripts/demo.sh --once`), and
//! the answers it printed checked: the chart installed, real models answering through their
//! InferenceServices' addresses (an embedding, a sentiment classification, a streamed chat), a
//! bad request refused with a JSON body, the HPA adding replicas under a burst, every panel of
//! the dashboard returning series from the demo's Prometheus, a shadow's verdict on the demo's
//! own traffic, and an experiment's verdict on simulated users that agrees with what the users
//! saw.
//!
//! The demo starts its own local cluster (under the cache's `cluster/`), so it runs alone: the
//! test binaries run one after another in `scripts/test.sh`.

use std::process::Command;

use lexserve_e2e::repo_root;

/// The demo's output, with the terminal's bold escapes taken out.
fn run_demo() -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .arg("--once")
        .current_dir(repo_root())
        .output()
        .expect("scripts/demo.sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace("\u{1b}[1m", "")
    .replace("\u{1b}[0m", "");
    (out.status.success(), text)
}

/// The line after the one containing `marker`.
fn line_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in the demo's output:\n{text}"));
    lines.next().unwrap_or_default()
}

#[test]
fn the_demo_serves_real_answers_scales_fills_the_dashboard_and_judges_a_shadow_and_an_experiment() {
    let (success, text) = run_demo();
    assert!(success, "scripts/demo.sh --once failed:\n{text}");

    // The chart installed it, and the operator runs with the chart's identity.
    assert!(text.contains("STATUS: deployed"), "{text}");
    assert!(
        text.contains("starting lexserve-operator with the chart's identity"),
        "{text}"
    );
    assert!(
        text.contains(
            "apiservice.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io condition met"
        ),
        "{text}"
    );

    // An embedding, as OpenAI's API answers it.
    let embedding = line_after(&text, "/v1/embeddings");
    assert!(
        embedding.starts_with("embedding: 384 dimensions"),
        "{embedding}"
    );
    // The sentiment classifier gets both sentences right.
    let answer: serde_json::Value =
        serde_json::from_str(line_after(&text, "/predict")).expect("the /predict answer is JSON");
    assert_eq!(
        answer["predictions"],
        serde_json::json!(["neg", "pos"]),
        "{answer}"
    );
    // A streamed chat: several chunks, and a reply.
    let streamed = text
        .lines()
        .find(|l| l.starts_with("streamed "))
        .expect("the streamed chat's summary");
    let chunks: usize = streamed
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a chunk count");
    assert!(chunks >= 3, "{streamed}");
    assert!(!streamed.ends_with("the reply: ''"), "{streamed}");
    // Bad input: a 4xx with a JSON body naming the field.
    let refused = line_after(&text, "not a list");
    assert!(
        refused.contains("texts") && refused.contains("(HTTP 4"),
        "{refused}"
    );

    // The burst scaled embed out (the script fails otherwise), through the HPA.
    assert!(
        text.lines().any(|l| l.contains("desired replicas")),
        "{text}"
    );

    // Every dashboard panel returned series.
    let section = text
        .split("the dashboard's queries")
        .nth(1)
        .expect("the dashboard section");
    let panels: Vec<&str> = section
        .lines()
        .take_while(|l| !l.starts_with("==>"))
        .filter(|l| l.trim_end().ends_with(" series"))
        .collect();
    assert!(panels.len() >= 15, "{section}");
    for panel in panels {
        let count: usize = panel
            .split_whitespace()
            .rev()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a series count");
        assert!(count > 0, "a dashboard panel has no data: {panel}");
    }

    // The shadow: the fp32 candidate, compared with production's int8 answers on embed's own
    // traffic, passed on enough pairs, its agreement's interval above the criterion (0.95).
    let shadow = text
        .lines()
        .find(|l| l.starts_with("shadow verdict: "))
        .unwrap_or_else(|| panic!("no shadow verdict:\n{text}"));
    let words: Vec<&str> = shadow.split_whitespace().collect();
    let number = |after: &str| -> f64 {
        let at = words
            .iter()
            .position(|w| *w == after)
            .unwrap_or_else(|| panic!("no {after:?} in {shadow}"));
        words[at + 1]
            .trim_end_matches([',', ':', ')', 'x'])
            .parse()
            .unwrap_or_else(|_| panic!("no number after {after:?} in {shadow}"))
    };
    assert_eq!(words[2], "Pass", "{shadow}");
    assert!(number("after") >= 200.0, "{shadow}");
    assert!(number("agreement") >= 0.95, "{shadow}");
    assert!(number("interval") >= 0.95, "{shadow}");

    // The experiment: both variants had users, who accepted v2's answers less often (it was
    // trained on labels a third of which were swapped); the operator found v2 worse and gave
    // every user back to the control.
    let tally = |variant: &str| -> (f64, f64) {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("users on {variant}: ")))
            .unwrap_or_else(|| panic!("no users on {variant}:\n{text}"));
        let (_, counts) = line.split_once(": ").expect("users on VARIANT: counts");
        let numbers: Vec<f64> = counts
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 3, "{line}");
        (numbers[0], numbers[2])
    };
    let (control_users, control_rate) = tally("control");
    let (v2_users, v2_rate) = tally("v2");
    assert!(control_users >= 100.0 && v2_users >= 100.0, "{text}");
    assert!(control_rate > v2_rate, "{text}");
    let verdict = text
        .lines()
        .find(|l| l.starts_with("experiment verdict: "))
        .unwrap_or_else(|| panic!("no experiment verdict:\n{text}"));
    assert!(
        verdict.starts_with("experiment verdict: Failed") && verdict.contains("worse"),
        "{verdict}"
    );
    let selects = line_after(&text, "experiment verdict: ");
    assert!(
        selects.starts_with("sentiment's Service selects again")
            && selects.contains(r#""lexserve.io/inference-service":"sentiment""#),
        "{selects}"
    );
}
