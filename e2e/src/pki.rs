//! Certificates and keys for the local control plane.
//!
//! A real apiserver needs real TLS: a cluster CA that signs the serving certificate and the
//! client certificates (the admin, kube-controller-manager and kube-scheduler identities, which
//! RBAC's bootstrap policy knows by name), a separate front-proxy CA whose client certificate
//! the aggregation layer presents to extension apiservers, and a key pair that signs
//! service-account tokens. All are generated in-process with rcgen, fresh for each cluster.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// The first address of the service CIDR: the apiserver's in-cluster Service IP, which the
/// serving certificate must name.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The name the front-proxy client certificate carries; the apiserver is told to accept it
/// (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// All files of a cluster's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: CertFiles,
    pub front_proxy_ca: CertFiles,
    /// Serving certificate for 127.0.0.1/localhost and the in-cluster apiserver names. The
    /// controller-manager, scheduler and kwok serve with it too: all listen on loopback.
    pub serving: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    pub front_proxy_client: CertFiles,
    /// Service-account token signing key (private) and its public half.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Generates a fresh PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = new_ca("lexserve-e2e-ca")?;
        let front_proxy_ca = new_ca("lexserve-e2e-front-proxy-ca")?;

        let serving_names = vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            KUBERNETES_SERVICE_IP.to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ];
        let serving = leaf(&ca, "kube-apiserver", None, serving_names, true)?;
        let admin = leaf(&ca, "lexserve-admin", Some("system:masters"), vec![], false)?;
        let controller_manager = leaf(&ca, "system:kube-controller-manager", None, vec![], false)?;
        let scheduler = leaf(&ca, "system:kube-scheduler", None, vec![], false)?;
        let front_proxy_client = leaf(&front_proxy_ca, FRONT_PROXY_CLIENT_CN, None, vec![], false)?;
        let sa = KeyPair::generate().context("generating the service-account key")?;

        let write = |name: &str, (cert, key): &(String, String)| -> Result<CertFiles> {
            let files = CertFiles {
                cert: dir.join(format!("{name}.crt")),
                key: dir.join(format!("{name}.key")),
            };
            write_file(&files.cert, cert)?;
            write_file(&files.key, key)?;
            Ok(files)
        };
        let pki = Pki {
            ca: write("ca", &(ca.pem(), ca.key().serialize_pem()))?,
            front_proxy_ca: write(
                "front-proxy-ca",
                &(front_proxy_ca.pem(), front_proxy_ca.key().serialize_pem()),
            )?,
            serving: write("serving", &serving)?,
            admin: write("admin", &admin)?,
            controller_manager: write("controller-manager", &controller_manager)?,
            scheduler: write("scheduler", &scheduler)?,
            front_proxy_client: write("front-proxy-client", &front_proxy_client)?,
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        write_file(&pki.service_account_key, &sa.serialize_pem())?;
        write_file(&pki.service_account_pub, &sa.public_key_pem())?;
        Ok(pki)
    }
}

/// A self-signed certificate and key for a test server (e.g. one behind an APIService), valid
/// for 127.0.0.1 and localhost. Returns (certificate PEM, key PEM).
pub fn self_signed_localhost() -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .context("certificate parameters")?;
    params.distinguished_name = name("lexserve-e2e-test-server", None);
    let cert = params.self_signed(&key).context("self-signing")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CA that mints client certificates, for tests that publish a CA of their own (a rotated
/// front-proxy CA, for example).
pub struct TestCa(CertifiedIssuer<'static, KeyPair>);

impl TestCa {
    pub fn new(cn: &str) -> Result<Self> {
        Ok(Self(new_ca(cn)?))
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A client certificate with common name `cn`: (certificate PEM, key PEM).
    pub fn client_cert(&self, cn: &str) -> Result<(String, String)> {
        leaf(&self.0, cn, None, vec![], false)
    }
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn new_ca(cn: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("generating a CA key")?;
    CertifiedIssuer::self_signed(params, key).with_context(|| format!("self-signing {cn}"))
}

/// A leaf certificate signed by `ca`: a server certificate for `names` when `server`, else a
/// client certificate whose CN is the user and whose O is the group.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    org: Option<&str>,
    names: Vec<String>,
    server: bool,
) -> Result<(String, String)> {
    let mut params = CertificateParams::new(names).context("certificate parameters")?;
    params.distinguished_name = name(cn, org);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        // Servers also act as clients of each other (kwok, the aggregator): allow both.
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("signing the certificate of {cn}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
