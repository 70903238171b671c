//! The command lines of the control plane's components.

use std::path::Path;

use super::{ClusterOptions, Ports};
use crate::kwok;
use crate::pki::{FRONT_PROXY_CLIENT_CN, Pki};

/// The service CIDR; its first address is the `kubernetes` Service's (see [`crate::pki`]).
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The pod CIDR kwok hands pod IPs out of.
const POD_CIDR: &str = "10.244.0.0/16";

fn p(path: &Path) -> String {
    path.display().to_string()
}

pub(super) fn etcd_args(work_dir: &Path, ports: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=lexserve-e2e".into(),
        format!("--data-dir={}", p(&work_dir.join("etcd"))),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lexserve-e2e={peer}"),
        // A test cluster's data is thrown away: durability buys nothing and costs latency.
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

/// The audit policy's file in the work directory (see [`crate::audit`]).
pub(super) const AUDIT_POLICY_FILE: &str = "audit-policy.yaml";
/// The audit log's file in the log directory.
pub(super) const AUDIT_LOG_FILE: &str = "audit.log";

pub(super) fn apiserver_args(pki: &Pki, ports: &Ports, work_dir: &Path) -> Vec<String> {
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        "--authorization-mode=Node,RBAC".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p(&pki.service_account_pub)),
        format!(
            "--service-account-signing-key-file={}",
            p(&pki.service_account_key)
        ),
        // The aggregation layer: the apiserver proxies APIServices (external.metrics.k8s.io)
        // to their backends with the front-proxy client certificate.
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.cert)
        ),
        format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!(
            "--proxy-client-cert-file={}",
            p(&pki.front_proxy_client.cert)
        ),
        format!("--proxy-client-key-file={}", p(&pki.front_proxy_client.key)),
        // Routing stays off, on purpose. With it on, the aggregator resolves an APIService's
        // Service through its EndpointSlices and rejects ExternalName Services ("unsupported
        // service type \"ExternalName\"", seen on v1.36.3), and endpoint validation forbids
        // loopback addresses. With it off, an ExternalName Service resolves to
        // externalName:port, so `externalName: 127.0.0.1` reaches a process on this machine
        // (there is no kube-proxy here to make a ClusterIP reachable anyway).
        "--enable-aggregator-routing=false".into(),
        "--allow-privileged=true".into(),
        // The endpoint reconciler would publish 127.0.0.1 as the `kubernetes` Service's
        // endpoint, which validation rejects (loopback), logging errors forever.
        "--endpoint-reconciler-type=none".into(),
        "--event-ttl=1h".into(),
        "--profiling=false".into(),
        // Who wrote what, for tests that must tell two operators apart (see `crate::audit`).
        format!(
            "--audit-policy-file={}",
            p(&work_dir.join(AUDIT_POLICY_FILE))
        ),
        format!(
            "--audit-log-path={}",
            p(&work_dir.join("logs").join(AUDIT_LOG_FILE))
        ),
        "--audit-log-format=json".into(),
    ]
}

pub(super) fn controller_manager_args(
    pki: &Pki,
    ports: &Ports,
    kubeconfig: &Path,
    options: &ClusterOptions,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--authentication-kubeconfig={}", p(kubeconfig)),
        format!("--authorization-kubeconfig={}", p(kubeconfig)),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.controller_manager),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.cert)
        ),
        format!("--root-ca-file={}", p(&pki.ca.cert)),
        format!(
            "--service-account-private-key-file={}",
            p(&pki.service_account_key)
        ),
        format!("--cluster-signing-cert-file={}", p(&pki.ca.cert)),
        format!("--cluster-signing-key-file={}", p(&pki.ca.key)),
        // Each controller acts as its own ServiceAccount, with the bootstrap RBAC roles
        // (the HPA controller's includes reading external.metrics.k8s.io).
        "--use-service-account-credentials=true".into(),
        "--controllers=*".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!(
            "--horizontal-pod-autoscaler-sync-period={}s",
            options.hpa_sync_period.as_secs().max(1)
        ),
        format!(
            "--horizontal-pod-autoscaler-downscale-stabilization={}s",
            options.hpa_downscale_stabilization.as_secs()
        ),
        // One instance: no need to wait for a lease.
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

pub(super) fn scheduler_args(pki: &Pki, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--authentication-kubeconfig={}", p(kubeconfig)),
        format!("--authorization-kubeconfig={}", p(kubeconfig)),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.scheduler),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

pub(super) fn kwok_args(pki: &Pki, ports: &Ports, kubeconfig: &Path, config: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--config={}", p(config)),
        "--manage-all-nodes=false".into(),
        format!(
            "--manage-nodes-with-annotation-selector={}={}",
            kwok::NODE_ANNOTATION.0,
            kwok::NODE_ANNOTATION.1
        ),
        format!("--cidr={POD_CIDR}"),
        "--node-ip=127.0.0.1".into(),
        format!("--node-port={}", ports.kwok),
        format!("--server-address=127.0.0.1:{}", ports.kwok),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        "--node-lease-duration-seconds=40".into(),
    ]
}
