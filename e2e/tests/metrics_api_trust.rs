//! The external metrics API's TLS on a real control plane (issue 13, item 13).
//!
//! - The default serving certificate is the same on every replica and across restarts: it lives
//!   in a Secret, and the operator keeps the APIService's `caBundle` at its CA, so the apiserver
//!   verifies the metrics API instead of skipping verification.
//! - In `requestheader` mode only the front proxy gets in: a certificate from the CA published in
//!   `kube-system/extension-apiserver-authentication` AND with a name from its
//!   `requestheader-allowed-names`; a CA published later is trusted without a restart.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use lexserve_e2e::LocalCluster;
use lexserve_e2e::aggregation::{BackendTrust, register_local_apiservice};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::pki::{FRONT_PROXY_CLIENT_CN, TestCa};
use lexserve_e2e::wait::{self, Poll};
use serde_json::json;

/// Where the e2e operators run (their lease, Secret and Service).
const OPERATOR_NAMESPACE: &str = "default";
const SECRET: &str = "lexserve-operator-metrics-api-tls";
const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";

async fn operator(cluster: &LocalCluster, identity: &str) -> OperatorProcess {
    OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: identity.to_string(),
            lease_name: format!("lease-{identity}"),
            metrics_api: true,
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator starts")
}

/// The cluster's own front-proxy client certificate and key (PEM, concatenated).
fn front_proxy_identity(cluster: &LocalCluster) -> Vec<u8> {
    let pki = cluster.work_dir().join("pki");
    let mut pem = std::fs::read(pki.join("front-proxy-client.crt")).expect("front proxy cert");
    pem.extend(std::fs::read(pki.join("front-proxy-client.key")).expect("front proxy key"));
    pem
}

/// A direct HTTPS client of the metrics API presenting `identity` (certificate + key PEM). The
/// server's certificate is read, not verified: it is valid for the Service's names, and this
/// client connects to 127.0.0.1.
fn direct_client(identity: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .identity(reqwest::Identity::from_pem(identity).expect("identity"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// GETs discovery from the operator's metrics API: the status, and the certificate it served.
async fn discovery(port: u16, identity: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let response = direct_client(identity)
        .get(format!("https://127.0.0.1:{port}{DISCOVERY}"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let cert = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok((response.status().as_u16(), cert))
}

/// The PEM certificate as DER, to compare with what a handshake presents.
fn der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem)
        .expect("PEM certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_restarts_serve_one_certificate_that_the_apiservice_trusts() {
    let cluster = lexserve_e2e::shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let identity = front_proxy_identity(cluster);
    let first = operator(cluster, "mapi-first").await;
    let port = first.metrics_api_port().expect("metrics API port");

    let secrets: Api<Secret> = Api::namespaced(cluster.client().unwrap(), OPERATOR_NAMESPACE);
    let secret = secrets
        .get(SECRET)
        .await
        .expect("the operator created its Secret");
    let data = secret.data.expect("Secret data");
    let stored_cert = der(&data["tls.crt"].0);
    let stored_ca = String::from_utf8(data["ca.crt"].0.clone()).expect("PEM");

    let (status, served) = discovery(port, &identity).await.expect("first replica");
    assert_eq!(status, 200);
    assert_eq!(
        served, stored_cert,
        "the first replica serves the Secret's certificate"
    );

    // Registered with neither caBundle nor insecureSkipTLSVerify: it can become Available only
    // once the operator has put its CA there, and the apiserver verified the certificate with it.
    register_local_apiservice(
        cluster,
        "external.metrics.k8s.io",
        "v1beta1",
        OPERATOR_NAMESPACE,
        "lexserve-operator",
        port,
        BackendTrust::CaBundleFromBackend,
        Duration::from_secs(90),
    )
    .await
    .unwrap_or_else(|e| panic!("APIService Available: {e:#}\n{}", first.log_tail(30)));
    let apiservice = cluster
        .kubectl(["get", "apiservice", APISERVICE, "-o", "json"])
        .await
        .expect("kubectl");
    let apiservice: serde_json::Value = serde_json::from_str(&apiservice.stdout).expect("JSON");
    let bundle = apiservice["spec"]["caBundle"].as_str().unwrap_or_default();
    let encoded = serde_json::to_value(k8s_openapi::ByteString(stored_ca.into_bytes())).unwrap();
    assert_eq!(
        Some(bundle),
        encoded.as_str(),
        "the caBundle is the Secret's CA"
    );
    assert_ne!(apiservice["spec"]["insecureSkipTLSVerify"], json!(true));
    cluster
        .get_raw(DISCOVERY)
        .await
        .expect("the apiserver reaches the metrics API with verification on");

    // A second replica, and a restart of the first: the same certificate.
    let second = operator(cluster, "mapi-second").await;
    let (_, served_second) = discovery(second.metrics_api_port().unwrap(), &identity)
        .await
        .expect("second replica");
    assert_eq!(
        served_second, stored_cert,
        "the second replica serves the same certificate"
    );
    drop(first);
    let restarted = operator(cluster, "mapi-restarted").await;
    let (_, served_again) = discovery(restarted.metrics_api_port().unwrap(), &identity)
        .await
        .expect("restarted replica");
    assert_eq!(
        served_again, stored_cert,
        "a restart serves the same certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_front_proxy_names_get_in_and_a_new_ca_is_trusted_without_restart() {
    let cluster = lexserve_e2e::shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let op = operator(cluster, "mapi-trust").await;
    let port = op.metrics_api_port().expect("metrics API port");

    // The apiserver's own front proxy gets in.
    let (status, _) = discovery(port, &front_proxy_identity(cluster))
        .await
        .expect("the front proxy is trusted");
    assert_eq!(status, 200);

    // A CA the apiserver has not published: its certificates are refused at the handshake.
    let rotated = TestCa::new("lexserve-e2e-rotated-front-proxy-ca").expect("CA");
    let (cert, key) = rotated.client_cert(FRONT_PROXY_CLIENT_CN).expect("cert");
    let allowed = format!("{cert}{key}").into_bytes();
    let (cert, key) = rotated.client_cert("intruder").expect("cert");
    let intruder = format!("{cert}{key}").into_bytes();
    assert!(
        discovery(port, &allowed).await.is_err(),
        "a certificate from an unpublished CA got in"
    );

    // Publish it next to the current one, as a CA rotation does.
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client().unwrap(), "kube-system");
    let published = config_maps
        .get("extension-apiserver-authentication")
        .await
        .expect("the apiserver publishes its front proxy trust");
    let bundle = published
        .data
        .as_ref()
        .and_then(|d| d.get("requestheader-client-ca-file"))
        .cloned()
        .expect("a front proxy CA");
    config_maps
        .patch(
            "extension-apiserver-authentication",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {
                "requestheader-client-ca-file": format!("{bundle}{}", rotated.pem()),
            }})),
        )
        .await
        .expect("publish the rotated CA");

    wait::until(
        "the rotated CA to be trusted",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            Ok(match discovery(port, &allowed).await {
                Ok((200, _)) => Poll::Ready(()),
                other => Poll::pending(format!("{other:?}")),
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", op.log_tail(20)));
    // Same CA, a name the apiserver does not allow: not the front proxy.
    assert!(
        discovery(port, &intruder).await.is_err(),
        "a certificate whose name is not in requestheader-allowed-names got in"
    );
    // The old CA is still trusted.
    let (status, _) = discovery(port, &front_proxy_identity(cluster))
        .await
        .expect("the front proxy is still trusted");
    assert_eq!(status, 200);
}
