//! `lexserve-sidecar fetch` as the init container runs it, and scratch directories for its tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a `fetch` run ended.
pub struct Outcome {
    pub code: Option<i32>,
    pub stderr: String,
    /// What the process wrote to its termination log.
    pub termination: String,
}

/// Runs `lexserve-sidecar fetch ARGS` with `env` on top of an environment cleared of every setting
/// that could change its behaviour, and a termination log of its own.
pub fn fetch(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let log = std::env::temp_dir().join(format!(
        "lexserve-termination-log-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new(env!("CARGO_BIN_EXE_lexserve-sidecar"));
    command.arg("fetch").args(args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_ENDPOINT_URL_STS",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_ENDPOINT",
        "LEXSERVE_MODEL_SHA256",
        "LEXSERVE_FETCH_REVISION",
        "LEXSERVE_FETCH_ARTIFACT",
        "LEXSERVE_MODEL_FORMAT",
        "LEXSERVE_TASK",
        "LEXSERVE_QUANTIZE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
        .env("LEXSERVE_TERMINATION_LOG", &log)
        .env("NO_PROXY", "127.0.0.1,localhost");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run lexserve-sidecar fetch");
    let termination = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    Outcome {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        termination,
    }
}

/// `fetch --uri URI --dest DEST [--sha256 DIGEST]`.
pub fn fetch_into(uri: &str, dest: &Path, sha256: Option<&str>, env: &[(&str, &str)]) -> Outcome {
    let dest = dest.to_str().expect("UTF-8 destination");
    let mut args = vec!["--uri", uri, "--dest", dest];
    if let Some(digest) = sha256 {
        args.extend(["--sha256", digest]);
    }
    fetch(&args, env)
}

/// An empty directory of the system's temp dir, named for the test and this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lexserve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Top-level names in `dir`, sorted (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
