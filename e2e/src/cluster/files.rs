//! The files and ports of a [`LocalCluster`](super::LocalCluster): its work directory,
//! kubeconfigs, free loopback ports, and an HTTPS client trusting its CA.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Ports;
use crate::pki::CertFiles;

/// Picks free loopback ports outside the ephemeral range (see [`crate::ports`]), none twice.
pub(super) fn free_ports() -> Result<Ports> {
    let ports = (0..6)
        .map(|_| crate::ports::unused_port())
        .collect::<Result<Vec<_>>>()?;
    Ok(Ports {
        etcd_client: ports[0],
        etcd_peer: ports[1],
        apiserver: ports[2],
        controller_manager: ports[3],
        scheduler: ports[4],
        kwok: ports[5],
    })
}

/// A fresh directory under `$TMPDIR/lexserve-e2e/`, after removing those of dead processes.
pub(super) fn new_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join("lexserve-e2e");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    remove_stale_dirs(&base);
    let pid = std::process::id();
    let dir = base.join(format!("{pid}-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Directories of runs whose process is gone (killed before it could clean up). Those with
/// logs kept after a failure stay for a day, so they can be read.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        let has_etcd = entry.path().join("etcd").exists();
        if !alive && (has_etcd || old) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An HTTPS client trusting the cluster CA (no client certificate: health endpoints are open
/// to anonymous users, as on any cluster).
pub(super) fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem).context("parsing the cluster CA")?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .context("building an HTTPS client")
}

pub(super) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &CertFiles,
    user_name: &str,
) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "lexserve-e2e", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{ "name": user_name, "user": {
            "client-certificate": user.cert,
            "client-key": user.key,
        }}],
        "contexts": [{ "name": "lexserve-e2e", "context": {
            "cluster": "lexserve-e2e",
            "user": user_name,
            "namespace": "default",
        }}],
        "current-context": "lexserve-e2e",
    });
    let yaml = serde_yaml::to_string(&config).context("serializing a kubeconfig")?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}
