//! `s3://bucket/key` (one object) and `s3://bucket/prefix/` (every object under the prefix, as a
//! directory), with SigV4-signed GetObject and ListObjectsV2 requests.
//!
//! Settings are the AWS SDKs' environment variables, so a Secret written for any AWS tool works:
//! credentials as [`aws_credentials`](super::aws_credentials) reads them (static keys, or a web
//! identity token exchanged with STS), `AWS_REGION` (or `AWS_DEFAULT_REGION`; default `us-east-1`)
//! and optional `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
//! With an endpoint (MinIO, Ceph, moto, ...) requests use path-style addressing
//! (`{endpoint}/{bucket}/{key}`), which every S3-compatible store accepts without wildcard DNS.
//!
//! Signed requests go to exactly one host, the endpoint's (or the bucket's AWS host), whatever the
//! uri holds: the bucket is an S3 bucket name (checked by the uri grammar), the key is
//! percent-encoded into the path and never re-parsed as a URL, and redirects are not followed
//! (the client is built without them), because a redirected request would carry the session token
//! to wherever the `Location` points. S3 answers a request sent to the wrong region with a
//! redirect; that becomes an error naming the setting to fix.
//!
//! What a fetch got is reported so that later pods get the same bytes (see
//! `lexserve_contract::fetch_report::Revision`): an object's `versionId:` when the bucket is
//! versioned (a pinned fetch asks for that version, which an overwrite does not change), else its
//! `etag:` (a pinned fetch sends `If-Match`, and an overwritten object is refused); a prefix's
//! `listing:`, the digest of its keys and ETags (a pinned fetch refuses a changed listing, and
//! each object is fetched `If-Match` its listed ETag).

use std::path::Path;
use std::time::SystemTime;

use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};

use super::aws_credentials::{CredentialSource, parse_endpoint};
use super::resume::{self, Part};
use super::sigv4::{self, EMPTY_SHA256, uri_encode};
use super::{
    Downloaded, RemoteError, env_var, error_body, request_error, safe_relative_path, send,
};
use lexserve_contract::fetch_report::Revision;
use sha2::{Digest, Sha256};

/// Where and as whom to talk to S3.
#[derive(Debug)]
pub struct S3Config {
    pub credentials: CredentialSource,
    pub region: String,
    /// An S3-compatible endpoint; `None` means AWS itself.
    pub endpoint: Option<Url>,
}

impl S3Config {
    /// Reads the settings from the process environment; `uri` is only for the error message.
    pub fn from_env(uri: &str) -> Result<Self, RemoteError> {
        Self::from_lookup(uri, env_var)
    }

    /// Reads the settings through `lookup` (the environment in production, a map in tests).
    pub fn from_lookup(
        uri: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, RemoteError> {
        let region = lookup("AWS_REGION")
            .or_else(|| lookup("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        // The region becomes part of a host name (`s3.<region>.amazonaws.com`).
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(RemoteError::InvalidSetting {
                var: "AWS_REGION",
                value: region,
                reason: "a region is lowercase letters, digits and '-' (eu-west-1)".into(),
            });
        }
        let credentials = CredentialSource::from_lookup(uri, &lookup, &region)?;
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|var| lookup(var).map(|value| (var, value)))
            .map(|(var, value)| parse_endpoint(var, &value))
            .transpose()?;
        Ok(Self {
            credentials,
            region,
            endpoint,
        })
    }

    /// The URL of `path_in_bucket` (already encoded, starting with `/` or empty) in `bucket`, plus
    /// an encoded query. Virtual-hosted style on AWS, except for bucket names with dots (they do not
    /// match the `*.s3` TLS certificate); path style on a custom endpoint.
    ///
    /// The host is fixed before the bucket's path and the key are added, and they are only ever
    /// set as a path: nothing in them is read as an authority, a query or a fragment.
    fn url(&self, bucket: &str, path_in_bucket: &str, query: &str) -> Result<Url, RemoteError> {
        let invalid_bucket = || RemoteError::InvalidSetting {
            var: "AWS_REGION",
            value: self.region.clone(),
            reason: format!("it makes no valid S3 host for the bucket {bucket:?}"),
        };
        let (mut url, path) = match &self.endpoint {
            Some(endpoint) => (
                endpoint.clone(),
                format!(
                    "{}/{}{path_in_bucket}",
                    endpoint.path().trim_end_matches('/'),
                    uri_encode(bucket, false)
                ),
            ),
            None if bucket.contains('.') => (
                Url::parse(&format!("https://s3.{}.amazonaws.com", self.region))
                    .map_err(|_| invalid_bucket())?,
                format!("/{}{path_in_bucket}", uri_encode(bucket, false)),
            ),
            None => {
                let host = format!("{bucket}.s3.{}.amazonaws.com", self.region);
                let url = Url::parse(&format!("https://{host}")).map_err(|_| invalid_bucket())?;
                // The bucket name rules make this hold; checked anyway, as the credentials go there.
                if url.host_str() != Some(host.as_str()) {
                    return Err(invalid_bucket());
                }
                (url, path_in_bucket.to_string())
            }
        };
        url.set_path(if path.is_empty() { "/" } else { &path });
        url.set_query((!query.is_empty()).then_some(query));
        url.set_fragment(None);
        Ok(url)
    }

    /// The object's URL; of one version of it when `version_id` is set.
    fn object_url(
        &self,
        uri: &str,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Url, RemoteError> {
        // A URL parser resolves `.` and `..` segments (`%2e` too), which would fetch a different
        // key, or in path style another bucket, than the one named: refuse them rather than
        // download the wrong object.
        if key.split('/').any(|s| s == "." || s == "..") {
            return Err(RemoteError::UnsafeName {
                uri: uri.to_string(),
                name: key.to_string(),
            });
        }
        let query = version_id
            .map(|id| format!("versionId={}", uri_encode(id, false)))
            .unwrap_or_default();
        self.url(bucket, &format!("/{}", uri_encode(key, true)), &query)
    }

    /// A signed GET of `url` with `extra` headers (signed too).
    async fn get(
        &self,
        client: &reqwest::Client,
        uri: &str,
        url: Url,
        extra: &[(String, String)],
    ) -> Result<reqwest::Response, RemoteError> {
        let credentials = self.credentials.current(client, uri).await?;
        let headers = sigv4::sign(
            "GET",
            &url,
            extra,
            EMPTY_SHA256,
            &credentials,
            &self.region,
            SystemTime::now(),
        );
        let mut request = client.get(url.clone());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let hint = self.credentials.denied_hint();
        send(request, &url, |response| status_error(uri, hint, response)).await
    }
}

/// The `<Code>` and `<Message>` of an S3 (or STS) error body, as ` (Code: Message)`.
pub(crate) fn s3_error_detail(body: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return String::new();
    };
    let field = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_string()
    };
    let (code, message) = (field("Code"), field("Message"));
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" ({code})"),
        (true, false) => format!(" ({message})"),
        (false, false) => format!(" ({code}: {message})"),
    }
}

async fn status_error(uri: &str, hint: &'static str, response: reqwest::Response) -> RemoteError {
    let status = response.status();
    let url = response.url().to_string();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bucket_region = response
        .headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let detail = s3_error_detail(&error_body(response).await);
    match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => RemoteError::AccessDenied {
            uri: uri.to_string(),
            hint,
            detail,
        },
        StatusCode::NOT_FOUND => RemoteError::NotFound {
            uri: uri.to_string(),
            detail,
            hint: if uri.ends_with('/') {
                ""
            } else {
                "; to fetch every object under a prefix, end the uri with '/'"
            },
        },
        _ if status.is_redirection() => RemoteError::Status {
            uri: uri.to_string(),
            url,
            status: status.as_u16(),
            detail: redirect_detail(&detail, location.as_deref(), bucket_region.as_deref()),
        },
        StatusCode::PRECONDITION_FAILED => RemoteError::Status {
            uri: uri.to_string(),
            url,
            status: status.as_u16(),
            detail: format!(
                "{detail}: the object changed while it was being downloaded (its ETag no longer matches); fetch again"
            ),
        },
        _ => RemoteError::Status {
            uri: uri.to_string(),
            url,
            status: status.as_u16(),
            detail,
        },
    }
}

/// What a redirect means for a signed request, and what to set so that there is none.
fn redirect_detail(detail: &str, location: Option<&str>, bucket_region: Option<&str>) -> String {
    let to = location.map_or(String::new(), |l| format!(" to {l}"));
    let region = bucket_region.map_or_else(
        || "AWS_REGION to the bucket's region".to_string(),
        |r| format!("AWS_REGION={r} (the bucket's region)"),
    );
    format!(
        "{detail}: S3 redirected the request{to}, and signed requests are not followed to another address (they carry the credentials); set {region}, or AWS_ENDPOINT_URL_S3 to the endpoint that serves the bucket"
    )
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, Default, PartialEq)]
struct ListPage {
    /// (key, size, ETag) of each object.
    objects: Vec<(String, u64, Option<String>)>,
    next_token: Option<String>,
}

fn parse_list_page(body: &str) -> Result<ListPage, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| format!("invalid XML: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("ListBucketResult") {
        return Err(format!(
            "expected a ListBucketResult, got <{}>",
            root.tag_name().name()
        ));
    }
    let child_text = |node: roxmltree::Node<'_, '_>, name: &str| {
        node.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    let mut page = ListPage::default();
    for contents in root.children().filter(|n| n.has_tag_name("Contents")) {
        let key = child_text(contents, "Key").ok_or("a Contents entry without a Key")?;
        let size = child_text(contents, "Size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        page.objects.push((key, size, child_text(contents, "ETag")));
    }
    let truncated = child_text(root, "IsTruncated").is_some_and(|t| t.trim() == "true");
    if truncated {
        let token = child_text(root, "NextContinuationToken")
            .ok_or("IsTruncated without a NextContinuationToken")?;
        page.next_token = Some(token);
    }
    Ok(page)
}

/// Every object under `prefix`, following continuation tokens.
async fn list(
    client: &reqwest::Client,
    config: &S3Config,
    uri: &str,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64, Option<String>)>, RemoteError> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = format!("list-type=2&prefix={}", uri_encode(prefix, false));
        if let Some(token) = &token {
            query = format!("continuation-token={}&{query}", uri_encode(token, false));
        }
        let url = config.url(bucket, "", &query)?;
        let response = config.get(client, uri, url.clone(), &[]).await?;
        let body = response
            .text()
            .await
            .map_err(|e| request_error(url.as_str(), &e))?;
        let page = parse_list_page(&body).map_err(|reason| RemoteError::BadResponse {
            uri: uri.to_string(),
            url: url.to_string(),
            reason,
        })?;
        objects.extend(page.objects);
        match page.next_token {
            Some(next) if Some(&next) != token.as_ref() => token = Some(next),
            Some(_) => {
                return Err(RemoteError::BadResponse {
                    uri: uri.to_string(),
                    url: url.to_string(),
                    reason: "the listing repeats the same continuation token".into(),
                });
            }
            None => return Ok(objects),
        }
    }
}

/// What a GET of one object must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjectPin<'a> {
    /// Whatever the object is now.
    Current,
    /// This version of it.
    Version(&'a str),
    /// The object only while its ETag is this; `pinned` says whether an earlier fetch chose it
    /// (then a change is reported as such) or this fetch's own listing did.
    IfMatch { etag: &'a str, pinned: bool },
}

/// What a GET of one object got: its size, ETag and version.
struct GotObject {
    etag: Option<String>,
    version_id: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn get_object(
    client: &reqwest::Client,
    config: &S3Config,
    uri: &str,
    bucket: &str,
    key: &str,
    pin: ObjectPin<'_>,
    path: &Path,
) -> Result<GotObject, RemoteError> {
    let version = match pin {
        ObjectPin::Version(id) => Some(id),
        _ => None,
    };
    let url = config.object_url(uri, bucket, key, version)?;
    let first: std::sync::Mutex<Option<GotObject>> = std::sync::Mutex::new(None);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let result = resume::download(path, url.as_str(), |part: Part| {
        let url = url.clone();
        let first = &first;
        async move {
            let mut headers = part.headers();
            if let (Part::Whole, ObjectPin::IfMatch { etag, .. }) = (&part, pin) {
                headers.push(("if-match".into(), etag.to_string()));
            }
            let response = config.get(client, uri, url, &headers).await?;
            if part == Part::Whole
                && let Ok(mut first) = first.lock()
            {
                *first = Some(GotObject {
                    etag: header(&response, "etag"),
                    version_id: header(&response, "x-amz-version-id"),
                });
            }
            Ok(response)
        }
    })
    .await;
    let bytes = match (result, pin) {
        (
            Err(RemoteError::Status { status: 412, .. }),
            ObjectPin::IfMatch { etag, pinned: true },
        ) => {
            return Err(RemoteError::PinnedChanged {
                uri: uri.to_string(),
                revision: Revision::ETag(etag.to_string()).to_string(),
                detail: format!(
                    " (s3://{bucket}/{key} was overwritten: its ETag is no longer {etag})"
                ),
            });
        }
        (result, _) => result?,
    };
    tracing::info!(bucket, key, bytes, "downloaded");
    let got = first.into_inner().ok().flatten();
    Ok(got.unwrap_or(GotObject {
        etag: None,
        version_id: None,
    }))
}

/// Reads `--revision` for an S3 uri: an object takes `versionId:` or `etag:`, a prefix `listing:`.
pub fn parse_pin(uri: &str, key: &str, text: &str) -> Result<Revision, RemoteError> {
    let bad = |reason| RemoteError::BadRevision {
        uri: uri.to_string(),
        revision: text.to_string(),
        reason,
    };
    match (Revision::parse(text), key.ends_with('/')) {
        (Some(revision @ Revision::Listing(_)), true) => Ok(revision),
        (Some(revision @ (Revision::VersionId(_) | Revision::ETag(_))), false) => Ok(revision),
        (_, true) => Err(bad("an s3:// prefix is pinned by listing:<digest>")),
        (_, false) => Err(bad(
            "an s3:// object is pinned by versionId:<id> or etag:<etag>",
        )),
    }
}

/// The digest that stands for a prefix's content: its objects' relative keys and ETags, sorted by
/// key. An overwritten, added or removed object changes it.
pub fn listing_digest(objects: &[(&str, &str)]) -> String {
    let mut sorted = objects.to_vec();
    sorted.sort();
    let mut hasher = Sha256::new();
    for (key, etag) in sorted {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(etag.as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Downloads `s3://bucket/key` into `staging`: one object as `staging/<last segment of the key>`
/// (reporting that name), or, when the key ends with `/`, every object under it at its path relative
/// to the prefix (the model is the directory). Zero-byte keys ending in `/` are the "folders"
/// consoles create and are skipped. `pinned` is what an earlier fetch reported.
pub async fn download(
    client: &reqwest::Client,
    config: &S3Config,
    bucket: &str,
    key: &str,
    pinned: Option<&Revision>,
    staging: &Path,
) -> Result<Downloaded, RemoteError> {
    let uri = format!("s3://{bucket}/{key}");
    if key.ends_with('/') {
        let objects = list(client, config, &uri, bucket, key).await?;
        let mut wanted = Vec::new();
        for (object_key, size, etag) in &objects {
            let relative = object_key.strip_prefix(key).unwrap_or(object_key);
            if relative.is_empty() || (relative.ends_with('/') && *size == 0) {
                continue;
            }
            let path = safe_relative_path(&uri, relative)?;
            wanted.push((object_key, relative, etag.as_deref().unwrap_or(""), path));
        }
        if wanted.is_empty() {
            return Err(RemoteError::Empty { uri });
        }
        let digest = listing_digest(
            &wanted
                .iter()
                .map(|(_, relative, etag, _)| (*relative, *etag))
                .collect::<Vec<_>>(),
        );
        if let Some(Revision::Listing(expected)) = pinned
            && *expected != digest
        {
            return Err(RemoteError::PinnedChanged {
                uri,
                revision: Revision::Listing(expected.clone()).to_string(),
                detail: " (an object under the prefix was added, removed or overwritten)".into(),
            });
        }
        for (object_key, _, etag, path) in &wanted {
            // The object as listed: one overwritten since is refused, not mixed in.
            let pin = if etag.is_empty() {
                ObjectPin::Current
            } else {
                ObjectPin::IfMatch {
                    etag,
                    pinned: pinned.is_some(),
                }
            };
            get_object(
                client,
                config,
                &uri,
                bucket,
                object_key,
                pin,
                &staging.join(path),
            )
            .await?;
        }
        Ok(Downloaded {
            file: None,
            revision: Some(Revision::Listing(digest).to_string()),
        })
    } else {
        let name = key.rsplit('/').next().unwrap_or(key);
        let name = safe_relative_path(&uri, name)?;
        let pin = match pinned {
            Some(Revision::VersionId(id)) => ObjectPin::Version(id),
            Some(Revision::ETag(etag)) => ObjectPin::IfMatch { etag, pinned: true },
            _ => ObjectPin::Current,
        };
        let got = get_object(client, config, &uri, bucket, key, pin, &staging.join(&name)).await?;
        // A version names the bytes for good; an ETag only lets a later fetch notice a change.
        let revision = match (got.version_id, got.etag) {
            (Some(id), _) if id != "null" => Some(Revision::VersionId(id)),
            (_, Some(etag)) => Some(Revision::ETag(etag)),
            _ => None,
        };
        Ok(Downloaded {
            file: Some(name),
            revision: revision.map(|r| r.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lookup_in;
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<S3Config, RemoteError> {
        S3Config::from_lookup("s3://b/k", lookup_in(vars))
    }

    const KEYS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "s")];

    #[test]
    fn missing_credentials_name_the_variables() {
        let message = config(&[]).unwrap_err().to_string();
        assert!(
            message.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{message}"
        );
        let message = config(&[("AWS_ACCESS_KEY_ID", "id")])
            .unwrap_err()
            .to_string();
        assert!(message.contains("set AWS_SECRET_ACCESS_KEY ("), "{message}");
    }

    #[test]
    fn addressing_style_follows_the_endpoint() {
        let aws = config(&KEYS).unwrap();
        assert_eq!(aws.region, "us-east-1");
        assert_eq!(
            aws.object_url("u", "models", "minilm/model 1.onnx", None)
                .unwrap()
                .as_str(),
            "https://models.s3.us-east-1.amazonaws.com/minilm/model%201.onnx"
        );
        assert_eq!(
            aws.object_url("u", "my.models", "m.onnx", None)
                .unwrap()
                .as_str(),
            "https://s3.us-east-1.amazonaws.com/my.models/m.onnx"
        );
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"));
        vars.push(("AWS_REGION", "eu-west-1"));
        let minio = config(&vars).unwrap();
        assert_eq!(minio.region, "eu-west-1");
        assert_eq!(
            minio
                .object_url("u", "models", "a/b.onnx", None)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/models/a/b.onnx"
        );
        assert_eq!(
            minio
                .url("models", "", "list-type=2&prefix=a%2F")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/models?list-type=2&prefix=a%2F"
        );
        assert!(minio.object_url("u", "models", "a/../b", None).is_err());
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "minio:9000"));
        assert!(
            config(&vars)
                .unwrap_err()
                .to_string()
                .contains("AWS_ENDPOINT_URL")
        );
    }

    /// Whatever the key holds, the request goes to the endpoint's host (or the bucket's AWS host)
    /// with the query the code wrote: the key is a path, never a URL.
    #[test]
    fn crafted_keys_change_neither_the_host_nor_the_query() {
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/prefix/"));
        let minio = config(&vars).unwrap();
        let aws = config(&KEYS).unwrap();
        for key in [
            "a?x-id=1",
            "a#frag",
            "@evil.example.com/x",
            "a/%2e%2e/%2E%2E/b",
            "..a/b..",
            "x\\..\\y",
            "//evil.example.com/x",
            "a b/c+d=e&f",
            "http://evil.example.com/",
            "é/\u{0}",
        ] {
            for (config, host) in [
                (&minio, "127.0.0.1"),
                (&aws, "models.s3.us-east-1.amazonaws.com"),
            ] {
                let url = config.object_url("u", "models", key, None).unwrap();
                assert_eq!(url.host_str(), Some(host), "{key:?} -> {url}");
                assert_eq!(url.query(), None, "{key:?} -> {url}");
                assert_eq!(url.fragment(), None, "{key:?} -> {url}");
                // The path holds the key, encoded: decoded, it is the key again.
                let path = percent_encoding::percent_decode_str(url.path())
                    .decode_utf8()
                    .unwrap();
                assert!(path.ends_with(&format!("/{key}")), "{key:?} -> {url}");
            }
        }
        let url = minio.object_url("u", "models", "a?b", None).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/prefix/models/a%3Fb");
        let url = minio.url("models", "", "list-type=2&prefix=a%23b").unwrap();
        assert_eq!(url.query(), Some("list-type=2&prefix=a%23b"));
        for key in ["../other-bucket/x", "a/./b", "a/.."] {
            assert!(minio.object_url("u", "models", key, None).is_err(), "{key}");
        }
        for region in ["evil.example.com/", "us-east-1@x", "US-EAST-1", "a b"] {
            let mut vars = KEYS.to_vec();
            vars.push(("AWS_REGION", region));
            let message = config(&vars).unwrap_err().to_string();
            assert!(message.contains("invalid AWS_REGION"), "{message}");
        }
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://user:pw@127.0.0.1:9000"));
        assert!(config(&vars).is_err());
    }

    #[test]
    fn a_redirect_names_what_to_set() {
        let detail = redirect_detail(
            " (PermanentRedirect)",
            Some("https://models.s3.eu-west-1.amazonaws.com/m"),
            Some("eu-west-1"),
        );
        assert!(detail.contains("set AWS_REGION=eu-west-1"), "{detail}");
        assert!(detail.contains("AWS_ENDPOINT_URL_S3"), "{detail}");
        assert!(
            detail.contains("to https://models.s3.eu-west-1.amazonaws.com/m"),
            "{detail}"
        );
        let detail = redirect_detail("", None, None);
        assert!(
            detail.contains("set AWS_REGION to the bucket's region"),
            "{detail}"
        );
    }

    #[test]
    fn pins_say_which_bytes() {
        let pin = |key, text| parse_pin("s3://b/k", key, text);
        assert_eq!(
            pin("m.onnx", "versionId:v1").unwrap(),
            Revision::VersionId("v1".into())
        );
        assert_eq!(
            pin("m.onnx", "etag:\"e\"").unwrap(),
            Revision::ETag("\"e\"".into())
        );
        assert_eq!(
            pin("p/", "listing:ab").unwrap(),
            Revision::Listing("ab".into())
        );
        for (key, text) in [
            ("m.onnx", "listing:ab"),
            ("p/", "etag:x"),
            ("m.onnx", "abc"),
            ("m.onnx", ""),
        ] {
            assert!(pin(key, text).is_err(), "{key} {text}");
        }
        // The listing digest changes with any key or ETag, not with the listing's order.
        let base = listing_digest(&[("a", "\"1\""), ("b/c", "\"2\"")]);
        assert_eq!(base, listing_digest(&[("b/c", "\"2\""), ("a", "\"1\"")]));
        for changed in [
            listing_digest(&[("a", "\"1\""), ("b/c", "\"3\"")]),
            listing_digest(&[("a", "\"1\"")]),
            listing_digest(&[("a", "\"1\""), ("b/c", "\"2\""), ("d", "\"4\"")]),
        ] {
            assert_ne!(base, changed);
        }
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn parses_list_objects_v2() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>models</Name><Prefix>m/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
  <IsTruncated>true</IsTruncated><NextContinuationToken>t&amp;1</NextContinuationToken>
  <Contents><Key>m/a &amp; b.txt</Key><Size>3</Size><ETag>&quot;e1&quot;</ETag></Contents>
  <Contents><Key>m/sub/</Key><Size>0</Size></Contents>
</ListBucketResult>"#;
        assert_eq!(
            parse_list_page(body).unwrap(),
            ListPage {
                objects: vec![
                    ("m/a & b.txt".into(), 3, Some("\"e1\"".into())),
                    ("m/sub/".into(), 0, None)
                ],
                next_token: Some("t&1".into()),
            }
        );
        assert!(parse_list_page("<Error><Code>X</Code></Error>").is_err());
        assert_eq!(
            s3_error_detail(
                "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            ),
            " (AccessDenied: Access Denied)"
        );
    }
}
