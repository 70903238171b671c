//! The router's settings (flags) and its configuration file, compiled for the request path: the
//! bucket table as a lookup array, each variant's upstream with `--resolve` applied.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderValue;
use lexserve_contract::duration::parse_duration;
use lexserve_contract::router::{AssignmentSource, BUCKETS, MAX_VARIANTS, RouterConfig};
use thiserror::Error;

use crate::cli::RouteArgs;
use crate::config::{ConfigError, HttpLimits, invalid, positive, shutdown_delay, timeout};

/// Everything `route` needs from its flags.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub config_path: PathBuf,
    pub listen: String,
    pub resolve: Resolve,
    pub connect_timeout: Duration,
    /// Request ids remembered for `/outcome`, and for how long.
    pub outcome_request_ids: usize,
    pub outcome_window: Duration,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    pub shutdown_delay: Duration,
    pub http: HttpLimits,
}

impl RouteSettings {
    pub fn resolve(args: &RouteArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            config_path: args.config.clone(),
            listen: args.listen.clone(),
            resolve: Resolve::parse(&args.resolve)?,
            connect_timeout: timeout("--connect-timeout", &args.connect_timeout)?,
            outcome_request_ids: positive("--outcome-request-ids", args.outcome_request_ids)?,
            outcome_window: timeout("--outcome-window", &args.outcome_window)?,
            max_body_bytes: positive("--max-body-bytes", args.http.max_body_bytes)?,
            drain_timeout: parse_duration(&args.http.drain_timeout)
                .map_err(|e| invalid("--drain-timeout", e.to_string()))?,
            shutdown_delay: shutdown_delay(args.http.shutdown_delay.as_deref())?,
            http: HttpLimits::resolve(&args.http)?,
        })
    }
}

/// `--resolve HOST:PORT=ADDR` entries: where to connect when a variant's URL names HOST:PORT.
/// HOST may be `*.DOMAIN`, which stands for every name under DOMAIN (one proxy in front of a
/// cluster's Services, routing by the `Host` header); an exact name wins over a wildcard, and a
/// longer DOMAIN over a shorter one.
#[derive(Debug, Clone, Default)]
pub struct Resolve {
    exact: HashMap<(String, u16), SocketAddr>,
    /// `(".DOMAIN", port)`, longest DOMAIN first.
    wildcard: Vec<(String, u16, SocketAddr)>,
}

impl Resolve {
    pub fn parse(entries: &[String]) -> Result<Self, ConfigError> {
        let mut resolve = Self::default();
        for entry in entries {
            let bad = || {
                invalid(
                    "--resolve",
                    format!("{entry:?} is not HOST:PORT=ADDR:PORT (HOST a name or *.DOMAIN)"),
                )
            };
            let (name, addr) = entry.split_once('=').ok_or_else(bad)?;
            let (host, port) = name.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().map_err(|_| bad())?;
            let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(domain)
                    if domain.len() > 1
                        && domain.starts_with('.')
                        && !domain[1..].contains('*') =>
                {
                    resolve.wildcard.push((domain.to_string(), port, addr));
                }
                Some(_) => return Err(bad()),
                None if host.is_empty() || host.contains('*') => return Err(bad()),
                None => {
                    resolve.exact.insert((host, port), addr);
                }
            }
        }
        resolve
            .wildcard
            .sort_by_key(|(domain, _, _)| std::cmp::Reverse(domain.len()));
        Ok(resolve)
    }

    fn lookup(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let host = host.to_ascii_lowercase();
        if let Some(addr) = self.exact.get(&(host.clone(), port)) {
            return Some(*addr);
        }
        self.wildcard
            .iter()
            .find(|(domain, p, _)| {
                *p == port && host.len() > domain.len() && host.ends_with(domain.as_str())
            })
            .map(|(_, _, addr)| *addr)
    }
}

/// Why a configuration file cannot be used (the router keeps the one it has).
#[derive(Debug, Error)]
pub enum RoutingError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid router configuration: {0}")]
    Invalid(String),
}

/// A variant's upstream: where to connect and what to call it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The name its sidecar serves.
    pub model: String,
    /// `scheme://host:port` to connect to, `--resolve` applied; no trailing slash.
    pub base: String,
    /// The `Host` header naming the variant's own URL when `--resolve` redirected the connection.
    pub host: Option<HeaderValue>,
    /// The header value `x-lexserve-variant`.
    pub header: HeaderValue,
}

/// A configuration ready for the request path.
#[derive(Debug)]
pub struct Routing {
    pub config: RouterConfig,
    /// In the order of `config.variants`; the control first.
    pub upstreams: Vec<Upstream>,
    /// The upstream index of every bucket.
    lookup: Vec<u8>,
}

impl Routing {
    /// Checks `config` and compiles it. What the operator writes passes; a hand-edited file that
    /// would misroute (a bucket owned twice or by no variant, an unknown variant) does not.
    pub fn compile(config: RouterConfig, resolve: &Resolve) -> Result<Self, RoutingError> {
        let invalid = |message: String| RoutingError::Invalid(message);
        if config.variants.is_empty() || config.variants.len() > MAX_VARIANTS {
            return Err(invalid(format!(
                "variants: {} given, 1 to {MAX_VARIANTS} supported",
                config.variants.len()
            )));
        }
        if config.assignment.by != AssignmentSource::Random
            && config.assignment.key.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(format!(
                "assignment.key is required with assignment.by {:?}",
                config.assignment.by
            )));
        }
        let mut upstreams: Vec<Upstream> = Vec::with_capacity(config.variants.len());
        for variant in &config.variants {
            if upstreams.iter().any(|u| u.name == variant.name) {
                return Err(invalid(format!("variant {:?} appears twice", variant.name)));
            }
            upstreams.push(upstream(variant, resolve)?);
        }
        let owners = config.buckets.lookup().ok_or_else(|| {
            invalid(format!(
                "buckets: every bucket of 0..{BUCKETS} must belong to exactly one variant"
            ))
        })?;
        let mut index_of_owner = Vec::with_capacity(config.buckets.owners.len());
        for owner in &config.buckets.owners {
            let index = upstreams
                .iter()
                .position(|u| u.name == owner.variant)
                .ok_or_else(|| {
                    invalid(format!("buckets name unknown variant {:?}", owner.variant))
                })?;
            index_of_owner.push(index as u8);
        }
        let lookup = owners
            .into_iter()
            .map(|owner| index_of_owner[usize::from(owner)])
            .collect();
        Ok(Self {
            config,
            upstreams,
            lookup,
        })
    }

    /// The upstream index owning `bucket` (0..BUCKETS).
    pub fn owner(&self, bucket: u16) -> usize {
        usize::from(self.lookup[usize::from(bucket)])
    }
}

fn upstream(
    variant: &lexserve_contract::router::RouterVariant,
    resolve: &Resolve,
) -> Result<Upstream, RoutingError> {
    let bad = |message: &str| {
        RoutingError::Invalid(format!(
            "variant {:?} url {:?}: {message}",
            variant.name, variant.url
        ))
    };
    let server = Server::parse(&variant.url, resolve).map_err(|e| bad(&e))?;
    Ok(Upstream {
        name: variant.name.clone(),
        model: variant.model.clone(),
        base: server.base,
        host: server.host,
        header: HeaderValue::from_str(&variant.name)
            .map_err(|_| bad("name is not a header value"))?,
    })
}

/// Where to send requests for a server URL (`http://host:port`, nothing after): the router's
/// variants and the mirror's candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// `scheme://host:port` to connect to, `--resolve` applied; no trailing slash.
    pub base: String,
    /// The `Host` header naming the server's own URL when `--resolve` redirected the connection.
    pub host: Option<HeaderValue>,
}

impl Server {
    /// Checks `url` names a server only, and applies `resolve`; the error says what is wrong.
    pub fn parse(url: &str, resolve: &Resolve) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be http:// or https://".into());
        }
        if parsed.path() != "/" || parsed.query().is_some() {
            return Err("must name a server only (no path or query)".into());
        }
        let host = parsed.host_str().ok_or("names no host")?;
        let port = parsed.port_or_known_default().ok_or("names no port")?;
        Ok(match resolve.lookup(host, port) {
            Some(addr) => Self {
                base: format!("{}://{addr}", parsed.scheme()),
                host: Some(
                    HeaderValue::from_str(&format!("{host}:{port}")).map_err(|_| "bad host")?,
                ),
            },
            None => Self {
                base: url.trim_end_matches('/').to_string(),
                host: None,
            },
        })
    }
}

/// Reads and compiles the configuration file.
pub fn load(path: &Path, resolve: &Resolve) -> Result<Routing, RoutingError> {
    let text = std::fs::read(path).map_err(|source| RoutingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, resolve)
}

/// Parses and compiles a configuration file's content.
pub fn parse(path: &Path, text: &[u8], resolve: &Resolve) -> Result<Routing, RoutingError> {
    let config: RouterConfig = serde_yaml::from_slice(text).map_err(|e| RoutingError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Routing::compile(config, resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
experiment: e
generation: 3
model: ctl
assignment: {by: header, key: x-user, seed: 1}
variants:
  - {name: a, url: "http://a.ns.svc:8080", model: ctl, weight: 1}
  - {name: b, url: "http://b.ns.svc:8080/", model: b-model, weight: 3}
buckets:
  owners:
    - {variant: a, ranges: [[0, 2500]]}
    - {variant: b, ranges: [[2500, 10000]]}
"#;

    fn compile(text: &str, resolve: &Resolve) -> Result<Routing, RoutingError> {
        parse(Path::new("router.yaml"), text.as_bytes(), resolve)
    }

    #[test]
    fn a_valid_file_compiles_with_resolve_applied() {
        let resolve = Resolve::parse(&["b.ns.svc:8080=127.0.0.1:9000".to_string()]).unwrap();
        let routing = compile(CONFIG, &resolve).unwrap();
        assert_eq!(routing.upstreams[0].base, "http://a.ns.svc:8080");
        assert_eq!(routing.upstreams[0].host, None);
        assert_eq!(routing.upstreams[1].base, "http://127.0.0.1:9000");
        assert_eq!(routing.upstreams[1].host.as_ref().unwrap(), "b.ns.svc:8080");
        assert_eq!(
            (routing.owner(0), routing.owner(2499), routing.owner(2500)),
            (0, 0, 1)
        );
        assert_eq!(routing.owner(9999), 1);
    }

    #[test]
    fn files_that_would_misroute_are_refused_with_the_reason() {
        let cases = [
            (
                CONFIG.replace("[[2500, 10000]]", "[[2500, 9999]]"),
                "every bucket",
            ),
            (CONFIG.replace("[[0, 2500]]", "[[0, 2600]]"), "every bucket"),
            (
                CONFIG.replace("{variant: b,", "{variant: c,"),
                "unknown variant",
            ),
            (CONFIG.replace("name: b,", "name: a,"), "appears twice"),
            (CONFIG.replace(", key: x-user", ""), "assignment.key"),
            (
                CONFIG.replace("http://a.ns.svc:8080", "http://a.ns.svc:8080/v1"),
                "no path",
            ),
            (CONFIG.replace("http://a.ns.svc:8080", "ftp://a"), "http"),
            (
                CONFIG.replace("generation: 3", "generation: -1"),
                "cannot parse",
            ),
        ];
        for (text, reason) in cases {
            let error = compile(&text, &Resolve::default()).unwrap_err().to_string();
            assert!(error.contains(reason), "{reason}: {error}");
        }
        let random = CONFIG.replace(
            "{by: header, key: x-user, seed: 1}",
            "{by: random, seed: 1}",
        );
        assert!(compile(&random, &Resolve::default()).is_ok());
    }

    #[test]
    fn resolve_entries_are_host_port_equals_addr() {
        assert!(Resolve::parse(&["a:80=127.0.0.1:1".into()]).is_ok());
        for bad in [
            "a:80",
            "a=127.0.0.1:1",
            "a:x=127.0.0.1:1",
            "a:80=localhost:1",
            "*:80=127.0.0.1:1",
            "*.:80=127.0.0.1:1",
            "a.*.svc:80=127.0.0.1:1",
            "*.*.svc:80=127.0.0.1:1",
            ":80=127.0.0.1:1",
        ] {
            let error = Resolve::parse(&[bad.to_string()]).unwrap_err().to_string();
            assert!(error.contains("--resolve"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_wildcard_entry_covers_every_name_under_its_domain_and_an_exact_one_wins() {
        let resolve = Resolve::parse(&[
            "*.ns.svc.cluster.local:80=127.0.0.1:1".into(),
            "*.svc.cluster.local:80=127.0.0.1:2".into(),
            "b.ns.svc.cluster.local:80=127.0.0.1:3".into(),
        ])
        .unwrap();
        let at = |host: &str, port: u16| resolve.lookup(host, port).map(|a| a.port());
        assert_eq!(at("a.ns.svc.cluster.local", 80), Some(1));
        assert_eq!(at("A.NS.svc.cluster.local", 80), Some(1));
        assert_eq!(at("a.other.svc.cluster.local", 80), Some(2));
        assert_eq!(at("b.ns.svc.cluster.local", 80), Some(3));
        // The domain itself is not under it; another port is another entry.
        assert_eq!(at("ns.svc.cluster.local", 80), Some(2));
        assert_eq!(at("svc.cluster.local", 80), None);
        assert_eq!(at("a.ns.svc.cluster.local", 8080), None);
        assert_eq!(at("a.ns.svc.cluster.localhost", 80), None);
        // Applied to a variant's URL: the connection goes to the proxy, the Host names the Service.
        let server = Server::parse("http://a.ns.svc.cluster.local:80", &resolve).unwrap();
        assert_eq!(server.base, "http://127.0.0.1:1");
        assert_eq!(server.host.unwrap(), "a.ns.svc.cluster.local:80");
    }
}
