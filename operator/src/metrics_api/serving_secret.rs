//! The metrics API's default serving certificate, kept in a Secret.
//!
//! Without certificate files, every replica serves the certificate in one Secret of the
//! operator's namespace (`ca.crt`, `tls.crt`, `tls.key`): the first replica to start generates a
//! private CA and a serving certificate for the Service's DNS names, the others (and every later
//! start) read them. So the certificate is the same on every replica and across restarts, and
//! the APIService can carry the CA as `caBundle` instead of `insecureSkipTLSVerify` (see
//! [`super::ca_bundle`]). A Secret that no longer fits (other names, close to expiry, unreadable)
//! is replaced, guarded by its resourceVersion so that two replicas never both replace it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{Timestamp, ToSpan, tz::TimeZone};
use kube::api::PostParams;
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";

/// How long the generated CA and certificate are valid. Long, because nothing rotates them
/// but a replacement of the Secret; [`RENEW_BEFORE_DAYS`] before the end, a start replaces them.
const VALIDITY_YEARS: i16 = 10;
const RENEW_BEFORE_DAYS: i64 = 30;

/// The serving material: the CA to publish, and the certificate and key to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a Secret's material cannot be served as it is.
fn unusable(material: &ServingMaterial, names: &[String], now: Timestamp) -> Option<String> {
    let der = match CertificateDer::from_pem_slice(material.cert_pem.as_bytes()) {
        Ok(der) => der,
        Err(e) => return Some(format!("{CERT_KEY} is not a PEM certificate: {e}")),
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Some(format!("{CERT_KEY} cannot be parsed"));
    };
    let renew_at = now.as_second() + RENEW_BEFORE_DAYS * 24 * 3600;
    if cert.validity().not_after.timestamp() < renew_at {
        return Some(format!(
            "{CERT_KEY} expires within {RENEW_BEFORE_DAYS} days"
        ));
    }
    let dns_names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let missing: Vec<&String> = names.iter().filter(|n| !dns_names.contains(n)).collect();
    if !missing.is_empty() {
        return Some(format!("{CERT_KEY} is not valid for {missing:?}"));
    }
    if CertificateDer::from_pem_slice(material.ca_pem.as_bytes()).is_err() {
        return Some(format!("{CA_KEY} is not a PEM certificate"));
    }
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = super::tls::certified_key(
        material.cert_pem.as_bytes(),
        material.key_pem.as_bytes(),
        &provider,
    ) {
        return Some(format!(
            "{PRIVATE_KEY_KEY} does not serve {CERT_KEY}: {e:#}"
        ));
    }
    None
}

/// A new private CA and a serving certificate it signed for `names`.
pub fn generate(names: &[String], now: Timestamp) -> Result<ServingMaterial> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let today = now.to_zoned(TimeZone::UTC).date();
    // The day before today, so that a replica whose clock is a little behind accepts it too.
    let start = today
        .checked_sub(1.day())
        .context("computing the validity start")?;
    let end = start
        .checked_add(VALIDITY_YEARS.years())
        .context("computing the validity end")?;
    let date = |d: k8s_openapi::jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };

    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lexserve-operator metrics API CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = date(start);
    ca_params.not_after = date(end);
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-signing the CA")?;

    let mut params = CertificateParams::new(names.to_vec()).context("certificate parameters")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lexserve-operator metrics API");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = date(start);
    params.not_after = date(end);
    let key = KeyPair::generate().context("generating the serving key")?;
    let cert = params
        .signed_by(&key, &ca)
        .context("signing the serving certificate")?;
    Ok(ServingMaterial {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn material_of(secret: &Secret) -> ServingMaterial {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    ServingMaterial {
        ca_pem: text(CA_KEY),
        cert_pem: text(CERT_KEY),
        key_pem: text(PRIVATE_KEY_KEY),
    }
}

fn secret_with(name: &str, material: &ServingMaterial, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "lexserve-operator".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (CA_KEY.to_string(), bytes(&material.ca_pem)),
            (CERT_KEY.to_string(), bytes(&material.cert_pem)),
            (PRIVATE_KEY_KEY.to_string(), bytes(&material.key_pem)),
        ])),
        ..Default::default()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// The material in Secret `namespace/name`, created or replaced first when it is missing or no
/// longer fits `names`.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> Result<ServingMaterial> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let context = || {
        format!(
            "the metrics API's serving certificate in Secret {namespace}/{name} (the operator \
             needs get, create and update on it; or pass --metrics-api-cert-file)"
        )
    };
    // Another replica may create or replace it between our read and write: read again then.
    for _ in 0..5 {
        let existing = api.get_opt(name).await.with_context(context)?;
        let now = Timestamp::now();
        let written = match existing {
            Some(secret) => {
                let material = material_of(&secret);
                let Some(reason) = unusable(&material, names, now) else {
                    return Ok(material);
                };
                tracing::info!(%reason, secret = name, "replacing the metrics API certificate");
                let fresh = generate(names, now)?;
                let mut replacement =
                    secret_with(name, &fresh, secret.metadata.resource_version.clone());
                // A Secret someone else created for us (the Helm chart does, so that uninstalling
                // the chart removes it) keeps its labels and annotations (Helm's ownership) and
                // its type (immutable: the chart's is Opaque, with no keys for Helm to own).
                replacement.metadata.labels = secret.metadata.labels.clone();
                replacement.metadata.annotations = secret.metadata.annotations.clone();
                replacement.type_ = secret.type_.clone();
                api.replace(name, &PostParams::default(), &replacement)
                    .await
                    .map(|_| fresh)
            }
            None => {
                let fresh = generate(names, now)?;
                api.create(&PostParams::default(), &secret_with(name, &fresh, None))
                    .await
                    .map(|_| fresh)
            }
        };
        match written {
            Ok(material) => return Ok(material),
            Err(e) if conflict(&e) => continue,
            Err(e) => return Err(e).with_context(context),
        }
    }
    bail!("{}: kept changing under concurrent writers", context())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "lexserve-operator.lexserve.svc".to_string(),
            "lexserve-operator.lexserve.svc.cluster.local".to_string(),
        ]
    }

    #[test]
    fn generated_material_is_usable_for_its_names_only() {
        let now = Timestamp::now();
        let material = generate(&names(), now).unwrap();
        assert_eq!(unusable(&material, &names(), now), None);
        let other = vec!["lexserve-operator.other.svc".to_string()];
        let reason = unusable(&material, &other, now).expect("other names are refused");
        assert!(reason.contains("other.svc"), "{reason}");
    }

    #[test]
    fn material_close_to_expiry_or_mismatched_is_replaced() {
        let now = Timestamp::now();
        let material = generate(&names(), now).unwrap();
        let later = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(
                24 * 365 * i64::from(VALIDITY_YEARS),
            ))
            .unwrap();
        let reason = unusable(&material, &names(), later).expect("expiring");
        assert!(reason.contains("expires"), "{reason}");
        let other = generate(&names(), now).unwrap();
        let mixed = ServingMaterial {
            key_pem: other.key_pem,
            ..material
        };
        let reason = unusable(&mixed, &names(), now).expect("wrong key");
        assert!(reason.contains(PRIVATE_KEY_KEY), "{reason}");
    }
}
