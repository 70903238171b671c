//! The mirror's settings (flags) and its configuration file (`mirror.yaml`, written by the
//! operator), checked and compiled for the request path: each target's candidate server with
//! `--resolve` applied, its redaction compiled, its limits as durations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lexserve_contract::mirror::{CONFIG_FILE, ComparisonMode, MirrorConfig, MirrorTarget};
use lexserve_contract::router::AssignmentSource;
use thiserror::Error;

use super::redact::Redactor;
use crate::config::ConfigError;
use crate::route::config::{Resolve, Server};

/// Where `serve` reads its mirror configuration, and where candidates' URLs connect.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub path: PathBuf,
    pub resolve: Resolve,
}

impl MirrorSettings {
    /// `--mirror-config`, else `mirror.yaml` beside `--config`; None (no mirror) without either.
    pub fn resolve(
        config: Option<&Path>,
        mirror_config: Option<&Path>,
        resolve: &[String],
    ) -> Result<Option<Self>, ConfigError> {
        let resolve = Resolve::parse(resolve)?;
        let path = match (mirror_config, config) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(config)) => config.with_file_name(CONFIG_FILE),
            (None, None) => return Ok(None),
        };
        Ok(Some(Self { path, resolve }))
    }
}

/// Why a mirror configuration file cannot be used (the sidecar keeps the one it has).
#[derive(Debug, Error, PartialEq)]
pub enum MirrorConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid mirror configuration: target {shadow:?}: {field}: {message}")]
    Invalid {
        shadow: String,
        field: &'static str,
        message: String,
    },
}

/// One target, ready for the request path.
#[derive(Debug)]
pub struct Target {
    pub spec: MirrorTarget,
    /// Where its copies go.
    pub server: Server,
    pub redactor: Redactor,
    pub timeout: Duration,
}

/// A configuration ready for the request path.
#[derive(Debug, Default)]
pub struct Mirroring {
    pub generation: u64,
    pub targets: Vec<Target>,
}

impl Mirroring {
    /// Checks every target and compiles them: a file with one bad target is refused whole (a
    /// half-applied file would mirror a configuration nobody wrote).
    pub fn compile(config: MirrorConfig, resolve: &Resolve) -> Result<Self, MirrorConfigError> {
        let mut targets: Vec<Target> = Vec::with_capacity(config.targets.len());
        for spec in config.targets {
            let target = compile_target(spec, resolve)?;
            if targets.iter().any(|t| t.spec.shadow == target.spec.shadow) {
                return Err(invalid(&target.spec, "shadow", "appears twice"));
            }
            targets.push(target);
        }
        Ok(Self {
            generation: config.generation,
            targets,
        })
    }
}

fn invalid(
    spec: &MirrorTarget,
    field: &'static str,
    message: impl Into<String>,
) -> MirrorConfigError {
    MirrorConfigError::Invalid {
        shadow: spec.shadow.clone(),
        field,
        message: message.into(),
    }
}

fn compile_target(spec: MirrorTarget, resolve: &Resolve) -> Result<Target, MirrorConfigError> {
    if spec.shadow.trim().is_empty() {
        return Err(invalid(&spec, "shadow", "must not be empty"));
    }
    if spec.model.trim().is_empty() {
        return Err(invalid(&spec, "model", "must not be empty"));
    }
    if spec.percent > 100 {
        return Err(invalid(
            &spec,
            "percent",
            format!("{} is not in 0..=100", spec.percent),
        ));
    }
    let server = Server::parse(&spec.url, resolve)
        .map_err(|message| invalid(&spec, "url", format!("{:?}: {message}", spec.url)))?;
    if spec.sampling.by != AssignmentSource::Random
        && spec.sampling.key.as_deref().is_none_or(str::is_empty)
    {
        return Err(invalid(
            &spec,
            "sampling.key",
            format!("is required with sampling.by {:?}", spec.sampling.by),
        ));
    }
    let tolerance = spec.comparison.tolerance;
    if !(0.0..=1.0).contains(&tolerance) {
        return Err(invalid(
            &spec,
            "comparison.tolerance",
            format!("{tolerance} is not in 0..=1"),
        ));
    }
    match (spec.comparison.mode, spec.comparison.k) {
        (ComparisonMode::TopK, None | Some(0)) => {
            return Err(invalid(
                &spec,
                "comparison.k",
                "must be at least 1 with mode TopK",
            ));
        }
        (ComparisonMode::TopK, Some(_)) | (_, None) => {}
        (mode, Some(_)) => {
            return Err(invalid(
                &spec,
                "comparison.k",
                format!("only applies to mode TopK, not {mode:?}"),
            ));
        }
    }
    let limits = &spec.limits;
    for (field, value) in [
        ("limits.queue", u64::from(limits.queue)),
        ("limits.concurrency", u64::from(limits.concurrency)),
        ("limits.timeoutMs", limits.timeout_ms),
    ] {
        if value == 0 {
            return Err(invalid(&spec, field, "must be at least 1"));
        }
    }
    let redactor =
        Redactor::compile(&spec.redaction).map_err(|e| invalid(&spec, e.field, e.message))?;
    Ok(Target {
        timeout: Duration::from_millis(spec.limits.timeout_ms),
        server,
        redactor,
        spec,
    })
}

/// Compiles a file's content, or what its absence means: no targets (generation 0). Any other
/// read error is an error.
pub fn compile_file(
    path: &Path,
    read: Result<&[u8], &std::io::Error>,
    resolve: &Resolve,
) -> Result<Mirroring, MirrorConfigError> {
    let text = match read {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Mirroring::default());
        }
        Err(error) => {
            return Err(MirrorConfigError::Read {
                path: path.to_path_buf(),
                message: error.to_string(),
            });
        }
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Mirroring::default());
    }
    let config: MirrorConfig =
        serde_yaml::from_slice(text).map_err(|e| MirrorConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Mirroring::compile(config, resolve)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
generation: 7
targets:
  - shadow: s1
    url: "http://cand.ns.svc:8080"
    model: cand
    percent: 50
    sampling: {by: header, key: x-user, seed: 3}
    comparison: {mode: TopK, tolerance: 0.5, k: 2}
    redaction: {fields: [user.email], patterns: ["\\d{4}"]}
    limits: {queue: 8, concurrency: 2, timeoutMs: 500}
  - shadow: s2
    url: "http://other:80/"
    model: other
    percent: 100
    sampling: {by: random, seed: 0}
    comparison: {mode: Cosine, tolerance: 0.001}
"#;

    fn compile(text: &str) -> Result<Mirroring, MirrorConfigError> {
        let resolve = Resolve::parse(&["cand.ns.svc:8080=127.0.0.1:9000".to_string()]).unwrap();
        compile_file(Path::new("mirror.yaml"), Ok(text.as_bytes()), &resolve)
    }

    #[test]
    fn a_valid_file_compiles_with_resolve_and_defaults_applied() {
        let mirroring = compile(CONFIG).unwrap();
        assert_eq!(mirroring.generation, 7);
        let [s1, s2] = &mirroring.targets[..] else {
            panic!("two targets")
        };
        assert_eq!(s1.server.base, "http://127.0.0.1:9000");
        assert_eq!(s1.server.host.as_ref().unwrap(), "cand.ns.svc:8080");
        assert_eq!(s1.timeout, Duration::from_millis(500));
        assert_eq!(s2.server.base, "http://other:80");
        assert_eq!(s2.server.host, None);
        assert_eq!(s2.spec.limits, Default::default());
    }

    #[test]
    fn the_file_is_beside_the_config_unless_named() {
        let config = Path::new("/etc/lexserve/config.yaml");
        let beside = MirrorSettings::resolve(Some(config), None, &[]).unwrap();
        assert_eq!(beside.unwrap().path, Path::new("/etc/lexserve/mirror.yaml"));
        let named = MirrorSettings::resolve(Some(config), Some(Path::new("/m/x.yaml")), &[]);
        assert_eq!(named.unwrap().unwrap().path, Path::new("/m/x.yaml"));
        assert!(MirrorSettings::resolve(None, None, &[]).unwrap().is_none());
        let error = MirrorSettings::resolve(Some(config), None, &["c:80".into()]).unwrap_err();
        assert!(error.to_string().contains("--resolve"), "{error}");
    }

    #[test]
    fn absent_or_empty_files_mirror_nothing() {
        let resolve = Resolve::default();
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let mirroring = compile_file(Path::new("m"), Err(&missing), &resolve).unwrap();
        assert!(mirroring.targets.is_empty());
        assert_eq!(mirroring.generation, 0);
        assert!(compile(" \n").unwrap().targets.is_empty());
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            compile_file(Path::new("m"), Err(&denied), &resolve),
            Err(MirrorConfigError::Read { .. })
        ));
    }

    #[test]
    fn invalid_files_are_refused_naming_the_field() {
        let cases = [
            (CONFIG.replace("percent: 50", "percent: 101"), "percent"),
            (
                CONFIG.replace("\\\\d{4}", "(unclosed"),
                "redaction.patterns",
            ),
            (CONFIG.replace("queue: 8", "queue: 0"), "limits.queue"),
            (
                CONFIG.replace("concurrency: 2", "concurrency: 0"),
                "limits.concurrency",
            ),
            (
                CONFIG.replace("timeoutMs: 500", "timeoutMs: 0"),
                "limits.timeoutMs",
            ),
            (
                CONFIG.replace("http://cand.ns.svc:8080", "not a url"),
                "url",
            ),
            (
                CONFIG.replace("http://cand.ns.svc:8080", "http://c:1/v1"),
                "url",
            ),
            (CONFIG.replace(", key: x-user", ""), "sampling.key"),
            (
                CONFIG.replace("tolerance: 0.5", "tolerance: 1.5"),
                "comparison.tolerance",
            ),
            (CONFIG.replace(", k: 2", ""), "comparison.k"),
            (
                CONFIG.replace("tolerance: 0.001", "tolerance: 0.001, k: 3"),
                "comparison.k",
            ),
            (CONFIG.replace("shadow: s2", "shadow: s1"), "appears twice"),
            (CONFIG.replace("model: cand", "model: ''"), "model"),
            (
                CONFIG.replace("user.email", "user..email"),
                "redaction.fields",
            ),
            (
                CONFIG.replace("generation: 7", "generation: -1"),
                "cannot parse",
            ),
        ];
        for (text, field) in cases {
            let error = compile(&text).unwrap_err().to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
    }
}
