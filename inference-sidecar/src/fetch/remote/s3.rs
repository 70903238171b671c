//! `s3://bucket/key` (one object) and `s3://bucket/prefix/` (every object under the prefix, as a
//! directory), with SigV4-signed GetObject and ListObjectsV2 requests.
//!
//! Settings are the AWS SDKs' environment variables, so a Secret written for any AWS tool works:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`; default `us-east-1`) and optional `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
//! With an endpoint (MinIO, Ceph, moto, ...) requests use path-style addressing
//! (`{endpoint}/{bucket}/{key}`), which every S3-compatible store accepts without wildcard DNS.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use reqwest::{StatusCode, Url};

use super::sigv4::{self, Credentials, EMPTY_SHA256, uri_encode};
use super::{
    RemoteError, env_var, error_body, request_error, safe_relative_path, send, write_body,
};

/// Where and as whom to talk to S3.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub credentials: Credentials,
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
        let access_key_id = lookup("AWS_ACCESS_KEY_ID");
        let secret_access_key = lookup("AWS_SECRET_ACCESS_KEY");
        let (access_key_id, secret_access_key) = match (access_key_id, secret_access_key) {
            (Some(id), Some(secret)) => (id, secret),
            (id, secret) => {
                let missing: Vec<&str> = [
                    id.is_none().then_some("AWS_ACCESS_KEY_ID"),
                    secret.is_none().then_some("AWS_SECRET_ACCESS_KEY"),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(RemoteError::MissingCredentials {
                    uri: uri.to_string(),
                    missing: missing.join(" and "),
                });
            }
        };
        let region = lookup("AWS_REGION")
            .or_else(|| lookup("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = [("AWS_ENDPOINT_URL_S3"), ("AWS_ENDPOINT_URL")]
            .into_iter()
            .find_map(|var| lookup(var).map(|value| (var, value)))
            .map(|(var, value)| {
                let invalid = |reason: String| RemoteError::InvalidSetting {
                    var,
                    value: value.clone(),
                    reason,
                };
                let url = Url::parse(value.trim()).map_err(|e| invalid(e.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid("expected http://host[:port] or https://...".into()));
                }
                if url.query().is_some() {
                    return Err(invalid("an endpoint cannot have a query".into()));
                }
                Ok(url)
            })
            .transpose()?;
        Ok(Self {
            credentials: Credentials {
                access_key_id,
                secret_access_key,
                session_token: lookup("AWS_SESSION_TOKEN"),
            },
            region,
            endpoint,
        })
    }

    /// The URL of `path_in_bucket` (already encoded, starting with `/` or empty) in `bucket`, plus
    /// an encoded query. Virtual-hosted style on AWS, except for bucket names with dots (they do not
    /// match the `*.s3` TLS certificate); path style on a custom endpoint.
    fn url(&self, bucket: &str, path_in_bucket: &str, query: &str) -> Result<Url, RemoteError> {
        let bucket_enc = uri_encode(bucket, false);
        let mut text = match &self.endpoint {
            Some(endpoint) => format!(
                "{}/{bucket_enc}{path_in_bucket}",
                endpoint.as_str().trim_end_matches('/')
            ),
            None if bucket.contains('.') => format!(
                "https://s3.{}.amazonaws.com/{bucket_enc}{path_in_bucket}",
                self.region
            ),
            None => format!(
                "https://{bucket}.s3.{}.amazonaws.com{}",
                self.region,
                if path_in_bucket.is_empty() {
                    "/"
                } else {
                    path_in_bucket
                }
            ),
        };
        if !query.is_empty() {
            text.push('?');
            text.push_str(query);
        }
        Url::parse(&text).map_err(|e| RemoteError::InvalidSetting {
            var: "AWS_REGION",
            value: self.region.clone(),
            reason: format!("it makes an invalid S3 url {text:?}: {e}"),
        })
    }

    fn object_url(&self, uri: &str, bucket: &str, key: &str) -> Result<Url, RemoteError> {
        // A URL parser resolves `.` and `..` segments, which would fetch a different key than the
        // one named: refuse them rather than download the wrong object.
        if key.split('/').any(|s| s == "." || s == "..") {
            return Err(RemoteError::UnsafeName {
                uri: uri.to_string(),
                name: key.to_string(),
            });
        }
        self.url(bucket, &format!("/{}", uri_encode(key, true)), "")
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        uri: &str,
        url: Url,
    ) -> Result<reqwest::Response, RemoteError> {
        let headers = sigv4::sign(
            "GET",
            &url,
            &[],
            EMPTY_SHA256,
            &self.credentials,
            &self.region,
            SystemTime::now(),
        );
        let mut request = client.get(url.clone());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        send(request, &url, |response| status_error(uri, response)).await
    }
}

/// The `<Code>` and `<Message>` of an S3 error body, as ` (Code: Message)`.
fn s3_error_detail(body: &str) -> String {
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

async fn status_error(uri: &str, response: reqwest::Response) -> RemoteError {
    let status = response.status();
    let url = response.url().to_string();
    let detail = s3_error_detail(&error_body(response).await);
    match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => RemoteError::AccessDenied {
            uri: uri.to_string(),
            hint: "check the credentials Secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and that its key may read this object",
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
        _ => RemoteError::Status {
            uri: uri.to_string(),
            url,
            status: status.as_u16(),
            detail: if status == StatusCode::MOVED_PERMANENTLY {
                format!("{detail}: set AWS_REGION to the bucket's region")
            } else {
                detail
            },
        },
    }
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, Default, PartialEq)]
struct ListPage {
    /// (key, size) of each object.
    objects: Vec<(String, u64)>,
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
        page.objects.push((key, size));
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
) -> Result<Vec<(String, u64)>, RemoteError> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = format!("list-type=2&prefix={}", uri_encode(prefix, false));
        if let Some(token) = &token {
            query = format!("continuation-token={}&{query}", uri_encode(token, false));
        }
        let url = config.url(bucket, "", &query)?;
        let response = config.get(client, uri, url.clone()).await?;
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

async fn get_object(
    client: &reqwest::Client,
    config: &S3Config,
    uri: &str,
    bucket: &str,
    key: &str,
    path: &Path,
) -> Result<u64, RemoteError> {
    let url = config.object_url(uri, bucket, key)?;
    let response = config.get(client, uri, url).await?;
    let bytes = write_body(response, path).await?;
    tracing::info!(bucket, key, bytes, "downloaded");
    Ok(bytes)
}

/// Downloads `s3://bucket/key` into `staging`: one object as `staging/<last segment of the key>`
/// (returning that name), or, when the key ends with `/`, every object under it at its path relative
/// to the prefix (returning `None`: the model is the directory). Zero-byte keys ending in `/` are
/// the "folders" consoles create and are skipped.
pub async fn download(
    client: &reqwest::Client,
    config: &S3Config,
    bucket: &str,
    key: &str,
    staging: &Path,
) -> Result<Option<PathBuf>, RemoteError> {
    let uri = format!("s3://{bucket}/{key}");
    if key.ends_with('/') {
        let objects = list(client, config, &uri, bucket, key).await?;
        let mut fetched = 0usize;
        for (object_key, size) in &objects {
            let relative = object_key.strip_prefix(key).unwrap_or(object_key);
            if relative.is_empty() || (relative.ends_with('/') && *size == 0) {
                continue;
            }
            let path = safe_relative_path(&uri, relative)?;
            get_object(
                client,
                config,
                &uri,
                bucket,
                object_key,
                &staging.join(path),
            )
            .await?;
            fetched += 1;
        }
        if fetched == 0 {
            return Err(RemoteError::Empty { uri });
        }
        Ok(None)
    } else {
        let name = key.rsplit('/').next().unwrap_or(key);
        let name = safe_relative_path(&uri, name)?;
        get_object(client, config, &uri, bucket, key, &staging.join(&name)).await?;
        Ok(Some(name))
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
            aws.object_url("u", "models", "minilm/model 1.onnx")
                .unwrap()
                .as_str(),
            "https://models.s3.us-east-1.amazonaws.com/minilm/model%201.onnx"
        );
        assert_eq!(
            aws.object_url("u", "my.models", "m.onnx").unwrap().as_str(),
            "https://s3.us-east-1.amazonaws.com/my.models/m.onnx"
        );
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"));
        vars.push(("AWS_REGION", "eu-west-1"));
        let minio = config(&vars).unwrap();
        assert_eq!(minio.region, "eu-west-1");
        assert_eq!(
            minio
                .object_url("u", "models", "a/b.onnx")
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
        assert!(minio.object_url("u", "models", "a/../b").is_err());
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "minio:9000"));
        assert!(
            config(&vars)
                .unwrap_err()
                .to_string()
                .contains("AWS_ENDPOINT_URL")
        );
    }

    #[test]
    fn parses_list_objects_v2() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>models</Name><Prefix>m/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
  <IsTruncated>true</IsTruncated><NextContinuationToken>t&amp;1</NextContinuationToken>
  <Contents><Key>m/a &amp; b.txt</Key><Size>3</Size></Contents>
  <Contents><Key>m/sub/</Key><Size>0</Size></Contents>
</ListBucketResult>"#;
        assert_eq!(
            parse_list_page(body).unwrap(),
            ListPage {
                objects: vec![("m/a & b.txt".into(), 3), ("m/sub/".into(), 0)],
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
