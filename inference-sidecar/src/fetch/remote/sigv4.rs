//! AWS Signature Version 4 for S3 requests (header-based, single-chunk payload).
//!
//! Written here rather than taken from the AWS SDK because `fetch` makes two kinds of request
//! (GetObject and ListObjectsV2) and SigV4 is small: a canonical form of the request, hashed, then an
//! HMAC-SHA256 chain over the date, region and service. Every step is a pure function so that the
//! unit tests can check it against the worked examples AWS publishes in the S3 API reference
//! ("Signature Calculations for the Authorization Header: Transferring Payload in a Single Chunk").
//!
//! S3 differs from other services in one respect the code relies on: the canonical URI is each path
//! segment URI-encoded once (not twice), so the path that is sent and the path that is signed are the
//! same string.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use reqwest::Url;
use sha2::{Digest, Sha256};

use lexserve_contract::digest::to_hex;

/// sha256 of an empty payload: the `x-amz-content-sha256` of every GET.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// RFC 3986 unreserved characters stay as they are; SigV4 percent-encodes every other byte, with
/// upper-case hex digits (which `percent-encoding` produces).
const SIGV4: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

type HmacSha256 = Hmac<Sha256>;

/// An access key, as the operator passes it from the credentials Secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// For temporary credentials (STS); sent and signed as `x-amz-security-token`.
    pub session_token: Option<String>,
}

/// Hand-written so that the secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// URI-encodes `text` as SigV4 specifies; `/` is kept when `keep_slash` (object key paths) and
/// encoded otherwise (query names and values).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    if keep_slash {
        text.split('/')
            .map(|segment| utf8_percent_encode(segment, SIGV4).to_string())
            .collect::<Vec<_>>()
            .join("/")
    } else {
        utf8_percent_encode(text, SIGV4).to_string()
    }
}

/// Decodes `%XX` escapes (not `+`: SigV4 URLs never use form encoding).
fn uri_decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The canonical query string: names and values encoded, pairs sorted by name then value, a bare
/// name given an empty value (`?lifecycle` → `lifecycle=`).
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// What is signed: the request as SigV4 sees it. `headers` must include `host`; names are
/// lower-cased and values trimmed here.
#[derive(Debug)]
pub struct SigningRequest<'a> {
    pub method: &'a str,
    /// The decoded path (`/bucket/my key.txt`); it is encoded here.
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

/// Returns the canonical request and the signed-headers list (`host;x-amz-date`).
pub fn canonical_request(request: &SigningRequest<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| {
            // Sequential spaces inside a value collapse to one, as the spec requires.
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let path = if request.path.is_empty() {
        "/".to_string()
    } else {
        uri_encode(request.path, true)
    };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        path,
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        request.payload_sha256
    );
    (canonical, signed_headers)
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, yyyymmdd), region), service), "aws4_request")`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    hmac(&k_service, "aws4_request")
}

/// The `Authorization` header value for `request` signed at `amz_date` (`20130524T000000Z`).
pub fn authorization(
    credentials: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
    request: &SigningRequest<'_>,
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let (canonical, signed_headers) = canonical_request(request);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        to_hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(&credentials.secret_access_key, date, region, service);
    let signature = to_hex(&hmac(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

/// `yyyymmddThhmmssZ` in UTC, the `x-amz-date` format. Computed from the Unix time directly (the
/// civil-from-days algorithm) so that no date crate is needed for one timestamp.
pub fn amz_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's days_from_civil inverse, valid for every date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// The `Host` header value the HTTP client will send for `url` (the port only when not the scheme's
/// default), which must be the one signed.
pub fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Signs a request to `url` and returns every header to send with it (`x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token` when there is one, `authorization`), besides any
/// `extra` headers, which are signed too. The URL's path and query are taken as sent: decoded here
/// and re-encoded canonically, so a URL built with [`uri_encode`] signs exactly what goes on the wire.
pub fn sign(
    method: &str,
    url: &Url,
    extra: &[(String, String)],
    payload_sha256: &str,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> Vec<(String, String)> {
    let date = amz_date(now);
    let mut headers: Vec<(String, String)> = extra.to_vec();
    headers.push(("x-amz-date".into(), date.clone()));
    headers.push(("x-amz-content-sha256".into(), payload_sha256.to_string()));
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    let mut signed = headers.clone();
    signed.push(("host".into(), host_header(url)));
    let path = uri_decode(url.path());
    let query: Vec<(String, String)> = url
        .query()
        .filter(|q| !q.is_empty())
        .map(|q| {
            q.split('&')
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (uri_decode(k), uri_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let request = SigningRequest {
        method,
        path: &path,
        query: &query,
        headers: &signed,
        payload_sha256,
    };
    let auth = authorization(credentials, region, "s3", &date, &request);
    headers.push(("authorization".into(), auth));
    headers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The credentials and time of every example in AWS's SigV4 documentation for S3.
    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// 2013-05-24T00:00:00Z.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn signature_of(authorization: &str) -> &str {
        authorization
            .rsplit_once("Signature=")
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    #[test]
    fn formats_the_amz_date() {
        assert_eq!(amz_date(example_time()), "20130524T000000Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        // A leap day and a time of day.
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "20000229T123456Z"
        );
    }

    /// AWS's "GET Object" example: the first ten bytes of examplebucket/test.txt.
    #[test]
    fn the_get_object_example() {
        let headers = vec![
            (
                "Host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("Range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let request = SigningRequest {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        let (canonical, signed) = canonical_request(&request);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        assert_eq!(
            to_hex(&Sha256::digest(canonical.as_bytes())),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let auth = authorization(
            &example_credentials(),
            "us-east-1",
            "s3",
            "20130524T000000Z",
            &request,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The same example through [`sign`], from a URL as the client sends it.
    #[test]
    fn sign_reproduces_the_get_object_example_from_a_url() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let headers = sign(
            "GET",
            &url,
            &[("range".into(), "bytes=0-9".into())],
            EMPTY_SHA256,
            &example_credentials(),
            "us-east-1",
            example_time(),
        );
        assert_eq!(header(&headers, "x-amz-date"), "20130524T000000Z");
        assert_eq!(
            signature_of(header(&headers, "authorization")),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's "GET Bucket (List Objects)" example: a query, given unsorted, is signed sorted.
    #[test]
    fn the_list_objects_example() {
        let url =
            Url::parse("https://examplebucket.s3.amazonaws.com/?prefix=J&max-keys=2").unwrap();
        let headers = sign(
            "GET",
            &url,
            &[],
            EMPTY_SHA256,
            &example_credentials(),
            "us-east-1",
            example_time(),
        );
        let auth = header(&headers, "authorization");
        assert!(
            auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"),
            "{auth}"
        );
        assert_eq!(
            signature_of(auth),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    /// AWS's "PUT Object" example: a signed payload, extra signed headers and a `$` in the key,
    /// which must be signed as `%24` even though the URL may carry it raw.
    #[test]
    fn the_put_object_example() {
        let body = b"Welcome to Amazon S3.";
        let payload = to_hex(&Sha256::digest(body));
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test$file.text").unwrap();
        let headers = sign(
            "PUT",
            &url,
            &[
                ("date".into(), "Fri, 24 May 2013 00:00:00 GMT".into()),
                ("x-amz-storage-class".into(), "REDUCED_REDUNDANCY".into()),
            ],
            &payload,
            &example_credentials(),
            "us-east-1",
            example_time(),
        );
        let auth = header(&headers, "authorization");
        assert!(
            auth.contains(
                "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
            ),
            "{auth}"
        );
        assert_eq!(
            signature_of(auth),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(uri_encode("a-b_c.d~e", false), "a-b_c.d~e");
        assert_eq!(uri_encode("a b/c+d=é", false), "a%20b%2Fc%2Bd%3D%C3%A9");
        assert_eq!(uri_encode("models/a b.onnx", true), "models/a%20b.onnx");
        assert_eq!(
            canonical_query(&[
                ("prefix".into(), "models/v1/".into()),
                ("list-type".into(), "2".into()),
                ("continuation-token".into(), "a+b=".into()),
            ]),
            "continuation-token=a%2Bb%3D&list-type=2&prefix=models%2Fv1%2F"
        );
    }

    #[test]
    fn a_session_token_is_sent_and_signed() {
        let mut credentials = example_credentials();
        credentials.session_token = Some("token/with+chars".into());
        let url = Url::parse("http://127.0.0.1:9000/bucket/key").unwrap();
        let headers = sign(
            "GET",
            &url,
            &[],
            EMPTY_SHA256,
            &credentials,
            "eu-west-1",
            example_time(),
        );
        assert_eq!(header(&headers, "x-amz-security-token"), "token/with+chars");
        let auth = header(&headers, "authorization");
        assert!(
            auth.contains("/20130524/eu-west-1/s3/aws4_request"),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{auth}"
        );
        assert_eq!(host_header(&url), "127.0.0.1:9000");
        assert!(!format!("{credentials:?}").contains("token/with"));
    }
}
