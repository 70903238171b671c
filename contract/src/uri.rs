//! Model URIs as written in `spec.model.uri` / `spec.model.tokenizer`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Where a model lives. `file://` and `pvc://` are read in place by `serve`; `s3://` and `hf://` are
/// downloaded by `fetch` (the init container, see [`crate::remote`]) into a volume that `serve` then
/// reads, so [`ModelUri::local_path`] refuses them with a message that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelUri {
    /// An absolute path on the sidecar's filesystem.
    File(PathBuf),
    /// A path inside a PersistentVolumeClaim, which the pod mounts under a per-claim root.
    Pvc {
        claim: String,
        path: PathBuf,
    },
    S3 {
        bucket: String,
        key: String,
    },
    /// A Hugging Face Hub model repository, `hf://org/name[@revision]`.
    HuggingFace {
        /// `org/name`.
        repo: String,
        /// A branch, tag or commit; `None` means `main`.
        revision: Option<String>,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UriError {
    #[error("invalid model uri {uri:?}: {reason}")]
    Invalid { uri: String, reason: &'static str },
    #[error(
        "{scheme}:// model uris are downloaded by `lexserve-sidecar fetch` (the init container), not read in place ({uri}); fetch the model into a volume and serve it with file:// or pvc://"
    )]
    Unsupported { scheme: &'static str, uri: String },
}

impl ModelUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let invalid = |reason| UriError::Invalid {
            uri: uri.to_string(),
            reason,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| invalid("expected a scheme: file://, pvc://, s3:// or hf://"))?;
        match scheme {
            "file" => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(invalid("file:// needs an absolute path (file:///models/x)"));
                }
                Ok(Self::File(path))
            }
            "pvc" => {
                let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
                if claim.is_empty() {
                    return Err(invalid("pvc:// needs a claim name (pvc://<claim>/<path>)"));
                }
                let path = PathBuf::from(path);
                if path
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
                {
                    return Err(invalid(
                        "the path inside a pvc:// uri must be relative and must not contain '..'",
                    ));
                }
                Ok(Self::Pvc {
                    claim: claim.to_string(),
                    path,
                })
            }
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || key.is_empty() {
                    return Err(invalid("s3:// needs a bucket and a key (s3://bucket/key)"));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                })
            }
            "hf" => {
                let (repo, revision) = match rest.split_once('@') {
                    Some((repo, revision)) => (repo, Some(revision)),
                    None => (rest, None),
                };
                let parts: Vec<&str> = repo.split('/').filter(|p| !p.is_empty()).collect();
                if parts.len() != 2 || parts.iter().any(|p| *p == "." || *p == "..") {
                    return Err(invalid(
                        "hf:// needs an organisation and a name (hf://org/name[@revision])",
                    ));
                }
                if revision.is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(invalid(
                        "the revision after '@' must be a branch, tag or commit (hf://org/name@main)",
                    ));
                }
                Ok(Self::HuggingFace {
                    repo: parts.join("/"),
                    revision: revision.map(str::to_string),
                })
            }
            _ => Err(invalid(
                "unknown scheme: expected file://, pvc://, s3:// or hf://",
            )),
        }
    }

    /// The local path this uri names, given where PVCs are mounted (`<pvc_root>/<claim>/<path>`).
    pub fn local_path(&self, pvc_root: &Path) -> Result<PathBuf, UriError> {
        match self {
            Self::File(path) => Ok(path.clone()),
            Self::Pvc { claim, path } => Ok(pvc_root.join(claim).join(path)),
            Self::S3 { .. } => Err(UriError::Unsupported {
                scheme: "s3",
                uri: self.to_string(),
            }),
            Self::HuggingFace { .. } => Err(UriError::Unsupported {
                scheme: "hf",
                uri: self.to_string(),
            }),
        }
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::Pvc { claim, path } => write!(f, "pvc://{claim}/{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::HuggingFace {
                repo,
                revision: None,
            } => write!(f, "hf://{repo}"),
            Self::HuggingFace {
                repo,
                revision: Some(revision),
            } => write!(f, "hf://{repo}@{revision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            ModelUri::parse("file:///models/minilm"),
            Ok(ModelUri::File("/models/minilm".into()))
        );
        assert_eq!(
            ModelUri::parse("pvc://models/minilm/v1"),
            Ok(ModelUri::Pvc {
                claim: "models".into(),
                path: "minilm/v1".into()
            })
        );
        assert!(matches!(
            ModelUri::parse("s3://b/k"),
            Ok(ModelUri::S3 { .. })
        ));
        assert_eq!(
            ModelUri::parse("hf://sentence-transformers/all-MiniLM-L6-v2"),
            Ok(ModelUri::HuggingFace {
                repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
                revision: None
            })
        );
        assert_eq!(
            ModelUri::parse("hf://org/name@refs/pr/1"),
            Ok(ModelUri::HuggingFace {
                repo: "org/name".into(),
                revision: Some("refs/pr/1".into())
            })
        );
        for text in ["hf://org/name@v1.0", "hf://org/name", "s3://b/prefix/"] {
            assert_eq!(ModelUri::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "/models/x",
            "file://relative/x",
            "pvc:///x",
            "pvc://claim/../etc",
            "pvc://claim//abs",
            "s3://bucket",
            "hf://justname",
            "hf://org/name@",
            "hf://org/../x",
            "hf://a/b/c",
            "ftp://x/y",
        ] {
            assert!(ModelUri::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn pvc_maps_under_the_mount_root() {
        let uri = ModelUri::parse("pvc://models/minilm").unwrap();
        assert_eq!(
            uri.local_path(Path::new("/mnt/pvc")).unwrap(),
            PathBuf::from("/mnt/pvc/models/minilm")
        );
        let s3 = ModelUri::parse("s3://b/k").unwrap();
        assert!(
            s3.local_path(Path::new("/mnt/pvc"))
                .unwrap_err()
                .to_string()
                .contains("downloaded by `lexserve-sidecar fetch`")
        );
    }
}
