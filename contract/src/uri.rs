//! Model URIs as written in `spec.model.uri` / `spec.model.tokenizer`: the grammar the CRD's
//! pattern admits ([`MODEL_URI_PATTERN`]) and the parser the sidecar runs ([`ModelUri::parse`]),
//! side by side so that they say the same thing (tested below).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// A model or tokenizer location, as the apiserver checks it:
/// - `file:///<absolute path>`
/// - `pvc://<claim>[/<relative path>]`, the claim a DNS subdomain, no `..` in the path
/// - `s3://<bucket>/<key>`, the bucket an S3 bucket name (3–63 of `a-z 0-9 . -`; the two rules an
///   RE2 pattern cannot add to these, see [`MODEL_URI_REFUSED_PATTERN`])
/// - `hf://<org>/<name>[@<revision>][/<file>]`: the revision is one segment (a `/` in a branch
///   name written `%2F`) or one of the Hub's own `refs/pr/<n>`, `refs/convert/<name>`; the file is a
///   path inside the repository, or a glob (`*`, `?` within a segment) over paths, with no `@`,
///   no empty segment and none of only dots
pub const MODEL_URI_PATTERN: &str = concat!(
    r"^(",
    r"file:///.+",
    r"|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/([^/]*[^/.][^/]*|\.|\.\.\.+))*/?",
    r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+",
    r"|hf://[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*",
    r"(@(refs/pr/[0-9]+|refs/convert/[A-Za-z0-9_]+|[^\s@/]*[^\s@/.][^\s@/]*))?",
    r"(/[^\s@/]*[^\s@/.][^\s@/]*)*",
    r")$"
);

/// What [`MODEL_URI_PATTERN`] admits but the grammar refuses: an `s3://` bucket with `..` in it or
/// written as an IP address (S3 refuses both names). Kept apart because the apiserver's patterns
/// are RE2, which has no lookahead to say "not this" inside the length-bounded bucket above; the CRD
/// applies it as a CEL rule (`!self.uri.matches(...)`, see `rules.rs`). `[.]` rather than `\.` so
/// that the pattern reads the same inside a CEL string literal.
pub const MODEL_URI_REFUSED_PATTERN: &str =
    r"^s3://([^/]*[.][.][^/]*|[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+)/";

/// Where a model lives. `file://` and `pvc://` are read in place by `serve`; `s3://` and `hf://` are
/// downloaded by `fetch` (the init container) into a volume that `serve` then
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
    /// A Hugging Face Hub model repository, `hf://org/name[@revision][/file]`.
    HuggingFace {
        /// `org/name`.
        repo: String,
        /// A branch, tag or commit; `None` means `main`.
        revision: Option<String>,
        /// A file of the repository, or a glob over its paths: only what it names is fetched.
        /// `None`: the files the model's format and task need.
        file: Option<String>,
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
                if !is_dns_subdomain(claim) {
                    return Err(invalid(
                        "a pvc:// claim name is a DNS subdomain: lowercase letters, digits, '-' and '.'",
                    ));
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
                if !is_bucket_name(bucket) {
                    return Err(invalid(
                        "an s3:// bucket name is 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit, without '..', and not an IP address",
                    ));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                })
            }
            "hf" => {
                let syntax =
                    "hf:// needs an organisation and a name (hf://org/name[@revision][/file])";
                // Neither names nor files hold '@': the first one starts the revision.
                let (repo_part, after) = match rest.split_once('@') {
                    Some((repo, after)) => (repo, Some(after)),
                    None => (rest, None),
                };
                let mut segments = repo_part.splitn(3, '/');
                let (Some(org), Some(name)) = (segments.next(), segments.next()) else {
                    return Err(invalid(syntax));
                };
                if !is_hf_name(org) || !is_hf_name(name) {
                    return Err(invalid(syntax));
                }
                let (revision, file) = match after {
                    Some(after) => {
                        if segments.next().is_some() {
                            return Err(invalid(
                                "an hf:// file comes after the revision (hf://org/name@revision/file)",
                            ));
                        }
                        let (revision, file) = split_hf_revision(after);
                        // Only dots would be a `.`/`..` segment in the Hub's URLs.
                        if revision.bytes().all(|b| b == b'.')
                            || revision.contains(|c: char| c == '@' || c.is_whitespace())
                        {
                            return Err(invalid(
                                "the revision after '@' must be a branch, tag or commit (hf://org/name@main)",
                            ));
                        }
                        (Some(revision.replace("%2F", "/").replace("%2f", "/")), file)
                    }
                    None => (None, segments.next()),
                };
                if let Some(file) = file
                    && !is_hf_file(file)
                {
                    return Err(invalid(
                        "the file of an hf:// uri is a path inside the repository (or a glob with * and ?): no empty, '.' or '..' segment, no '@' and no whitespace",
                    ));
                }
                Ok(Self::HuggingFace {
                    repo: format!("{org}/{name}"),
                    revision,
                    file: file.map(str::to_string),
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

/// An S3 bucket name (the rules every S3 region enforces), so that a crafted URI cannot turn the
/// bucket into another host when the bucket goes into a virtual-hosted URL (`<bucket>.s3...`):
/// no `:`, `@`, `/` or empty label can get through, and an IP address is not a name at all.
fn is_bucket_name(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..")
        && !is_ip_address_form(bucket)
}

/// Four dot-separated groups of digits (`192.168.5.4`): the form S3 refuses as a bucket name.
fn is_ip_address_form(name: &str) -> bool {
    let groups: Vec<&str> = name.split('.').collect();
    groups.len() == 4
        && groups
            .iter()
            .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
}

/// A PersistentVolumeClaim name: a DNS subdomain (lowercase alphanumerics, `-`, `.`).
fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Splits what follows `@` in an `hf://` uri into the revision and the file after it. The Hub's own
/// refs (`refs/pr/<n>`, `refs/convert/<name>`) keep their slashes, as `huggingface_hub`'s `hf://`
/// paths do; any other revision is one segment.
fn split_hf_revision(after: &str) -> (&str, Option<&str>) {
    let special = ["refs/pr/", "refs/convert/"].iter().find_map(|prefix| {
        let tail = after.strip_prefix(prefix)?;
        let end = tail.find('/').unwrap_or(tail.len());
        let id = &tail[..end];
        let valid = if *prefix == "refs/pr/" {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
        } else {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        valid.then_some(prefix.len() + end)
    });
    let end = special.unwrap_or_else(|| after.find('/').unwrap_or(after.len()));
    match after[end..].strip_prefix('/') {
        Some(file) => (&after[..end], Some(file)),
        None => (&after[..end], None),
    }
}

/// A path (or glob) inside a Hub repository: `/`-separated segments, none empty or only dots, no
/// `@` or whitespace.
fn is_hf_file(file: &str) -> bool {
    file.split('/').all(|segment| {
        !segment.is_empty()
            && !segment.bytes().all(|b| b == b'.')
            && !segment.contains(|c: char| c == '@' || c.is_whitespace())
    })
}

/// A Hugging Face organisation or repository name.
fn is_hf_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::Pvc { claim, path } => write!(f, "pvc://{claim}/{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Self::HuggingFace {
                repo,
                revision,
                file,
            } => {
                write!(f, "hf://{repo}")?;
                if let Some(revision) = revision {
                    write!(f, "@{}", display_hf_revision(revision))?;
                }
                match file {
                    Some(file) => write!(f, "/{file}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A revision as an `hf://` uri spells it: the Hub's own refs as they are, any other `/` as `%2F`
/// (so that what follows reads as the file).
fn display_hf_revision(revision: &str) -> String {
    match split_hf_revision(revision) {
        (whole, None) if whole == revision => revision.to_string(),
        _ => revision.replace('/', "%2F"),
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
            ModelUri::parse("s3://bucket/k"),
            Ok(ModelUri::S3 { .. })
        ));
        assert_eq!(
            ModelUri::parse("hf://sentence-transformers/all-MiniLM-L6-v2"),
            Ok(ModelUri::HuggingFace {
                repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
                revision: None,
                file: None
            })
        );
        assert_eq!(
            ModelUri::parse("hf://org/name@refs/pr/1"),
            Ok(ModelUri::HuggingFace {
                repo: "org/name".into(),
                revision: Some("refs/pr/1".into()),
                file: None
            })
        );
        for text in [
            "hf://org/name@v1.0",
            "hf://org/name",
            "s3://bucket/prefix/",
            "hf://org/name@refs/pr/1/m.gguf",
            "hf://org/name@feature%2Fx/onnx/*.onnx",
            "hf://org/name/model-Q4_K_M.gguf",
        ] {
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
            "hf://a/b/c@main",
            "hf://a/b@main/",
            "hf://a/b/",
            "hf://a/b//c",
            "hf://a/b/../c",
            "hf://a/b@../c",
            "hf://a/b@./c",
            "hf://a/b/c d",
            "hf://a/b@x@y",
            "ftp://x/y",
            "s3://Bad_Bucket/k",
            "s3://evil.example.com:443/k",
            "s3://ab/k",
            "s3://a..b/k",
            "s3://my..bucket/k",
            "s3://192.168.5.4/k",
            "s3://127.0.0.1/k",
            "s3://a-bucket-name-that-is-much-too-long-for-s3-because-it-has-64-chars/k",
            "s3://-bucket/k",
            "s3://bucket-/k",
            "s3://user@host/k",
            "pvc://Claim/x",
            "pvc://claim.with.dots./x",
        ] {
            assert!(ModelUri::parse(bad).is_err(), "{bad} should be rejected");
            assert!(!admitted(bad), "{bad} should not be admitted by the CRD");
        }
    }

    fn pattern() -> regex::Regex {
        regex::Regex::new(MODEL_URI_PATTERN).expect("the pattern compiles")
    }

    /// What the CRD admits: the pattern, less what the CEL rule built from
    /// [`MODEL_URI_REFUSED_PATTERN`] refuses.
    fn admitted(uri: &str) -> bool {
        let refused = regex::Regex::new(MODEL_URI_REFUSED_PATTERN).expect("the pattern compiles");
        pattern().is_match(uri) && !refused.is_match(uri)
    }

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for good in [
            "abc",
            "my.bucket-1",
            "a--b",
            "a-.b",
            "1.2.3",
            "1.2.3.4.5",
            "192.168.5.x",
            "a.b.c.d",
            "a23456789012345678901234567890123456789012345678901234567890123",
        ] {
            let uri = format!("s3://{good}/k");
            assert!(ModelUri::parse(&uri).is_ok(), "{good} is a bucket name");
            assert!(admitted(&uri), "{good} should be admitted");
        }
        for bad in [
            "a..b",
            "..ab",
            "10.0.0.1",
            "999.999.999.999",
            "ab",
            "Ab-c",
            "a_bc",
            "a:80",
            "a23456789012345678901234567890123456789012345678901234567890123x",
        ] {
            let uri = format!("s3://{bad}/k");
            assert!(ModelUri::parse(&uri).is_err(), "{bad} is not a bucket name");
            assert!(!admitted(&uri), "{bad} should not be admitted");
        }
    }

    /// The contract: what the CRD's pattern admits, the parser reads. Each piece of the grammar
    /// is combined with the others, corners included.
    #[test]
    fn everything_the_pattern_admits_parses() {
        let mut admitted_count = 0;
        let claims = ["m", "models", "team.models-1", "a-b"];
        let paths = [
            "",
            "/",
            "/x",
            "/a/b/",
            "/./x",
            "/...",
            "/v1.0/model.onnx",
            "/a..b",
        ];
        let buckets = ["abc", "my.bucket-1", "a1b", "a..b", "10.0.0.1", "1.2.3"];
        let keys = ["k", "prefix/", "a/b/model.onnx", "../x"];
        let hf = [
            "org/name",
            "sentence-transformers/all-MiniLM-L6-v2",
            "_o/n.x",
        ];
        let revisions = [
            "",
            "@main",
            "@v1.0",
            "@refs/pr/1",
            "@refs/pr/x",
            "@refs/convert/parquet",
            "@0123abc",
            "@a%2Fb",
        ];
        let files = [
            "",
            "/m.gguf",
            "/onnx/model.onnx",
            "/*.onnx",
            "/a/?b*.json",
            "/.x",
        ];
        let mut candidates: Vec<String> = vec![
            "file:///models/minilm".into(),
            "file:///m/model.onnx".into(),
            "file:////double".into(),
        ];
        for c in claims {
            for p in paths {
                candidates.push(format!("pvc://{c}{p}"));
            }
        }
        for b in buckets {
            for k in keys {
                candidates.push(format!("s3://{b}/{k}"));
            }
        }
        for h in hf {
            for r in revisions {
                for f in files {
                    candidates.push(format!("hf://{h}{r}{f}"));
                }
            }
        }
        for uri in &candidates {
            if admitted(uri) {
                admitted_count += 1;
                assert!(
                    ModelUri::parse(uri).is_ok(),
                    "{uri} is admitted but does not parse: {:?}",
                    ModelUri::parse(uri)
                );
            }
        }
        assert!(
            admitted_count >= candidates.len() - 12,
            "the corpus is mostly valid URIs"
        );
        for refused in [
            "pvc://claim/../etc",
            "pvc://claim//abs",
            "file://relative",
            "hf://org/..",
            "hf://org/name/a/../b",
            "hf://org/name@main/",
            "hf://org/name@../x",
            "s3://a..b/k",
            "s3://10.0.0.1/k",
        ] {
            assert!(!admitted(refused), "{refused} should not be admitted");
        }
    }

    #[test]
    fn an_hf_uri_names_a_revision_then_a_file() {
        let hf = |repo: &str, revision: Option<&str>, file: Option<&str>| ModelUri::HuggingFace {
            repo: repo.into(),
            revision: revision.map(Into::into),
            file: file.map(Into::into),
        };
        for (text, expected) in [
            (
                "hf://org/name@v1/sub/model-Q4_K_M.gguf",
                hf("org/name", Some("v1"), Some("sub/model-Q4_K_M.gguf")),
            ),
            (
                "hf://org/name/model-Q4_K_M.gguf",
                hf("org/name", None, Some("model-Q4_K_M.gguf")),
            ),
            (
                "hf://org/name@refs/pr/12/*.onnx",
                hf("org/name", Some("refs/pr/12"), Some("*.onnx")),
            ),
            (
                "hf://org/name@refs/convert/parquet",
                hf("org/name", Some("refs/convert/parquet"), None),
            ),
            // Not one of the Hub's refs: `refs` is the revision, the rest the file.
            (
                "hf://org/name@refs/pr/x",
                hf("org/name", Some("refs"), Some("pr/x")),
            ),
            (
                "hf://org/name@feature%2Fx/m.gguf",
                hf("org/name", Some("feature/x"), Some("m.gguf")),
            ),
        ] {
            assert_eq!(ModelUri::parse(text), Ok(expected.clone()), "{text}");
            assert!(admitted(text), "{text}");
            // What the uri prints parses back to the same thing.
            assert_eq!(ModelUri::parse(&expected.to_string()), Ok(expected));
        }
    }

    #[test]
    fn pvc_maps_under_the_mount_root() {
        let uri = ModelUri::parse("pvc://models/minilm").unwrap();
        assert_eq!(
            uri.local_path(Path::new("/mnt/pvc")).unwrap(),
            PathBuf::from("/mnt/pvc/models/minilm")
        );
        let s3 = ModelUri::parse("s3://bucket/k").unwrap();
        assert!(
            s3.local_path(Path::new("/mnt/pvc"))
                .unwrap_err()
                .to_string()
                .contains("downloaded by `lexserve-sidecar fetch`")
        );
    }
}
