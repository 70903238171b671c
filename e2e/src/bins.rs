//! Where the control plane's binaries are.
//!
//! `e2e/cluster/setup.sh` builds or fetches them into a cache outside the clone and links them
//! into one directory. The tests find that directory through `LEXSERVE_BIN_DIR`, with the same
//! default as the script, so that `setup.sh && cargo test` works without exporting anything.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The environment variable naming the directory with kube-apiserver, etcd, kwok, etc.
pub const BIN_DIR_ENV: &str = "LEXSERVE_BIN_DIR";

/// The root of lexserve's cache: `$LEXSERVE_CACHE`, else `$HOME/.cache/lexserve` (as setup.sh).
pub fn cache_dir() -> PathBuf {
    lexserve_testkit::cache_root()
}

/// The directory holding the binaries: `$LEXSERVE_BIN_DIR`, else `<cache>/bin`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => cache_dir().join("bin"),
    }
}

/// The path of one binary, or an error that says how to get it.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if is_executable(&path) {
        return Ok(path);
    }
    bail!(
        "{name} not found at {} (set {BIN_DIR_ENV}, or run e2e/cluster/setup.sh, which builds it)",
        path.display()
    )
}

/// kubectl from the bin dir, else from PATH: kubectl is a client, any recent one will do.
pub fn kubectl() -> Result<PathBuf> {
    bin("kubectl").or_else(|err| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| is_executable(p))
            .ok_or(err)
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
