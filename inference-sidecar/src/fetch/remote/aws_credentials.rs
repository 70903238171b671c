//! Where S3 credentials come from, in the order the AWS SDKs try for a pod:
//!
//! 1. static keys in the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//!    `AWS_SESSION_TOKEN`), which the operator passes from the model's credentials Secret;
//! 2. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, optional
//!    `AWS_ROLE_SESSION_NAME`): the service account token the kubelet projects into the pod is
//!    exchanged with STS `AssumeRoleWithWebIdentity` for temporary credentials. This is what EKS
//!    IAM Roles for Service Accounts injects, so a cluster needs no long-lived key in a Secret.
//!
//! Temporary credentials are refreshed (the token file re-read, since the kubelet rotates it)
//! when they come within [`REFRESH_BEFORE_EXPIRY`] of expiring, so a download of many gigabytes
//! outlives the hour STS grants.
//!
//! STS is called with the query API over a POST form, unsigned (the token is the proof), against
//! `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else the regional endpoint, as the SDKs do.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;

use super::sigv4::{Credentials, uri_encode};
use super::{RemoteError, error_body, request_error};

/// How long before their expiry temporary credentials are replaced. A request signed just before
/// expiry can still be refused by the time a slow server checks it; five minutes is the margin the
/// AWS SDKs use.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// What the missing-credentials error asks for: both ways a pod can be given credentials.
pub const CREDENTIAL_OPTIONS: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (static keys from the credentials Secret), or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (web identity: a service account token exchanged with STS, as EKS IRSA injects them)";

/// Where the signing credentials come from.
#[derive(Debug)]
pub enum CredentialSource {
    Static(Credentials),
    WebIdentity(WebIdentity),
}

/// STS `AssumeRoleWithWebIdentity` with a token file, and the credentials it last returned.
#[derive(Debug)]
pub struct WebIdentity {
    pub token_file: PathBuf,
    pub role_arn: String,
    pub session_name: String,
    pub sts_endpoint: Url,
    cached: Mutex<Option<Temporary>>,
}

/// Credentials from STS with their expiry.
#[derive(Debug, Clone)]
pub struct Temporary {
    pub credentials: Credentials,
    pub expiration: SystemTime,
}

impl CredentialSource {
    /// Picks the first complete source, in the SDKs' order. `region` places the default STS
    /// endpoint; `uri` is only for the error message.
    pub fn from_lookup(
        uri: &str,
        lookup: &impl Fn(&str) -> Option<String>,
        region: &str,
    ) -> Result<Self, RemoteError> {
        let access_key_id = lookup("AWS_ACCESS_KEY_ID");
        let secret_access_key = lookup("AWS_SECRET_ACCESS_KEY");
        if let (Some(access_key_id), Some(secret_access_key)) = (&access_key_id, &secret_access_key)
        {
            return Ok(Self::Static(Credentials {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: lookup("AWS_SESSION_TOKEN"),
            }));
        }
        let token_file = lookup("AWS_WEB_IDENTITY_TOKEN_FILE");
        let role_arn = lookup("AWS_ROLE_ARN");
        if let (Some(token_file), Some(role_arn)) = (&token_file, &role_arn) {
            let sts_endpoint = sts_endpoint(lookup, region)?;
            let session_name = lookup("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format!("lexserve-fetch-{secs}")
            });
            return Ok(Self::WebIdentity(WebIdentity {
                token_file: PathBuf::from(token_file),
                role_arn: role_arn.clone(),
                session_name,
                sts_endpoint,
                cached: Mutex::new(None),
            }));
        }
        // Half of one source set: name exactly what it lacks, since that is the likely mistake.
        let missing = missing_half(
            ("AWS_ACCESS_KEY_ID", &access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &secret_access_key),
        )
        .or_else(|| {
            missing_half(
                ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file),
                ("AWS_ROLE_ARN", &role_arn),
            )
        })
        .map_or_else(|| CREDENTIAL_OPTIONS.to_string(), str::to_string);
        Err(RemoteError::MissingCredentials {
            uri: uri.to_string(),
            missing,
        })
    }

    /// What to check when S3 refuses these credentials.
    pub fn denied_hint(&self) -> &'static str {
        match self {
            Self::Static(_) => {
                "check the credentials Secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and that its key may read this object"
            }
            Self::WebIdentity(_) => {
                "check that the role in AWS_ROLE_ARN may read this object (s3:GetObject, and s3:ListBucket for a prefix)"
            }
        }
    }

    /// Credentials to sign the next request with: the static ones, or temporary ones from STS,
    /// fetched on first use and again when they near expiry.
    pub async fn current(
        &self,
        client: &reqwest::Client,
        uri: &str,
    ) -> Result<Credentials, RemoteError> {
        match self {
            Self::Static(credentials) => Ok(credentials.clone()),
            Self::WebIdentity(web) => web.current(client, uri).await,
        }
    }
}

/// Of a pair of settings where one is set and the other not, the one that is not.
fn missing_half(
    a: (&'static str, &Option<String>),
    b: (&'static str, &Option<String>),
) -> Option<&'static str> {
    match (a.1, b.1) {
        (Some(_), None) => Some(b.0),
        (None, Some(_)) => Some(a.0),
        _ => None,
    }
}

/// `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else `https://sts.<region>.amazonaws.com`.
fn sts_endpoint(
    lookup: &impl Fn(&str) -> Option<String>,
    region: &str,
) -> Result<Url, RemoteError> {
    match ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|var| lookup(var).map(|value| (var, value)))
    {
        Some((var, value)) => parse_endpoint(var, &value),
        None => parse_endpoint("AWS_REGION", &format!("https://sts.{region}.amazonaws.com")),
    }
}

/// An endpoint setting: `http(s)://host[:port][/path]`, nothing else.
pub fn parse_endpoint(var: &'static str, value: &str) -> Result<Url, RemoteError> {
    let invalid = |reason: String| RemoteError::InvalidSetting {
        var,
        value: value.to_string(),
        reason,
    };
    let url = Url::parse(value.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("expected http://host[:port] or https://...".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "an endpoint cannot have a query or a fragment".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "an endpoint cannot carry a user or password".into(),
        ));
    }
    Ok(url)
}

/// Whether credentials expiring at `expiration` must be replaced at `now`.
pub fn needs_refresh(expiration: SystemTime, now: SystemTime) -> bool {
    expiration
        .duration_since(now)
        .map_or(true, |left| left < REFRESH_BEFORE_EXPIRY)
}

impl WebIdentity {
    async fn current(
        &self,
        client: &reqwest::Client,
        uri: &str,
    ) -> Result<Credentials, RemoteError> {
        let cached = self.cached.lock().map(|c| c.clone()).unwrap_or_default();
        if let Some(temporary) = cached
            && !needs_refresh(temporary.expiration, SystemTime::now())
        {
            return Ok(temporary.credentials);
        }
        let temporary = self.assume_role(client, uri).await?;
        tracing::info!(
            role_arn = %self.role_arn,
            access_key_id = %temporary.credentials.access_key_id,
            "assumed the role with the web identity token"
        );
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(temporary.clone());
        }
        Ok(temporary.credentials)
    }

    async fn assume_role(
        &self,
        client: &reqwest::Client,
        uri: &str,
    ) -> Result<Temporary, RemoteError> {
        // Read on every call: the kubelet rotates the projected token.
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|e| RemoteError::InvalidSetting {
                var: "AWS_WEB_IDENTITY_TOKEN_FILE",
                value: self.token_file.display().to_string(),
                reason: format!("cannot read the token: {e}"),
            })?;
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", self.session_name.as_str()),
            ("WebIdentityToken", token.trim()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
        let url = self.sts_endpoint.clone();
        let response = client
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| request_error(url.as_str(), &e))?;
        let status = response.status();
        let body = error_body_or_text(response, status.is_success()).await;
        if !status.is_success() {
            let detail = super::s3::s3_error_detail(&body);
            return Err(if status.is_client_error() {
                RemoteError::AccessDenied {
                    uri: uri.to_string(),
                    hint: "STS refused AssumeRoleWithWebIdentity: check AWS_ROLE_ARN and that the role trusts this service account's token (AWS_WEB_IDENTITY_TOKEN_FILE)",
                    detail,
                }
            } else {
                RemoteError::Status {
                    uri: uri.to_string(),
                    url: url.to_string(),
                    status: status.as_u16(),
                    detail,
                }
            });
        }
        parse_assume_role_response(&body).map_err(|reason| RemoteError::BadResponse {
            uri: uri.to_string(),
            url: url.to_string(),
            reason: format!("STS AssumeRoleWithWebIdentity: {reason}"),
        })
    }
}

/// The whole body of a success (credentials), the shortened one of a failure.
async fn error_body_or_text(response: reqwest::Response, success: bool) -> String {
    if success {
        response.text().await.unwrap_or_default()
    } else {
        error_body(response).await
    }
}

/// The `<Credentials>` of an `AssumeRoleWithWebIdentityResponse`.
pub fn parse_assume_role_response(body: &str) -> Result<Temporary, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| format!("invalid XML: {e}"))?;
    let credentials = doc
        .descendants()
        .find(|n| n.has_tag_name("Credentials"))
        .ok_or("no <Credentials> in the answer")?;
    let field = |name: &str| {
        credentials
            .children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or(format!("no <{name}> in the credentials"))
    };
    let expiration_text = field("Expiration")?;
    let expiration = parse_iso8601(&expiration_text)
        .ok_or(format!("unreadable <Expiration> {expiration_text:?}"))?;
    Ok(Temporary {
        credentials: Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        expiration,
    })
}

/// `2026-12-05T11:50:06Z` (fractional seconds and a `+00:00` offset accepted, as STS and its
/// emulators write them) as a time. `None` for anything else, so a strange answer is an error
/// rather than credentials that never refresh.
pub fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let number = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut d = date.split('-').map(number);
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(number);
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some()
        || t.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return None;
    }
    // Howard Hinnant's days_from_civil (the inverse of `sigv4::amz_date`'s).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::super::lookup_in;
    use super::super::sigv4::amz_date;
    use super::*;

    fn source(vars: &[(&str, &str)]) -> Result<CredentialSource, RemoteError> {
        CredentialSource::from_lookup("s3://b/k", &lookup_in(vars), "eu-west-1")
    }

    #[test]
    fn static_keys_come_first_then_web_identity() {
        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ];
        let mut both = web.to_vec();
        both.extend([
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", "t"),
        ]);
        match source(&both).unwrap() {
            CredentialSource::Static(c) => {
                assert_eq!(c.access_key_id, "id");
                assert_eq!(c.session_token.as_deref(), Some("t"));
            }
            other => panic!("{other:?}"),
        }
        // Half a static key pair does not hide a complete web identity (the SDKs' chain moves on).
        let mut half = web.to_vec();
        half.push(("AWS_ACCESS_KEY_ID", "id"));
        match source(&half).unwrap() {
            CredentialSource::WebIdentity(w) => {
                assert_eq!(w.role_arn, "arn:aws:iam::1:role/r");
                assert!(w.session_name.starts_with("lexserve-fetch-"));
                assert_eq!(
                    w.sts_endpoint.as_str(),
                    "https://sts.eu-west-1.amazonaws.com/"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut named = web.to_vec();
        named.extend([
            ("AWS_ROLE_SESSION_NAME", "pod-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ]);
        let CredentialSource::WebIdentity(w) = source(&named).unwrap() else {
            panic!("web identity")
        };
        assert_eq!(w.session_name, "pod-1");
        assert_eq!(w.sts_endpoint.as_str(), "http://127.0.0.1:5000/");
        named.push(("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:6000"));
        let CredentialSource::WebIdentity(w) = source(&named).unwrap() else {
            panic!("web identity")
        };
        assert_eq!(w.sts_endpoint.as_str(), "http://127.0.0.1:6000/");
    }

    #[test]
    fn missing_credentials_name_both_options_or_the_missing_half() {
        let message = source(&[]).unwrap_err().to_string();
        for var in [
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN",
        ] {
            assert!(message.contains(var), "{message}");
        }
        let message = source(&[("AWS_ROLE_ARN", "arn")]).unwrap_err().to_string();
        assert!(
            message.contains("set AWS_WEB_IDENTITY_TOKEN_FILE ("),
            "{message}"
        );
        let message = source(&[
            ("AWS_ENDPOINT_URL_STS", "sts:1"),
            ("AWS_ROLE_ARN", "a"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ])
        .unwrap_err()
        .to_string();
        assert!(message.contains("AWS_ENDPOINT_URL_STS"), "{message}");
    }

    #[test]
    fn parses_sts_answers_and_their_expiry() {
        let body = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FwoGZX&amp;token</SessionToken>
      <SecretAccessKey>secret</SecretAccessKey>
      <Expiration>2026-12-05T11:50:06.721117Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let t = parse_assume_role_response(body).unwrap();
        assert_eq!(t.credentials.access_key_id, "ASIAEXAMPLE");
        assert_eq!(t.credentials.secret_access_key, "secret");
        assert_eq!(t.credentials.session_token.as_deref(), Some("FwoGZX&token"));
        assert_eq!(amz_date(t.expiration), "20261205T115006Z");
        assert!(parse_assume_role_response("<ErrorResponse/>").is_err());
        assert!(
            parse_assume_role_response(&body.replace("2026-12-05T11:50:06.721117Z", "soon"))
                .is_err()
        );

        for (text, expected) in [
            ("1970-01-01T00:00:00Z", "19700101T000000Z"),
            ("2000-02-29T12:34:56Z", "20000229T123456Z"),
            ("2026-12-05 11:50:06+00:00", "20261205T115006Z"),
            ("2024-03-01T00:00:00.5Z", "20240301T000000Z"),
        ] {
            assert_eq!(
                parse_iso8601(text).map(amz_date).as_deref(),
                Some(expected),
                "{text}"
            );
        }
        for bad in [
            "",
            "2026-12-05",
            "2026-13-01T00:00:00Z",
            "2026-12-05T11:50:06+02:00",
            "x-1-1T0:0:0Z",
        ] {
            assert!(parse_iso8601(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn temporary_credentials_are_replaced_before_they_expire() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!needs_refresh(now + Duration::from_secs(3600), now));
        assert!(!needs_refresh(now + REFRESH_BEFORE_EXPIRY, now));
        assert!(needs_refresh(
            now + REFRESH_BEFORE_EXPIRY - Duration::from_secs(1),
            now
        ));
        assert!(needs_refresh(now, now));
        assert!(needs_refresh(now - Duration::from_secs(1), now));
    }
}
