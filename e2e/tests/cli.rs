//! `lexserve-e2e cluster up | status | down`, as a user runs them. The cache (and with it the
//! cluster's directory) is redirected to a temporary directory so that a cluster the user has
//! up is not touched.

use std::process::Command;
use std::time::Duration;

use lexserve_e2e::bins;

struct Cli {
    cache: std::path::PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_lexserve-e2e"))
            .args(args)
            .env("LEXSERVE_CACHE", &self.cache)
            .env(bins::BIN_DIR_ENV, bins::bin_dir())
            .output()
            .expect("run lexserve-e2e")
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.run(&["cluster", "down"]);
        let _ = std::fs::remove_dir_all(&self.cache);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn cluster_up_status_down() {
    let cli = Cli {
        cache: std::env::temp_dir().join(format!("lexserve-e2e-cli-{}", std::process::id())),
    };
    let kubeconfig = cli.cache.join("cluster").join("kubeconfig");

    let out = cli.run(&["cluster", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        text(&out)
    );

    let out = cli.run(&["cluster", "up", "--gpu-nodes", "1", "--cpu-nodes", "1"]);
    assert!(out.status.success(), "up: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        kubeconfig.display().to_string()
    );

    // Detached: the cluster answers after `up` has exited.
    let nodes = Command::new(bins::kubectl().expect("kubectl"))
        .args([
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "get",
            "nodes",
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl");
    assert!(nodes.status.success(), "kubectl: {}", text(&nodes));
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).lines().count(),
        2,
        "{}",
        text(&nodes)
    );

    let out = cli.run(&["cluster", "up"]);
    assert!(out.status.success(), "second up: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already up"),
        "{}",
        text(&out)
    );

    let out = cli.run(&["cluster", "status"]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.contains("is up"), "{}", text(&out));
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ] {
        assert!(
            status.contains(component),
            "{component} missing from status: {status}"
        );
    }
    assert!(!status.contains("NOT RUNNING"), "{status}");
    // The supervisor ("supervisor pid N)") and the five components ("pid N running").
    let pids: Vec<u32> = status
        .lines()
        .filter_map(|l| {
            let after = l.split(" pid ").nth(1)?;
            after
                .trim_end_matches(')')
                .split_whitespace()
                .next()?
                .trim_end_matches(')')
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(pids.len(), 6, "pids in status: {status}");

    let out = cli.run(&["cluster", "down"]);
    assert!(out.status.success(), "down: {}", text(&out));
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = !stat.is_empty()
            && !stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
        assert!(!running, "pid {pid} still running after down");
    }
    let out = cli.run(&["cluster", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        text(&out)
    );
}
