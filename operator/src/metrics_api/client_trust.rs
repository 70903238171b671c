//! Which clients the metrics API trusts in `requestheader` mode, kept current.
//!
//! An aggregated API server trusts the kube-apiserver's front proxy the way the apiserver
//! publishes it in `kube-system/extension-apiserver-authentication`: a client certificate signed
//! by `requestheader-client-ca-file` AND, when `requestheader-allowed-names` is not empty, with a
//! common name from that list (any other holder of a certificate from the same CA is not the
//! front proxy). The CA rotates: the ConfigMap is watched and the new trust applies to the next
//! handshake, without a restart.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Where the apiserver publishes its front proxy's trust.
pub const NAMESPACE: &str = "kube-system";
pub const CONFIG_MAP: &str = "extension-apiserver-authentication";
const CA_KEY: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";

/// The front proxy's trust as published: its CA bundle (PEM) and the common names allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxyTrust {
    pub ca_pem: String,
    /// Empty: any certificate from the CA.
    pub allowed_names: BTreeSet<String>,
}

/// Reads the trust out of the ConfigMap's data.
pub fn parse_trust(config_map: &ConfigMap) -> Result<FrontProxyTrust> {
    let data = config_map.data.clone().unwrap_or_default();
    let ca_pem = data
        .get(CA_KEY)
        .filter(|pem| !pem.trim().is_empty())
        .cloned()
        .with_context(|| {
            format!(
                "{NAMESPACE}/{CONFIG_MAP} has no {CA_KEY}: the apiserver runs without \
                 --requestheader-client-ca-file, so aggregated APIs cannot authenticate it"
            )
        })?;
    // The apiserver writes the names as a JSON list of strings.
    let allowed_names = match data.get(ALLOWED_NAMES_KEY).map(|s| s.trim()) {
        None | Some("") => BTreeSet::new(),
        Some(text) => serde_json::from_str::<Vec<String>>(text)
            .with_context(|| format!("{NAMESPACE}/{CONFIG_MAP}: {ALLOWED_NAMES_KEY} {text:?}"))?
            .into_iter()
            .collect(),
    };
    Ok(FrontProxyTrust {
        ca_pem,
        allowed_names,
    })
}

/// What a handshake is checked against: built from one [`FrontProxyTrust`].
#[derive(Debug)]
struct Current {
    trust: FrontProxyTrust,
    chain: Arc<dyn ClientCertVerifier>,
}

/// A client certificate verifier whose CA and allowed names can be replaced while serving.
#[derive(Debug)]
pub struct FrontProxyVerifier {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Current>>,
}

impl FrontProxyVerifier {
    pub fn new(trust: FrontProxyTrust, provider: Arc<CryptoProvider>) -> Result<Self> {
        let current = build(trust, &provider)?;
        Ok(Self {
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Applies a newly published trust; a trust that cannot be used keeps the previous one.
    pub fn update(&self, trust: FrontProxyTrust) -> Result<bool> {
        if self.current().trust == trust {
            return Ok(false);
        }
        let next = build(trust, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(true)
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn build(trust: FrontProxyTrust, provider: &Arc<CryptoProvider>) -> Result<Current> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust.ca_pem.as_bytes()) {
        roots
            .add(cert.context("parsing the front proxy CA")?)
            .context("adding the front proxy CA")?;
    }
    if roots.is_empty() {
        bail!("the front proxy CA bundle holds no certificate");
    }
    let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    Ok(Current { trust, chain })
}

/// The subject common name of a DER certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

impl ClientCertVerifier for FrontProxyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a trust that may be replaced; they are optional, and the
        // apiserver presents its front-proxy certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current();
        current
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if current.trust.allowed_names.is_empty() {
            return Ok(ClientCertVerified::assertion());
        }
        match common_name(end_entity) {
            Some(cn) if current.trust.allowed_names.contains(&cn) => {
                Ok(ClientCertVerified::assertion())
            }
            cn => {
                tracing::warn!(
                    common_name = cn.as_deref().unwrap_or("(none)"),
                    allowed = ?current.trust.allowed_names,
                    "refused a client certificate from the front proxy CA: its name is not in \
                     requestheader-allowed-names"
                );
                Err(rustls::Error::General(format!(
                    "client certificate common name {:?} is not in {ALLOWED_NAMES_KEY}",
                    cn.unwrap_or_default()
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads the published trust once (the start fails with a clear message when it cannot).
pub async fn read_trust(client: &Client) -> Result<FrontProxyTrust> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let config_map = api.get(CONFIG_MAP).await.with_context(|| {
        format!(
            "reading {NAMESPACE}/{CONFIG_MAP} (the operator needs the \
             extension-apiserver-authentication-reader Role there; or pass \
             --metrics-api-client-auth none|<ca file>)"
        )
    })?;
    parse_trust(&config_map)
}

/// Watches the ConfigMap and applies every change to `verifier`, for as long as the process
/// runs. Watch errors are retried with backoff; a trust that cannot be used is logged and the
/// previous one kept.
pub async fn keep_current(client: Client, verifier: Arc<FrontProxyVerifier>) {
    let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    let mut changes = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = changes.next().await {
        let outcome = match event {
            Ok(config_map) => parse_trust(&config_map).and_then(|t| verifier.update(t)),
            Err(e) => Err(anyhow::anyhow!("watching {NAMESPACE}/{CONFIG_MAP}: {e}")),
        };
        match outcome {
            Ok(true) => tracing::info!("front proxy trust changed: applied to new connections"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "front proxy trust not updated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn allowed_names_are_the_published_json_list() {
        let trust = parse_trust(&config_map(&[
            (CA_KEY, "PEM"),
            (ALLOWED_NAMES_KEY, r#"["front-proxy-client","aggregator"]"#),
        ]))
        .unwrap();
        assert_eq!(
            trust.allowed_names,
            BTreeSet::from(["front-proxy-client".to_string(), "aggregator".to_string()])
        );
        let any = parse_trust(&config_map(&[(CA_KEY, "PEM"), (ALLOWED_NAMES_KEY, "")])).unwrap();
        assert!(any.allowed_names.is_empty());
    }

    #[test]
    fn missing_ca_or_malformed_names_say_what_is_wrong() {
        let missing = parse_trust(&config_map(&[])).unwrap_err().to_string();
        assert!(missing.contains(CA_KEY), "{missing}");
        let malformed = parse_trust(&config_map(&[(CA_KEY, "PEM"), (ALLOWED_NAMES_KEY, "[")]))
            .unwrap_err()
            .to_string();
        assert!(malformed.contains(ALLOWED_NAMES_KEY), "{malformed}");
    }
}
