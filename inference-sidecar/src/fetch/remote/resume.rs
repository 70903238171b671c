//! A download that survives a dropped connection: when the body stops early, the rest is asked
//! for with `Range: bytes=<received>-`, guarded by `If-Match: <ETag>` so that bytes of a newer
//! version of the object are never appended to an older one (the server answers 412 instead).
//! A bounded number of attempts, with a growing pause between them; what was already on disk is
//! kept, so a model of many gigabytes is not downloaded again from the start.
//!
//! The caller still verifies the digest of the whole file; this only decides what to ask for.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{RemoteError, io_err, request_error};

/// How many times an interrupted body is resumed before the download fails.
pub const MAX_RESUMES: u32 = 5;

/// The pause before resume number `attempt` (1-based): 250 ms, doubling, at most 8 s. A dropped
/// connection is usually a restarted proxy or a load balancer's idle cut: worth a short wait,
/// not a long one.
pub fn resume_delay(attempt: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(8_000))
}

/// The first byte a `206 Partial Content` answer starts at (`Content-Range: bytes 100-199/200`),
/// and the object's total length when the server knows it.
pub fn content_range_start(value: &str) -> Option<(u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (start, _end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

/// The request to make: the whole object, or the rest of it from `offset` if it still is `etag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Whole,
    From { offset: u64, etag: String },
}

impl Part {
    /// The headers that ask for this part.
    pub fn headers(&self) -> Vec<(String, String)> {
        match self {
            Self::Whole => Vec::new(),
            Self::From { offset, etag } => vec![
                ("range".into(), format!("bytes={offset}-")),
                ("if-match".into(), etag.clone()),
            ],
        }
    }
}

/// Downloads into `path` with `get`, which sends the request for a [`Part`] and turns a refusal
/// (any status but 200/206, 412 included) into the source's own error. Returns the bytes written.
pub async fn download<F, Fut>(path: &Path, url: &str, mut get: F) -> Result<u64, RemoteError>
where
    F: FnMut(Part) -> Fut,
    Fut: Future<Output = Result<reqwest::Response, RemoteError>>,
{
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(parent))?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(io_err(path))?;
    let mut part = Part::Whole;
    let mut etag: Option<String> = None;
    let mut total: Option<u64> = None;
    let mut written = 0u64;
    let mut resumes = 0u32;
    loop {
        let interrupted = match get(part.clone()).await {
            // No answer at all to a resumed request (refused, reset): another attempt. The first
            // request's failure is the caller's (a wrong endpoint is not worth retrying).
            Err(error @ RemoteError::Request { .. }) if part != Part::Whole => error,
            Err(error) => return Err(error),
            Ok(mut response) => {
                if part == Part::Whole {
                    etag = response
                        .headers()
                        .get(ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    total = response.content_length();
                } else if response.status() == StatusCode::PARTIAL_CONTENT {
                    let range = response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok());
                    match range.and_then(content_range_start) {
                        Some((start, whole)) if start == written => total = whole.or(total),
                        _ => {
                            return Err(RemoteError::Request {
                                url: url.to_string(),
                                reason: format!(
                                    "asked to resume at byte {written}, the server answered the range {range:?}"
                                ),
                            });
                        }
                    }
                } else {
                    // The server ignored the range: the whole object again, from the start.
                    file.set_len(0).await.map_err(io_err(path))?;
                    file.rewind().await.map_err(io_err(path))?;
                    written = 0;
                    total = response.content_length();
                }
                match append(&mut response, &mut file, path, &mut written).await? {
                    Some(error) => request_error(url, &error),
                    None => match total {
                        Some(total) if written != total => RemoteError::Truncated {
                            url: url.to_string(),
                            expected: total,
                            got: written,
                        },
                        _ => break,
                    },
                }
            }
        };
        // Without an ETag nothing guards resumed bytes against a changed object.
        let Some(etag) = etag.clone() else {
            return Err(interrupted);
        };
        if resumes == MAX_RESUMES {
            return Err(RemoteError::Request {
                url: url.to_string(),
                reason: format!(
                    "gave up after {MAX_RESUMES} resumed attempts at byte {written}: {interrupted}"
                ),
            });
        }
        resumes += 1;
        tracing::warn!(url, written, attempt = resumes, error = %interrupted, "download interrupted; resuming");
        tokio::time::sleep(resume_delay(resumes)).await;
        part = Part::From {
            offset: written,
            etag,
        };
    }
    file.flush().await.map_err(io_err(path))?;
    file.sync_all().await.map_err(io_err(path))?;
    Ok(written)
}

/// Appends the body to `file`, counting into `written`. A body that stops with an error is
/// `Ok(Some(error))`: what arrived is on disk and the caller may resume after it.
async fn append(
    response: &mut reqwest::Response,
    file: &mut tokio::fs::File,
    path: &Path,
    written: &mut u64,
) -> Result<Option<reqwest::Error>, RemoteError> {
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                file.write_all(&chunk).await.map_err(io_err(path))?;
                *written += chunk.len() as u64;
            }
            Ok(None) => return Ok(None),
            Err(error) => return Ok(Some(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_ask_for_the_rest_if_it_is_the_same_object() {
        assert_eq!(Part::Whole.headers(), vec![]);
        assert_eq!(
            Part::From {
                offset: 1024,
                etag: "\"abc\"".into()
            }
            .headers(),
            vec![
                ("range".to_string(), "bytes=1024-".to_string()),
                ("if-match".to_string(), "\"abc\"".to_string())
            ]
        );
    }

    #[test]
    fn reads_content_range() {
        assert_eq!(
            content_range_start("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(content_range_start("bytes 0-0/*"), Some((0, None)));
        for bad in [
            "",
            "bytes */200",
            "items 1-2/3",
            "bytes x-1/2",
            "bytes 1-2/y",
        ] {
            assert_eq!(content_range_start(bad), None, "{bad}");
        }
    }

    #[test]
    fn pauses_grow_and_are_bounded() {
        let delays: Vec<u64> = (1..=8)
            .map(|a| resume_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(resume_delay(u32::MAX), Duration::from_secs(8));
    }
}
