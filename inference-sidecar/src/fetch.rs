//! `fetch`: the init container's job. Copies a model (a file or a directory) from its uri into the
//! serving volume and verifies its sha256 (see [`crate::digest`] for how a directory is digested).
//! The copy is verified, not the source: what the server will read is what must match.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cli::FetchArgs;
use crate::digest::{DigestError, list_files, path_sha256};
use crate::uri::{ModelUri, UriError};

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

pub fn fetch(args: &FetchArgs) -> Result<Fetched, FetchError> {
    let expected = args
        .sha256
        .as_deref()
        .map(|d| {
            if d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(d.to_ascii_lowercase())
            } else {
                Err(FetchError::BadExpectedDigest)
            }
        })
        .transpose()?;
    let source = ModelUri::parse(&args.uri)?.local_path(&args.pvc_root)?;
    let meta = std::fs::metadata(&source).map_err(|_| FetchError::MissingSource(source.clone()))?;
    // A directory's contents land in DEST; a file lands as DEST/<its name>.
    let (target, copied): (PathBuf, Vec<PathBuf>) = if meta.is_dir() {
        let files = list_files(&source)?;
        for relative in &files {
            copy_file(&source.join(relative), &args.dest.join(relative))?;
        }
        (
            args.dest.clone(),
            files.iter().map(|f| args.dest.join(f)).collect(),
        )
    } else {
        let name = source
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("model"));
        let target = args.dest.join(name);
        copy_file(&source, &target)?;
        (target.clone(), vec![target])
    };
    let actual = path_sha256(&target)?;
    if let Some(expected) = expected
        && expected != actual
    {
        for file in copied {
            let _ = std::fs::remove_file(file);
        }
        return Err(FetchError::Mismatch {
            path: target,
            expected,
            actual,
        });
    }
    Ok(Fetched {
        path: target,
        sha256: actual,
    })
}
