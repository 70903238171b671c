//! `fetch`: the init container's job. Copies a model (a file or a directory) from its uri into the
//! serving volume and verifies its sha256 ([`lexserve_contract::digest`] defines what it covers).
//! The copy is verified, not the source: what the server will read is what must match.
//!
//! `--dest` becomes the model: the file itself when the source is one file (whatever its name), a
//! directory holding the source's files when it is a directory. The operator points `serve` at that
//! same path ([`lexserve_contract::names::path::fetched_artifact`]), so `serve` loads and digests the
//! object `fetch` verified.
//!
//! Every source, local (`file://`, `pvc://`) or remote (`s3://`, `hf://`, see [`remote`]), is copied
//! into a [`Staging`] directory beside the destination, verified there, and only then renamed into
//! place, replacing whatever the destination held (an older version in a reused volume): a failed
//! copy or a digest mismatch leaves nothing new for the server to load, and a success leaves only the
//! current model. A `pvc://` source may not reach outside its claim through a symlink.
//!
//! The outcome goes to the container's termination log, because that is how it reaches the operator
//! and `kubectl describe`: `sha256:<hex>` of what was verified on success (the operator records which
//! model a pod actually serves), followed for a remote source by `revision:<what it resolved to>`
//! (see `lexserve_contract::fetch_report`), the error message on failure.

pub mod remote;

use lexserve_contract::fetch_report::FetchReport;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cli::FetchArgs;
use crate::uri::{ModelUri, UriError};
use lexserve_contract::digest::{DigestError, list_files, path_sha256};
use remote::hf_files::Needs;
use remote::{RemoteError, Request, Staging};

/// Where Kubernetes mounts the file whose content becomes the container's termination message.
pub use lexserve_contract::names::path::TERMINATION_LOG as DEFAULT_TERMINATION_LOG;

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing {path}: it resolves to {resolved}, outside the volume of claim {claim:?} ({root}); a pvc:// model must lie inside its claim"
    )]
    OutsideClaim {
        path: PathBuf,
        resolved: PathBuf,
        claim: String,
        root: PathBuf,
    },
    #[error("invalid --sha256: must be 64 hexadecimal characters")]
    BadExpectedDigest,
    #[error("sha256 mismatch for {path}: expected {expected}, got {actual} (the copy was removed)")]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// What was fetched.
#[derive(Debug)]
pub struct Fetched {
    /// The file or directory the server should load.
    pub path: PathBuf,
    pub sha256: String,
    /// What a remote source resolved to (reported beside the digest); `None` for a local one.
    pub revision: Option<String>,
}

fn copy_file(from: &Path, to: &Path) -> Result<(), FetchError> {
    let err = |source| FetchError::Copy {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::copy(from, to).map_err(err)?;
    Ok(())
}

/// Fetches the model as [`fetch_model`] does, then writes the outcome to the termination log (see
/// [`termination_log_path`]).
pub fn fetch(args: &FetchArgs) -> Result<Fetched, FetchError> {
    let result = fetch_model(args);
    let (path, explicit) = termination_log_path(args.termination_log.as_deref());
    write_termination_log(&path, explicit, &termination_message(&result));
    result
}

/// The termination log: `--termination-log` (env `LEXSERVE_TERMINATION_LOG`) when set, else
/// Kubernetes' default path. The second value says whether it was set explicitly.
pub fn termination_log_path(flag: Option<&Path>) -> (PathBuf, bool) {
    match flag {
        Some(path) if !path.as_os_str().is_empty() => (path.to_path_buf(), true),
        _ => (PathBuf::from(DEFAULT_TERMINATION_LOG), false),
    }
}

/// `sha256:<hex> [revision:<revision>]` on success, the error message (cut to what Kubernetes
/// keeps) on failure.
pub fn termination_message(result: &Result<Fetched, FetchError>) -> String {
    match result {
        Ok(fetched) => FetchReport {
            sha256: fetched.sha256.clone(),
            revision: fetched.revision.clone(),
        }
        .message(),
        Err(e) => {
            let mut message = e.to_string();
            let mut end = message.len().min(TERMINATION_MESSAGE_LIMIT);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message
        }
    }
}

/// Writes `message` to the termination log, silently doing nothing when it cannot (outside a pod).
/// The default path is only written when it already exists (Kubernetes creates it in every
/// container): run by hand as root, `fetch` must not leave a stray file in `/dev`. An explicitly set
/// path is created.
pub fn write_termination_log(path: &Path, create: bool, message: &str) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(message.as_bytes());
    }
}

fn expected_digest(args: &FetchArgs) -> Result<Option<String>, FetchError> {
    args.sha256
        .as_deref()
        .map(|d| {
            if d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(d.to_ascii_lowercase())
            } else {
                Err(FetchError::BadExpectedDigest)
            }
        })
        .transpose()
}

/// Copies or downloads the model and verifies it, without reporting anywhere.
pub fn fetch_model(args: &FetchArgs) -> Result<Fetched, FetchError> {
    let expected = expected_digest(args)?;
    let uri = ModelUri::parse(&args.uri)?;
    match uri {
        ModelUri::S3 { .. } | ModelUri::HuggingFace { .. } => {
            let request = Request {
                pinned: args.revision.as_deref().filter(|r| !r.is_empty()),
                needs: Needs {
                    artifact: args.artifact,
                    format: args.format,
                    task: args.task,
                    quantize: args.quantize.unwrap_or_default(),
                },
            };
            fetch_remote(&uri, &args.dest, expected, request)
        }
        ModelUri::File(_) | ModelUri::Pvc { .. } => fetch_local(&uri, args, expected),
    }
}

/// Downloads into a [`Staging`] directory, verifies the digest there, then moves the model into
/// place as `dest`. The digest reported is the staged model's: exactly what was downloaded.
fn fetch_remote(
    uri: &ModelUri,
    dest: &Path,
    expected: Option<String>,
    request: Request<'_>,
) -> Result<Fetched, FetchError> {
    let staging = Staging::create(dest)?;
    let downloaded = remote::download(uri, staging.path(), request)?;
    let file = downloaded.file;
    let staged = match &file {
        Some(name) => staging.path().join(name),
        None => staging.path().to_path_buf(),
    };
    verify_and_commit(staging, &staged, dest, expected, downloaded.revision)
}

/// Checks the staged model's digest against the pin and, when it matches (or nothing is pinned),
/// publishes it as `dest`. On a mismatch the staging directory is dropped, which removes the copy.
/// `revision` is what a remote source resolved to, reported beside the digest.
fn verify_and_commit(
    staging: Staging,
    staged: &Path,
    dest: &Path,
    expected: Option<String>,
    revision: Option<String>,
) -> Result<Fetched, FetchError> {
    let actual = path_sha256(staged)?;
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(FetchError::Mismatch {
            path: dest.to_path_buf(),
            expected,
            actual,
        });
    }
    staging.commit(staged)?;
    Ok(Fetched {
        path: dest.to_path_buf(),
        sha256: actual,
        revision,
    })
}

/// Copies a `file://` or `pvc://` source into a [`Staging`] directory (a directory's files, or the
/// one file under its own name), then verifies and publishes it as [`fetch_remote`] does.
fn fetch_local(
    uri: &ModelUri,
    args: &FetchArgs,
    expected: Option<String>,
) -> Result<Fetched, FetchError> {
    let source = uri.local_path(&args.pvc_root)?;
    let meta = std::fs::metadata(&source).map_err(|_| FetchError::MissingSource(source.clone()))?;
    let files = if meta.is_dir() {
        list_files(&source)?
    } else {
        Vec::new()
    };
    if let ModelUri::Pvc { claim, .. } = uri {
        let root = args.pvc_root.join(claim);
        let mut paths = vec![source.clone()];
        paths.extend(files.iter().map(|f| source.join(f)));
        for path in paths {
            inside_claim(&path, &root, claim)?;
        }
    }
    let staging = Staging::create(&args.dest)?;
    let staged = if meta.is_dir() {
        for relative in &files {
            copy_file(&source.join(relative), &staging.path().join(relative))?;
        }
        staging.path().to_path_buf()
    } else {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("model"));
        let staged = staging.path().join(name);
        copy_file(&source, &staged)?;
        staged
    };
    verify_and_commit(staging, &staged, &args.dest, expected, None)
}

/// Refuses a path under a claim's mount that resolves (through symlinks) outside it: a claim's
/// contents are the user's, the rest of the pod's filesystem is not theirs to copy into the model.
fn inside_claim(path: &Path, root: &Path, claim: &str) -> Result<(), FetchError> {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| FetchError::Resolve {
            path: p.to_path_buf(),
            source,
        })
    };
    let root_resolved = resolve(root)?;
    let resolved = resolve(path)?;
    if resolved.starts_with(&root_resolved) {
        Ok(())
    } else {
        Err(FetchError::OutsideClaim {
            path: path.to_path_buf(),
            resolved,
            claim: claim.to_string(),
            root: root.to_path_buf(),
        })
    }
}
