//! Nothing outlives a test: not after a drop, not after the test binary exits, not after it is
//! killed. Each case runs a cluster and checks afterwards that every component process is gone.
//!
//! The "exits" and "killed" cases need a process to die, so this test binary runs itself as a
//! child (`LEXSERVE_E2E_TEARDOWN_CHILD` selects what the child does) and watches.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lexserve_e2e::{ClusterOptions, LocalCluster, shared_cluster};

const CHILD_ENV: &str = "LEXSERVE_E2E_TEARDOWN_CHILD";
const CHILD_OUT_ENV: &str = "LEXSERVE_E2E_TEARDOWN_OUT";

fn small() -> ClusterOptions {
    ClusterOptions {
        gpu_nodes: 1,
        cpu_nodes: 1,
        ..ClusterOptions::default()
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes: look at /proc's state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_all_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn dropping_a_cluster_stops_every_process_and_removes_its_files() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let cluster = LocalCluster::start(small()).await.expect("cluster");
    let pids: Vec<u32> = cluster.pids().into_iter().map(|(_, pid)| pid).collect();
    let work_dir = cluster.work_dir().to_path_buf();
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok: {:?}",
        cluster.pids()
    );
    assert!(pids.iter().all(|&p| alive(p)));
    drop(cluster);
    assert_eq!(
        wait_all_gone(&pids, Duration::from_secs(1)),
        Vec::<u32>::new(),
        "still running after drop"
    );
    assert!(!work_dir.exists(), "{} left behind", work_dir.display());
}

/// Runs this test binary as a child doing `mode`, waits for it to report its cluster's pids
/// and work dir, then lets `finish` act on the child; returns (pids, work dir).
fn run_child(mode: &str, finish: impl FnOnce(&mut std::process::Child)) -> (Vec<u32>, PathBuf) {
    let out_dir = std::env::temp_dir().join(format!(
        "lexserve-e2e-teardown-{}-{mode}",
        std::process::id()
    ));
    std::fs::create_dir_all(&out_dir).expect("create out dir");
    let out = out_dir.join("pids");
    let _ = std::fs::remove_file(&out);
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(CHILD_OUT_ENV, &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child test process");
    let start = Instant::now();
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&out)
            && text.ends_with('\n')
        {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited ({status}) before reporting its cluster");
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "child did not start a cluster in 180s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut lines = text.lines();
    let work_dir = PathBuf::from(lines.next().expect("work dir line"));
    let pids = lines.map(|l| l.parse().expect("pid")).collect();
    finish(&mut child);
    let _ = std::fs::remove_dir_all(&out_dir);
    (pids, work_dir)
}

/// What the child does: start a cluster, report it, then return (mode "exit": the test
/// binary exits with the cluster in a static) or hang until killed (mode "kill").
#[tokio::test]
async fn child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let out = PathBuf::from(std::env::var_os(CHILD_OUT_ENV).expect("out path"));
    let cluster = shared_cluster().await.expect("shared cluster");
    let mut report = format!("{}\n", cluster.work_dir().display());
    for (_, pid) in cluster.pids() {
        report.push_str(&format!("{pid}\n"));
    }
    write_atomic(&out, &report);
    if mode == "kill" {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write report");
    std::fs::rename(&tmp, path).expect("rename report");
}

#[test]
fn a_shared_cluster_is_stopped_when_the_test_binary_exits() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (pids, work_dir) = run_child("exit", |child| {
        let status = child.wait().expect("wait for child");
        assert!(status.success(), "child test failed: {status}");
    });
    assert_eq!(pids.len(), 5);
    assert_eq!(
        wait_all_gone(&pids, Duration::from_secs(2)),
        Vec::<u32>::new(),
        "left running after exit"
    );
    assert!(!work_dir.exists(), "{} left behind", work_dir.display());
}

#[test]
fn killing_the_test_binary_kills_its_cluster() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (pids, _work_dir) = run_child("kill", |child| {
        child.kill().expect("SIGKILL the child");
        let _ = child.wait();
    });
    assert_eq!(pids.len(), 5);
    // PR_SET_PDEATHSIG: the kernel kills them when their parent dies, even by SIGKILL.
    assert_eq!(
        wait_all_gone(&pids, Duration::from_secs(5)),
        Vec::<u32>::new(),
        "orphans after SIGKILL"
    );
}
