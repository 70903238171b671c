//! Leader election when the leader's connection to the apiserver hangs (issue 13, item 12).
//!
//! Two operators with identities of their own (ServiceAccounts, so the apiserver's audit log
//! tells their requests apart). Replica A reaches the apiserver through a TCP proxy the test
//! pauses: its connections hang, nothing is closed. B must take over and reconcile, and A must
//! write nothing once its lease has run out: not while cut off, and not when the proxy forwards
//! again (no queued write may land then).
//!
//! What would make a deposed leader write: its load-signal checks read Prometheus directly, not
//! through the apiserver. Prometheus is stopped once B leads, so any replica that still acts as
//! leader wants to write the InferenceService's new `ScalingSignalAvailable` condition.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use lexserve_e2e::audit::{self, AuditEvent};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::pausable_proxy::PausableProxy;
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{LocalCluster, shared_cluster};
use lexserve_operator::api::conditions::ConditionType;
use serde_json::json;

/// Short lease settings: 6 s lease; the operator derives a 4 s renew deadline and a 1 s retry.
const LEASE_SECONDS: u64 = 6;
const RENEW_DEADLINE_SECONDS: i64 = 4;

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, name: &str, identity: &str) {
    wait::until(
        &format!("{identity} to hold the lease"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match holder(leases, name).await {
                Some(h) if h == identity => Poll::Ready(()),
                other => Poll::pending(format!("holder {other:?}")),
            })
        },
    )
    .await
    .expect("lease holder");
}

/// A ServiceAccount allowed everything, and a kubeconfig that acts as it through `server`.
async fn identity(cluster: &LocalCluster, ns: &str, name: &str, server: &str) -> PathBuf {
    let kubeconfig = cluster
        .service_account_kubeconfig(ns, name)
        .await
        .expect("ServiceAccount kubeconfig");
    cluster
        .kubectl_ok([
            "create",
            "clusterrolebinding",
            &binding(ns, name),
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={ns}:{name}"),
        ])
        .await
        .expect("cluster role binding");
    with_server(&kubeconfig, server)
}

fn binding(ns: &str, name: &str) -> String {
    format!("lexserve-e2e-{ns}-{name}")
}

/// A copy of `kubeconfig` that talks to `server` (the same apiserver certificate is valid for
/// any port on 127.0.0.1).
fn with_server(kubeconfig: &Path, server: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    config["clusters"][0]["cluster"]["server"] = serde_yaml::Value::from(server);
    let path = kubeconfig.with_extension("proxied.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write");
    path
}

fn is_write(event: &AuditEvent) -> bool {
    matches!(
        event.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// The audited writes of `user` received at or after `since`.
fn writes_since(cluster: &LocalCluster, user: &str, since: Timestamp) -> Vec<AuditEvent> {
    audit::read(&cluster.audit_log())
        .expect("audit log")
        .into_iter()
        .filter(|e| e.user == user && is_write(e) && e.received >= since)
        .collect()
}

#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_writes_nothing_after_its_lease_ran_out() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let Scene { ns, client, api } = scene(cluster, "leader-cut").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = format!("lexserve-operator-{}", &*ns);
    // Empty: the load signal is missing for lack of series, until Prometheus is stopped.
    let mut prometheus = Prometheus::start(&[]).await.expect("Prometheus");

    let apiserver: SocketAddr = format!("127.0.0.1:{}", cluster.ports().apiserver)
        .parse()
        .expect("address");
    let proxy = PausableProxy::start(apiserver).await.expect("proxy");
    let through_proxy = format!("https://{}", proxy.address());
    let kubeconfig_a = identity(cluster, &ns, "replica-a", &through_proxy).await;
    let kubeconfig_b = identity(cluster, &ns, "replica-b", cluster.apiserver_url()).await;
    let user_a = format!("system:serviceaccount:{}:replica-a", &*ns);
    let user_b = format!("system:serviceaccount:{}:replica-b", &*ns);
    let options = |name: &str, kubeconfig: PathBuf| OperatorOptions {
        identity: name.to_string(),
        leader_elect: true,
        namespace: Some(ns.to_string()),
        lease_name: lease.clone(),
        lease_duration_seconds: LEASE_SECONDS,
        prometheus_url: Some(prometheus.url().to_string()),
        scaling_signal: Some((1, 0)),
        kubeconfig: Some(kubeconfig),
        ..Default::default()
    };
    let mut a = OperatorProcess::start(cluster, options("replica-a", kubeconfig_a))
        .await
        .expect("replica a");
    wait_holder(&leases, &lease, "replica-a").await;
    let b = OperatorProcess::start(cluster, options("replica-b", kubeconfig_b))
        .await
        .expect("replica b");

    // A leads and reconciles: the service is Ready, and its load signal reported missing.
    let mut spec = embedder(1);
    spec["scaling"] = json!({"provider": "hpa", "minReplicas": 1, "maxReplicas": 3});
    create(&api, &isvc("cut", spec)).await.expect("create");
    wait_condition(&api, "cut", ConditionType::Ready, "True", None)
        .await
        .expect("A reconciles");
    wait_condition(
        &api,
        "cut",
        ConditionType::ScalingSignalAvailable,
        "False",
        Some("LoadSeriesMissing"),
    )
    .await
    .expect("A reports the missing series");
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some("replica-a"),
        "A wrote all of it"
    );
    // Cut A off only once it has nothing left to write (a write sent before the cut and
    // delivered after it could not be told from one sent after).
    wait::until(
        "A to have written nothing but its lease for 3 s",
        TIMEOUT,
        Duration::from_millis(500),
        || async {
            let quiet_since = Timestamp::now() - SignedDuration::from_secs(3);
            let recent: Vec<_> = writes_since(cluster, &user_a, quiet_since)
                .into_iter()
                .filter(|e| e.resource != "leases")
                .collect();
            Ok(if recent.is_empty() {
                Poll::Ready(())
            } else {
                Poll::pending(format!("{recent:?}"))
            })
        },
    )
    .await
    .expect("A settles");

    let cut = Timestamp::now();
    proxy.pause();
    println!("paused replica A's connection to the apiserver at {cut}");
    wait_holder(&leases, &lease, "replica-b").await;
    println!(
        "replica B took the lease {:.1}s after the cut",
        cut.duration_until(Timestamp::now()).as_secs_f64()
    );

    // What a leader must now write; B does.
    prometheus.pause();
    wait_condition(
        &api,
        "cut",
        ConditionType::ScalingSignalAvailable,
        "False",
        Some("PrometheusUnavailable"),
    )
    .await
    .expect("B reports Prometheus unreachable");
    let by_b = writes_since(cluster, &user_b, cut);
    assert!(
        by_b.iter()
            .any(|e| e.resource == "inferenceservices" && e.subresource == "status"),
        "B wrote the status: {by_b:?}"
    );

    // A hears from the apiserver again: whatever it queued would land now.
    proxy.resume();
    wait::until(
        "A to have exited and its connections to have closed",
        TIMEOUT,
        Duration::from_millis(200),
        || {
            let (exited, open) = (a.exited(), proxy.open_connections());
            async move {
                Ok(if exited && open == 0 {
                    Poll::Ready(())
                } else {
                    Poll::pending(format!("exited {exited}, {open} connections open"))
                })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; A's log:\n{}", a.log_tail(30)));

    // B goes on leading: a change to the object is applied by B. Its write in the audit log
    // also marks that every request received before it has been logged.
    api.patch(
        "cut",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"scaling": {"maxReplicas": 4}}})),
    )
    .await
    .expect("patch");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    wait::until(
        "B to apply the change",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let max = Some(hpas.get("cut").await?.spec.max_replicas);
            let applied = writes_since(cluster, &user_b, cut)
                .iter()
                .any(|e| e.resource == "horizontalpodautoscalers");
            Ok(if max == Some(4) && applied {
                Poll::Ready(())
            } else {
                Poll::pending(format!("maxReplicas {max:?}, audited {applied}"))
            })
        },
    )
    .await
    .expect("B applies");

    // Nothing of A's after the cut. A's own deadline came at most the renew deadline after
    // it (its last renewal started before the cut); a renewal sent before the cut may reach
    // the apiserver just after it, while A still led, or only on resume, refused against B's
    // newer record.
    let ran_out = cut + SignedDuration::from_secs(RENEW_DEADLINE_SECONDS);
    let after_cut: Vec<_> = writes_since(cluster, &user_a, cut)
        .into_iter()
        .filter(|e| e.resource != "leases" || (e.received >= ran_out && e.code != 409))
        .collect();
    assert!(
        after_cut.is_empty(),
        "replica A wrote after it was cut off: {after_cut:#?}\nA's log:\n{}",
        a.log_tail(40)
    );
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("replica-b"));
    println!("how replica A ended:\n{}", a.log_tail(4));
    drop(b);
    for name in ["replica-a", "replica-b"] {
        let _ = cluster
            .kubectl(["delete", "clusterrolebinding", &binding(&ns, name)])
            .await;
    }
}

/// SIGTERM: the leader drains while it still renews, then releases the lease, so the follower
/// takes over without waiting out a (here long) lease.
#[tokio::test]
async fn a_leader_stopped_gracefully_releases_the_lease() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs");
    let Scene { ns, client, .. } = scene(cluster, "leader-stop").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = format!("lexserve-operator-{}", &*ns);
    let options = |name: &str| OperatorOptions {
        identity: name.to_string(),
        leader_elect: true,
        namespace: Some(ns.to_string()),
        lease_name: lease.clone(),
        lease_duration_seconds: 60,
        ..Default::default()
    };
    let mut a = OperatorProcess::start(cluster, options("replica-a"))
        .await
        .expect("replica a");
    wait_holder(&leases, &lease, "replica-a").await;
    let _b = OperatorProcess::start(cluster, options("replica-b"))
        .await
        .expect("replica b");
    a.stop();
    let log = a.log_tail(10);
    assert!(log.contains("released the lease"), "A's log:\n{log}");
    wait_holder(&leases, &lease, "replica-b").await;
    let transitions = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(1));
}
