//! The operator as a process that is killed and replaced: convergence after a kill in the middle
//! of reconciling, and leader election between two replicas. These tests start their own
//! operators, so they run one at a time.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::wait::{self, Poll};
use lexserve_e2e::{LocalCluster, shared_cluster};
use lexserve_operator::api::conditions::ConditionType;

use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn setup() -> &'static LocalCluster {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    cluster
}

#[tokio::test]
async fn killed_in_the_middle_of_reconciling_converges_without_duplicates() {
    let _serial = SERIAL.lock().await;
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "killed").await;
    let count = 30;
    for i in 0..count {
        create(&api, &isvc(&format!("svc-{i}"), embedder(1)))
            .await
            .expect("create");
    }
    let options = OperatorOptions {
        identity: "first".to_string(),
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    let mut first = OperatorProcess::start(cluster, options.clone())
        .await
        .expect("operator");
    // Kill it once it has applied some children but not all.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait::until(
        "some deployments",
        TIMEOUT,
        Duration::from_millis(20),
        || async {
            let n = deployments.list(&ListParams::default()).await?.items.len();
            Ok(if n >= 1 {
                Poll::Ready(n)
            } else {
                Poll::pending(n)
            })
        },
    )
    .await
    .expect("reconciling started");
    first.kill();
    let at_kill = deployments
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    println!("killed the operator with {at_kill}/{count} deployments applied");

    let _second = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "second".to_string(),
            ..options
        },
    )
    .await
    .expect("operator restarts");
    for i in 0..count {
        wait_condition(
            &api,
            &format!("svc-{i}"),
            ConditionType::Ready,
            "True",
            None,
        )
        .await
        .expect("Ready after restart");
    }
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=lexserve-operator");
    let deployments = deployments.list(&selector).await.expect("list").items;
    let services = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&selector)
        .await
        .expect("list")
        .items;
    let configs = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&selector)
        .await
        .expect("list")
        .items;
    assert_eq!(deployments.len(), count);
    assert_eq!(services.len(), count);
    assert_eq!(configs.len(), count);
    for d in &deployments {
        let owners = d.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{:?}: {owners:?}", d.metadata.name);
        assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    }
}

async fn leader_of(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over() {
    let _serial = SERIAL.lock().await;
    let cluster = setup().await;
    let Scene { ns, client, api } = scene(cluster, "leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease = format!("lexserve-operator-{}", &*ns);
    let options = |identity: &str| OperatorOptions {
        identity: identity.to_string(),
        leader_elect: true,
        namespace: Some(ns.to_string()),
        lease_name: lease.clone(),
        lease_duration_seconds: 6,
        ..Default::default()
    };
    let mut a = OperatorProcess::start(cluster, options("replica-a"))
        .await
        .expect("replica a");
    let mut b = OperatorProcess::start(cluster, options("replica-b"))
        .await
        .expect("replica b");

    let leader = wait::until("a leader", TIMEOUT, Duration::from_millis(200), || async {
        Ok(match leader_of(&leases, &lease).await {
            Some(h) => Poll::Ready(h),
            None => Poll::pending("no holder"),
        })
    })
    .await
    .expect("leader elected");
    // Exactly one replica leads, and it is the lease's holder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (la, lb) = (
        a.metric("lexserve_operator_leader")
            .await
            .expect("a metrics"),
        b.metric("lexserve_operator_leader")
            .await
            .expect("b metrics"),
    );
    assert_eq!(la + lb, 1.0, "exactly one leader (a={la}, b={lb})");
    let (leader_proc, follower) = if leader == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(
        leader_proc
            .metric("lexserve_operator_leader")
            .await
            .expect("metrics"),
        1.0
    );
    create(&api, &isvc("before", embedder(1)))
        .await
        .expect("create");
    wait_condition(&api, "before", ConditionType::Ready, "True", None)
        .await
        .expect("the leader reconciles");

    // The leader dies without releasing the lease; the follower takes over after it expires.
    leader_proc.kill();
    let follower_id = follower.identity().to_string();
    let new_leader = wait::until(
        "the follower to take over",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match leader_of(&leases, &lease).await {
                Some(h) if h == follower_id => Poll::Ready(h),
                other => Poll::pending(format!("holder {other:?}")),
            })
        },
    )
    .await
    .expect("takeover");
    assert_eq!(new_leader, follower_id);
    create(&api, &isvc("after", embedder(1)))
        .await
        .expect("create");
    wait_condition(&api, "after", ConditionType::Ready, "True", None)
        .await
        .expect("the new leader reconciles");
    assert_eq!(
        follower
            .metric("lexserve_operator_leader")
            .await
            .expect("metrics"),
        1.0
    );
    let transitions = leases
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(1));
}

/// An operator that may not list pods does not hang behind a green health check: `/readyz`
/// says what it waits for and quotes the apiserver's refusal, while `/healthz` stays up.
#[tokio::test]
async fn without_permission_to_list_pods_readiness_says_why() {
    let cluster = setup().await;
    let ns = cluster.namespace("powerless").await.expect("namespace");
    let kubeconfig = cluster
        .service_account_kubeconfig(&ns, "powerless")
        .await
        .expect("a kubeconfig with no permissions");
    let operator = OperatorProcess::spawn(
        cluster,
        OperatorOptions {
            identity: "powerless".to_string(),
            kubeconfig: Some(kubeconfig),
            ..OperatorOptions::default()
        },
    )
    .expect("operator starts");
    let readyz = wait::until(
        "/readyz to say why the operator is not ready",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            Ok(match operator.probe("/readyz").await {
                Ok((503, text)) if text.contains("forbidden") => Poll::Ready(text),
                Ok((code, text)) => Poll::pending(format!("{code}: {text}")),
                Err(e) => Poll::pending(e),
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; operator log:\n{}", operator.log_tail(20)));
    assert!(readyz.contains("pods"), "{readyz}");
    assert!(
        readyz.contains("system:serviceaccount:"),
        "names who was refused: {readyz}"
    );
    let (code, _) = operator.probe("/healthz").await.expect("/healthz");
    assert_eq!(code, 200, "the process is alive; it only may not work");
}
