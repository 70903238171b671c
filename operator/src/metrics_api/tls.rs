//! TLS for the external metrics API.
//!
//! The serving certificate comes from files (a Secret mounted by the chart, for example from
//! cert-manager; re-read when the files change, so a rotation needs no restart) or, by default,
//! from the Secret all replicas share (see [`super::serving_secret`]), whose CA the operator
//! puts into the APIService's `caBundle`.
//!
//! Clients are authenticated the way every aggregated API server authenticates the
//! kube-apiserver: the apiserver proxies with its front-proxy client certificate, signed by the
//! CA it publishes as `requestheader-client-ca-file` in the ConfigMap
//! `kube-system/extension-apiserver-authentication`, with a name from its
//! `requestheader-allowed-names` (see [`super::client_trust`], which keeps both current). A
//! connection without such a certificate is refused during the handshake, so only requests the
//! apiserver has authenticated and authorized (RBAC on `external.metrics.k8s.io`) reach the
//! handlers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::client_trust::{self, FrontProxyVerifier};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum ServingCert {
    /// PEM files, re-read when their modification time changes.
    Files { cert: PathBuf, key: PathBuf },
    /// PEM held in memory (the shared Secret's material).
    Pem { cert: String, key: String },
}

/// Which clients may connect.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// Only the apiserver's front proxy: a certificate from its request-header CA with an
    /// allowed name, as published in kube-system/extension-apiserver-authentication.
    RequestHeader,
    /// Only holders of a certificate from the CA in this PEM file.
    CaFile(PathBuf),
    /// Anyone (for a cluster whose apiserver has no front-proxy certificate; not recommended).
    None,
}

/// The metrics API's TLS: the rustls configuration, and in `requestheader` mode the verifier
/// to keep current with [`client_trust::keep_current`].
pub struct MetricsTls {
    pub config: Arc<rustls::ServerConfig>,
    pub front_proxy: Option<Arc<FrontProxyVerifier>>,
}

/// The rustls configuration for the metrics API.
pub async fn server_config(
    client: &Client,
    serving: &ServingCert,
    auth: &ClientAuth,
) -> Result<MetricsTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver: Arc<dyn ResolvesServerCert> = match serving {
        ServingCert::Files { cert, key } => Arc::new(FileCert::load(cert, key, &provider)?),
        ServingCert::Pem { cert, key } => Arc::new(rustls::sign::SingleCertAndKey::from(
            certified_key(cert.as_bytes(), key.as_bytes(), &provider)?,
        )),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut front_proxy = None;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::RequestHeader => {
            let trust = client_trust::read_trust(client).await?;
            let verifier = Arc::new(FrontProxyVerifier::new(trust, provider.clone())?);
            front_proxy = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::CaFile(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the client CA {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.context("parsing the client CA")?)
                    .context("adding the client CA")?;
            }
            if roots.is_empty() {
                bail!("the client CA holds no certificate");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(MetricsTls {
        config: Arc::new(config),
        front_proxy,
    })
}

pub(super) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the serving certificate")?;
    if certs.is_empty() {
        bail!("the serving certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the serving key")?;
    CertifiedKey::from_der(certs, key, provider).context("the serving certificate and key")
}

/// A certificate read from files and re-read when they change (checked at most every 10 s,
/// during handshakes). A failed re-read keeps the previous certificate and logs why.
#[derive(Debug)]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: Mutex<FileCertState>,
}

#[derive(Debug)]
struct FileCertState {
    current: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

const RECHECK: Duration = Duration::from_secs(10);

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl FileCert {
    fn load(
        cert: &Path,
        key: &Path,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self> {
        let current = Self::read(cert, key, provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider: provider.clone(),
            state: Mutex::new(FileCertState {
                current: Arc::new(current),
                modified: (modified(cert), modified(key)),
                checked: Instant::now(),
            }),
        })
    }

    fn read(
        cert: &Path,
        key: &Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<CertifiedKey> {
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        certified_key(&cert_pem, &key_pem, provider)
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = (modified(&self.cert), modified(&self.key));
            if now != state.modified {
                match Self::read(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        state.current = Arc::new(key);
                        state.modified = now;
                    }
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "serving certificate changed but cannot be read; keeping the previous one"
                    ),
                }
            }
        }
        Some(state.current.clone())
    }
}
