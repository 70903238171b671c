//! What the `fetch` init container reports on success, in its termination message: the digest it
//! verified and, for a remote source, the revision it actually got. The operator reads it back into
//! `status.model` and hands the revision to every later pod's fetch (`--revision`), so that all
//! replicas serve the same bytes.
//!
//! The message is words separated by spaces: `sha256:<hex>` first (older operators look for that
//! word alone), then `revision:<revision>` when there is one. A revision is opaque to the operator;
//! its form belongs to the source (see [`Revision`]).

use std::fmt;

use crate::names::{TERMINATION_DIGEST_PREFIX, TERMINATION_REVISION_PREFIX};

/// The longest revision a report carries: far more than any of the forms below, and far less than
/// the 4096 bytes Kubernetes keeps of a termination message.
pub const MAX_REVISION_LENGTH: usize = 1024;

/// What a source resolved to. Written and read as text: `<commit>` for `hf://` (the Hub's 40-hex
/// commit id), and for `s3://` one of `versionId:<id>` (a versioned bucket: the exact object
/// version), `etag:<etag>` (an unversioned bucket: the object as it was, refused if it changed) or
/// `listing:<sha256 hex>` (a prefix: the digest of its keys and ETags, refused if any changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revision {
    /// A Hub commit.
    Commit(String),
    VersionId(String),
    ETag(String),
    Listing(String),
}

const VERSION_ID: &str = "versionId:";
const ETAG: &str = "etag:";
const LISTING: &str = "listing:";

impl Revision {
    /// Reads a revision back from its text, as the operator passes it in `--revision`. `None` for
    /// text that no report could hold (empty, whitespace, too long).
    pub fn parse(text: &str) -> Option<Self> {
        if !is_revision_text(text) {
            return None;
        }
        let tagged = [
            (VERSION_ID, Self::VersionId as fn(String) -> Self),
            (ETAG, Self::ETag),
            (LISTING, Self::Listing),
        ];
        Some(
            tagged
                .iter()
                .find_map(|(prefix, make)| {
                    let value = text.strip_prefix(prefix)?;
                    (!value.is_empty()).then(|| make(value.to_string()))
                })
                .unwrap_or_else(|| Self::Commit(text.to_string())),
        )
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Commit(commit) => f.write_str(commit),
            Self::VersionId(id) => write!(f, "{VERSION_ID}{id}"),
            Self::ETag(etag) => write!(f, "{ETAG}{etag}"),
            Self::Listing(digest) => write!(f, "{LISTING}{digest}"),
        }
    }
}

/// Text a report can carry as one word.
fn is_revision_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_REVISION_LENGTH
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A successful fetch's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The lowercase hex SHA-256 of what was verified.
    pub sha256: String,
    /// What a remote source resolved to; `None` for a local one.
    pub revision: Option<String>,
}

impl FetchReport {
    /// The termination message.
    pub fn message(&self) -> String {
        let mut message = format!("{TERMINATION_DIGEST_PREFIX}{}", self.sha256);
        if let Some(revision) = self.revision.as_deref().filter(|r| is_revision_text(r)) {
            message.push(' ');
            message.push_str(TERMINATION_REVISION_PREFIX);
            message.push_str(revision);
        }
        message
    }

    /// Reads a termination message: `None` unless it holds a `sha256:<64 hex>` word.
    pub fn parse(message: &str) -> Option<Self> {
        let mut words = message.split_whitespace();
        let sha256 = words.clone().find_map(|word| {
            let hex = word.strip_prefix(TERMINATION_DIGEST_PREFIX)?;
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| hex.to_ascii_lowercase())
        })?;
        let revision = words
            .find_map(|word| word.strip_prefix(TERMINATION_REVISION_PREFIX))
            .filter(|r| is_revision_text(r))
            .map(str::to_string);
        Some(Self { sha256, revision })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_what_was_written() {
        let sha256 = "ab".repeat(32);
        for revision in [
            None,
            Some("0123456789abcdef0123456789abcdef01234567"),
            Some("versionId:3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
            Some("etag:\"9b2cf535f27731c974343645a3985328\""),
        ] {
            let report = FetchReport {
                sha256: sha256.clone(),
                revision: revision.map(str::to_string),
            };
            assert_eq!(FetchReport::parse(&report.message()), Some(report.clone()));
        }
        // The digest alone is what older fetches wrote.
        assert_eq!(
            FetchReport::parse(&format!("sha256:{}", sha256.to_uppercase())),
            Some(FetchReport {
                sha256: sha256.clone(),
                revision: None
            })
        );
        for not_a_report in ["", "sha256:abc", "revision:x", "not found: hf://a/b"] {
            assert_eq!(FetchReport::parse(not_a_report), None, "{not_a_report}");
        }
        // A revision that could not be read back as one word is left out, not written broken.
        let odd = FetchReport {
            sha256: sha256.clone(),
            revision: Some("a b".into()),
        };
        assert_eq!(odd.message(), format!("sha256:{sha256}"));
    }

    #[test]
    fn revisions_say_what_they_pin() {
        for (text, revision) in [
            ("0123abc", Revision::Commit("0123abc".into())),
            ("versionId:v1", Revision::VersionId("v1".into())),
            ("etag:\"e\"", Revision::ETag("\"e\"".into())),
            ("listing:ff", Revision::Listing("ff".into())),
            // A tag without a value is not that kind of revision.
            ("etag:", Revision::Commit("etag:".into())),
        ] {
            assert_eq!(Revision::parse(text), Some(revision.clone()), "{text}");
            assert_eq!(revision.to_string(), text);
        }
        for bad in ["", "a b", "a\nb", &"x".repeat(MAX_REVISION_LENGTH + 1)] {
            assert_eq!(Revision::parse(bad), None, "{bad:?}");
        }
    }
}
