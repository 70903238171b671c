//! `hf://org/name[@revision][/file]`: a model repository on the Hugging Face Hub (or a mirror),
//! downloaded file by file through the Hub's HTTP API, which is what `huggingface_hub` itself uses
//! (which files: see [`super::hf_files`]):
//!
//! 1. `GET {endpoint}/api/models/{org}/{name}/revision/{revision}`: JSON whose `siblings` lists the
//!    files (`rfilename`) and whose `sha` is the commit the revision points at;
//! 2. `GET {endpoint}/{org}/{name}/resolve/{commit}/{file}` for each file (the Hub redirects large
//!    files to its CDN; the client follows and drops the token on the way, since the redirect leaves
//!    the Hub's host).
//!
//! Files are resolved at the commit from step 1, not at the branch name, so a push during the
//! download cannot mix two versions of a model. That commit is what the fetch reports
//! (`revision:<commit>`); the operator passes it back as `--revision` to every later pod, whose
//! step 1 then asks for that commit instead of the branch, so a push to `main` between two pods'
//! starts does not make them serve different models.
//!
//! Settings: `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN` (or the older
//! `HUGGING_FACE_HUB_TOKEN`), sent as `Authorization: Bearer`; needed for private and gated models.

use std::path::Path;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::hf_files::{self, Selection};
use super::sigv4::uri_encode;
use super::{
    RemoteError, env_var, error_body, request_error, safe_relative_path, send, write_body,
};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the Hub is and the token to show it.
#[derive(Clone)]
pub struct HfConfig {
    pub endpoint: Url,
    pub token: Option<String>,
}

/// Hand-written so that the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for HfConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HfConfig {
    pub fn from_env() -> Result<Self, RemoteError> {
        Self::from_lookup(env_var)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, RemoteError> {
        let value = lookup("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let invalid = |reason: String| RemoteError::InvalidSetting {
            var: "HF_ENDPOINT",
            value: value.clone(),
            reason,
        };
        let endpoint = Url::parse(value.trim()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(invalid("expected http(s)://host[:port][/path]".into()));
        }
        Ok(Self {
            endpoint,
            token: lookup("HF_TOKEN").or_else(|| lookup("HUGGING_FACE_HUB_TOKEN")),
        })
    }

    /// `{endpoint}/{path}`, keeping a path the endpoint may have (a mirror under `/hf`).
    fn url(&self, path: &str) -> Result<Url, RemoteError> {
        let text = format!("{}/{path}", self.endpoint.as_str().trim_end_matches('/'));
        Url::parse(&text).map_err(|e| RemoteError::InvalidSetting {
            var: "HF_ENDPOINT",
            value: self.endpoint.to_string(),
            reason: format!("it makes an invalid url {text:?}: {e}"),
        })
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        uri: &str,
        url: Url,
    ) -> Result<reqwest::Response, RemoteError> {
        let mut request = client.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        send(request, &url, |response| self.status_error(uri, response)).await
    }

    async fn status_error(&self, uri: &str, response: reqwest::Response) -> RemoteError {
        let status = response.status();
        let url = response.url().to_string();
        // The Hub explains itself in `{"error": "..."}`; a mirror may answer with plain text.
        let body = error_body(response).await;
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RemoteError::AccessDenied {
                uri: uri.to_string(),
                // Without a token the Hub answers 401 for private, gated and missing repositories
                // alike, so the message cannot tell them apart.
                hint: if self.token.is_some() {
                    "check HF_TOKEN: the token was refused, or it has no access to this repository (gated models must be accepted on the Hub first)"
                } else {
                    "check HF_TOKEN: none is set, and the repository is private, gated or does not exist"
                },
                detail,
            },
            StatusCode::NOT_FOUND => RemoteError::NotFound {
                uri: uri.to_string(),
                detail,
                hint: "",
            },
            _ => RemoteError::Status {
                uri: uri.to_string(),
                url,
                status: status.as_u16(),
                detail,
            },
        }
    }
}

/// The part of `GET /api/models/{repo}/revision/{rev}` that `fetch` needs.
#[derive(Debug, Deserialize)]
struct ModelInfo {
    /// The commit the revision resolves to.
    sha: Option<String>,
    siblings: Option<Vec<Sibling>>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
}

/// What a Hub download got.
#[derive(Debug)]
pub struct HfDownload {
    /// The file's name when the selection is one file (it lands as `staging/<its name>`); `None`
    /// when the model is the directory.
    pub file: Option<std::path::PathBuf>,
    /// The commit the files were resolved at.
    pub commit: String,
}

/// Downloads the files of `repo` (`org/name`) at `revision` (default `main`) that `named` (the
/// uri's file or glob) or else `needs` select into `staging`: a single file as
/// `staging/<its name>`, several at their paths in the repository. `request.pinned` (an earlier
/// fetch's commit) replaces the revision when the caller has one.
pub async fn download(
    client: &reqwest::Client,
    config: &HfConfig,
    repo: &str,
    revision: Option<&str>,
    named: Option<&str>,
    request: super::Request<'_>,
    staging: &Path,
) -> Result<HfDownload, RemoteError> {
    let revision = request.pinned.or(revision).unwrap_or("main");
    let uri = format!("hf://{repo}@{revision}");
    let repo_path = repo
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| uri_encode(s, false))
        .collect::<Vec<_>>()
        .join("/");
    // A revision such as `refs/pr/1` is one path segment to the Hub, so its slashes are encoded.
    let info_url = config.url(&format!(
        "api/models/{repo_path}/revision/{}",
        uri_encode(revision, false)
    ))?;
    let response = config.get(client, &uri, info_url.clone()).await?;
    let body = response
        .bytes()
        .await
        .map_err(|e| request_error(info_url.as_str(), &e))?;
    let bad = |reason: String| RemoteError::BadResponse {
        uri: uri.clone(),
        url: info_url.to_string(),
        reason,
    };
    let info: ModelInfo =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid model info JSON: {e}")))?;
    let siblings = info
        .siblings
        .ok_or_else(|| bad("the model info has no `siblings` (file list)".into()))?;
    if siblings.is_empty() {
        return Err(RemoteError::Empty { uri });
    }
    let commit = info
        .sha
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| revision.to_string());
    let names: Vec<String> = siblings.into_iter().map(|s| s.rfilename).collect();
    let selection = hf_files::select(&uri, &names, named, request.needs)
        .map_err(|reason| RemoteError::Selection { reason })?;
    let (wanted, file) = match selection {
        Selection::File(name) => {
            let base = name.rsplit('/').next().unwrap_or(&name).to_string();
            let base = safe_relative_path(&uri, &base)?;
            (vec![(name, base.clone())], Some(base))
        }
        Selection::Directory(names) => (
            names
                .into_iter()
                .map(|name| {
                    let relative = safe_relative_path(&uri, &name)?;
                    Ok((name, relative))
                })
                .collect::<Result<Vec<_>, RemoteError>>()?,
            None,
        ),
    };
    for (name, relative) in &wanted {
        let url = config.url(&format!(
            "{repo_path}/resolve/{}/{}",
            uri_encode(&commit, false),
            uri_encode(name, true)
        ))?;
        let response = config.get(client, &uri, url).await?;
        let path = staging.join(relative);
        let bytes = write_body(response, &path).await?;
        tracing::info!(repo, file = %name, bytes, "downloaded");
    }
    // Which commit a branch name resolved to is worth having in the logs when two pods disagree.
    tracing::info!(repo, revision, commit = %commit, files = wanted.len(), "fetched from the Hub");
    Ok(HfDownload { file, commit })
}

#[cfg(test)]
mod tests {
    use super::super::lookup_in;
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<HfConfig, RemoteError> {
        HfConfig::from_lookup(lookup_in(vars))
    }

    #[test]
    fn endpoint_and_token_come_from_the_environment() {
        let default = config(&[]).unwrap();
        assert_eq!(default.endpoint.as_str(), "https://huggingface.co/");
        assert!(default.token.is_none());
        assert_eq!(
            default
                .url("api/models/a/b/revision/main")
                .unwrap()
                .as_str(),
            "https://huggingface.co/api/models/a/b/revision/main"
        );
        let mirror = config(&[
            ("HF_ENDPOINT", "http://127.0.0.1:8000/hf/"),
            ("HUGGING_FACE_HUB_TOKEN", "old"),
        ])
        .unwrap();
        assert_eq!(
            mirror.url("a/b/resolve/main/x").unwrap().as_str(),
            "http://127.0.0.1:8000/hf/a/b/resolve/main/x"
        );
        assert_eq!(mirror.token.as_deref(), Some("old"));
        assert!(!format!("{mirror:?}").contains("old"));
        let both = config(&[("HF_TOKEN", "new"), ("HUGGING_FACE_HUB_TOKEN", "old")]).unwrap();
        assert_eq!(both.token.as_deref(), Some("new"));
        assert!(config(&[("HF_ENDPOINT", "huggingface.co")]).is_err());
    }
}
