//! Remote model sources for `fetch`: `s3://` (AWS S3 and S3-compatible stores, see [`s3`]) and `hf://`
//! (the Hugging Face Hub's HTTP API, see [`hf`]).
//!
//! Credentials come from the environment, because that is how the operator hands them over: it
//! mounts the credentials Secret named in the spec with `envFrom`, so its keys (`AWS_ACCESS_KEY_ID`,
//! `HF_TOKEN`, ...) arrive as variables and never as arguments that `ps` or the pod spec would show.
//!
//! Downloads land in a [`Staging`] directory beside the destination, in the same volume, and are
//! moved into place only once everything has arrived and the caller has verified the digest, so a
//! failed or interrupted fetch never leaves a half-written model where the server would load it.

pub mod aws_credentials;
pub mod hf;
pub mod hf_files;
pub mod resume;
pub mod s3;
pub mod sigv4;

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::uri::ModelUri;

#[derive(Debug, Error)]
pub enum RemoteError {
    #[error(
        "{uri} needs credentials: set {missing} (the operator passes the credentials Secret's keys as environment variables)"
    )]
    MissingCredentials { uri: String, missing: String },
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidSetting {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("access denied to {uri}: {hint}{detail}")]
    AccessDenied {
        uri: String,
        hint: &'static str,
        detail: String,
    },
    #[error("not found: {uri}{detail}{hint}")]
    NotFound {
        uri: String,
        detail: String,
        hint: &'static str,
    },
    #[error("{uri}: the server answered HTTP {status} for {url}{detail}")]
    Status {
        uri: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("cannot download {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: the download stopped after {got} of {expected} bytes")]
    Truncated {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{uri}: unexpected answer from {url}: {reason}")]
    BadResponse {
        uri: String,
        url: String,
        reason: String,
    },
    #[error(
        "{uri}: refusing to write {name:?}: a file name must be a relative path without '.' or '..' segments"
    )]
    UnsafeName { uri: String, name: String },
    #[error("{reason}")]
    Selection { reason: String },
    #[error(
        "{uri} is no longer what an earlier fetch got ({revision}): refusing to serve different bytes than the other replicas{detail}. To move to the new content, change spec.model (for instance its sha256) so that the operator resolves it again"
    )]
    PinnedChanged {
        uri: String,
        revision: String,
        detail: String,
    },
    #[error("invalid --revision {revision:?} for {uri}: {reason}")]
    BadRevision {
        uri: String,
        revision: String,
        reason: &'static str,
    },
    #[error("{uri} has no files to download")]
    Empty { uri: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP client: {0}")]
    Client(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
    move |source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// reqwest's `Display` stops at "error sending request"; the cause (refused, DNS, TLS) is further
/// down the source chain and is what a person needs to read.
pub(crate) fn request_error(url: &str, error: &reqwest::Error) -> RemoteError {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    RemoteError::Request {
        url: url.to_string(),
        reason,
    }
}

/// Sends a GET: a success status is the response, any other status the source's own error (from
/// `status_error`, which reads the body), and no answer at all a request error.
pub(crate) async fn send<E: Future<Output = RemoteError>>(
    request: reqwest::RequestBuilder,
    url: &reqwest::Url,
    status_error: impl FnOnce(reqwest::Response) -> E,
) -> Result<reqwest::Response, RemoteError> {
    let response = request
        .send()
        .await
        .map_err(|e| request_error(url.as_str(), &e))?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(status_error(response).await)
    }
}

/// One client per fetch. No overall timeout (models are gigabytes), but a connection that cannot be
/// opened, or that stops sending, fails instead of hanging the pod's start forever.
pub(crate) fn http_client() -> Result<reqwest::Client, RemoteError> {
    client_builder()
        .build()
        .map_err(|e| RemoteError::Client(e.to_string()))
}

/// [`http_client`] for signed requests (S3, STS): redirects are not followed, since reqwest
/// strips only `Authorization` on the way to another host and the `x-amz-security-token` would go
/// along. The Hub, whose downloads redirect to a CDN and whose token is an `Authorization`
/// header, keeps the default.
pub(crate) fn signed_http_client() -> Result<reqwest::Client, RemoteError> {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| RemoteError::Client(e.to_string()))
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("lexserve-sidecar/", env!("CARGO_PKG_VERSION")))
}

/// Reads an environment variable, treating an empty value as unset (an optional Secret key that is
/// present but blank must not turn into an empty token or endpoint).
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A lookup over fixed `NAME=value` pairs, standing in for [`env_var`] in unit tests.
#[cfg(test)]
pub(crate) fn lookup_in(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// Checks that a remote file name (an S3 key below the prefix, a Hub `rfilename`) is a plain relative
/// path, so that no listing can make `fetch` write outside the destination.
pub(crate) fn safe_relative_path(uri: &str, name: &str) -> Result<PathBuf, RemoteError> {
    let unsafe_name = || RemoteError::UnsafeName {
        uri: uri.to_string(),
        name: name.to_string(),
    };
    if name.is_empty() || name.contains('\\') || name.contains('\0') {
        return Err(unsafe_name());
    }
    let path = PathBuf::from(name);
    let mut clean = PathBuf::new();
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(unsafe_name());
        }
        clean.push(segment);
    }
    if path.is_absolute()
        || clean
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_name());
    }
    Ok(clean)
}

/// Streams a successful response body into `path` (parents created), checking the length the server
/// announced, and syncs it so that the later rename publishes complete data.
pub(crate) async fn write_body(
    mut response: reqwest::Response,
    path: &Path,
) -> Result<u64, RemoteError> {
    let url = response.url().to_string();
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(parent))?;
    }
    let expected = response.content_length();
    let mut file = tokio::fs::File::create(path).await.map_err(io_err(path))?;
    let mut written = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(&url, &e))?
    {
        file.write_all(&chunk).await.map_err(io_err(path))?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(io_err(path))?;
    file.sync_all().await.map_err(io_err(path))?;
    if let Some(expected) = expected
        && expected != written
    {
        return Err(RemoteError::Truncated {
            url,
            expected,
            got: written,
        });
    }
    Ok(written)
}

/// The body of an error response, shortened: S3 and the Hub explain themselves there (`<Code>`,
/// `{"error": ...}`), and that explanation belongs in the message a person reads.
pub(crate) async fn error_body(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let text = text.trim();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Where a model is copied or downloaded before it is trusted: a directory beside the target,
/// `PARENT/.lexserve-partial-<target name>-<pid>`, in the same volume as the target because a
/// rename only stays atomic within one filesystem. The target is the model itself (a file or a
/// directory, see [`lexserve_contract::names::path::fetched_artifact`]), so it cannot hold its own
/// staging directory; its parent is the model volume's mount point, which is never replaced.
/// Dropped without [`Staging::commit`], it removes itself and everything in it.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

const STAGING_PREFIX: &str = ".lexserve-partial-";

impl Staging {
    /// Creates the target's parent if needed, removes what an earlier, killed attempt at the same
    /// target left behind (an init container is restarted after a failure), and creates a fresh
    /// staging directory.
    pub fn create(target: &Path) -> Result<Self, RemoteError> {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| RemoteError::Io {
                path: target.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the destination must name a file or directory (UTF-8) inside a directory",
                ),
            })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let prefix = format!("{STAGING_PREFIX}{name}-");
        for entry in std::fs::read_dir(&parent).map_err(io_err(&parent))? {
            let entry = entry.map_err(io_err(&parent))?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let stale = entry.path();
                std::fs::remove_dir_all(&stale).map_err(io_err(&stale))?;
            }
        }
        let dir = parent.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(Self {
            dir,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The staging directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Publishes `staged` (the staging directory itself for a directory model, or one file in it)
    /// as the target. Whatever the target held before is removed first, not merged: a volume
    /// reused across versions must not keep an older version's files for the server to pick up.
    pub fn commit(mut self, staged: &Path) -> Result<(), RemoteError> {
        if let Ok(meta) = std::fs::symlink_metadata(&self.target) {
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&self.target)
            } else {
                std::fs::remove_file(&self.target)
            };
            removed.map_err(io_err(&self.target))?;
        }
        std::fs::rename(staged, &self.target).map_err(io_err(&self.target))?;
        if staged != self.dir {
            std::fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `future` to completion on a runtime of its own. `fetch` is synchronous (it runs before
/// anything else in the init container); when called from inside a runtime anyway (a test, an
/// embedding program), the work moves to a scoped thread, because blocking a runtime's thread on
/// another runtime panics.
fn block_on<T: Send>(future: impl Future<Output = T> + Send) -> Result<T, RemoteError> {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
            .map_err(|e| RemoteError::Client(format!("cannot start the async runtime: {e}")))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope
                .spawn(run)
                .join()
                .unwrap_or_else(|_| Err(RemoteError::Client("the download thread panicked".into())))
        })
    } else {
        run()
    }
}

/// What a remote download got.
#[derive(Debug)]
pub struct Downloaded {
    /// The file's name when the model is one file (an S3 object, a named Hub file), `None` when it
    /// is the whole staging directory.
    pub file: Option<PathBuf>,
    /// What the source resolved to (see `lexserve_contract::fetch_report::Revision`).
    pub revision: Option<String>,
}

/// What the caller asks of a download beyond the uri.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// An earlier fetch's revision: fetch exactly that, or fail.
    pub pinned: Option<&'a str>,
    /// Which files of a Hub repository.
    pub needs: hf_files::Needs,
}

/// Downloads a remote model into `staging`.
pub fn download(
    uri: &ModelUri,
    staging: &Path,
    request: Request<'_>,
) -> Result<Downloaded, RemoteError> {
    match uri {
        ModelUri::S3 { bucket, key } => {
            let config = s3::S3Config::from_env(&uri.to_string())?;
            let pinned = request
                .pinned
                .map(|text| s3::parse_pin(&uri.to_string(), key, text))
                .transpose()?;
            block_on(async {
                let client = signed_http_client()?;
                s3::download(&client, &config, bucket, key, pinned.as_ref(), staging).await
            })?
        }
        ModelUri::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let config = hf::HfConfig::from_env()?;
            let got = block_on(async {
                let client = http_client()?;
                hf::download(
                    &client,
                    &config,
                    repo,
                    revision.as_deref(),
                    file.as_deref(),
                    request,
                    staging,
                )
                .await
            })??;
            Ok(Downloaded {
                file: got.file,
                revision: Some(got.commit),
            })
        }
        ModelUri::File(_) | ModelUri::Pvc { .. } => Err(RemoteError::BadResponse {
            uri: uri.to_string(),
            url: String::new(),
            reason: "not a remote uri".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names_must_stay_inside_the_destination() {
        assert_eq!(
            safe_relative_path("u", "a/b.onnx").unwrap(),
            PathBuf::from("a/b.onnx")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "a/.",
        ] {
            assert!(safe_relative_path("u", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn staging_is_removed_unless_committed_and_commit_replaces() {
        let volume = std::env::temp_dir().join(format!("lexserve-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&volume);
        let target = volume.join("model");
        // Left behind by a killed attempt: removed by the next one.
        std::fs::create_dir_all(volume.join(".lexserve-partial-model-1/x")).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("model.onnx"), b"old").unwrap();
        std::fs::write(target.join("stale.bin"), b"old").unwrap();

        let staging = Staging::create(&target).unwrap();
        assert!(!volume.join(".lexserve-partial-model-1").exists());
        std::fs::write(staging.path().join("half"), b"h").unwrap();
        let dir = staging.path().to_path_buf();
        drop(staging);
        assert!(!dir.exists());
        assert_eq!(std::fs::read(target.join("model.onnx")).unwrap(), b"old");

        // A directory replaces the old directory wholesale: no stale file survives.
        let staging = Staging::create(&target).unwrap();
        std::fs::write(staging.path().join("model.onnx"), b"new").unwrap();
        std::fs::create_dir_all(staging.path().join("sub")).unwrap();
        std::fs::write(staging.path().join("sub/a"), b"a").unwrap();
        let staged = staging.path().to_path_buf();
        staging.commit(&staged).unwrap();
        assert_eq!(std::fs::read(target.join("model.onnx")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("sub/a")).unwrap(), b"a");
        assert!(!target.join("stale.bin").exists());

        // A file replaces the directory, and its staging directory goes.
        let staging = Staging::create(&target).unwrap();
        let file = staging.path().join("minilm-q8.onnx");
        std::fs::write(&file, b"file").unwrap();
        staging.commit(&file).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"file");
        let names: Vec<_> = std::fs::read_dir(&volume)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model"], "{names:?}");
        std::fs::remove_dir_all(&volume).unwrap();
    }
}
