//! A reconcile of a settled object is served from the watch caches: however often the
//! operator reconciles, it makes no API request (no GET per child, no node or pod list for a
//! GPU service), as the operator's own `lexserve_operator_api_requests` counts them. A cluster
//! (a test binary) of its own, so that nothing else reconciles meanwhile.

mod common;

use std::time::Duration;

use common::*;
use lexserve_e2e::shared_cluster;

const RECONCILES: &str = "lexserve_operator_reconciliations_total";
const REQUESTS: &str = "lexserve_operator_api_requests_total";

#[tokio::test]
async fn reconciles_of_settled_objects_make_no_api_requests() {
    let cluster = shared_cluster().await.expect("local cluster");
    let resync = 2;
    let (_ns, operator) = settled_services(cluster, "idle-reads", resync)
        .await
        .expect("three services settled");

    let before = operator.metrics().await.expect("operator metrics");
    tokio::time::sleep(Duration::from_secs(resync * 8)).await;
    let after = operator.metrics().await.expect("operator metrics");
    let reconciles = counter(&after, RECONCILES, "") - counter(&before, RECONCILES, "");
    let requests = counter(&after, REQUESTS, "") - counter(&before, REQUESTS, "");
    println!("{reconciles} reconciles of settled objects, {requests} API requests");
    assert!(
        counter(&before, REQUESTS, "") > 0.0,
        "the counter counts: creating the children took requests"
    );
    assert!(
        reconciles >= 6.0,
        "the objects were reconciled (resync {resync}s)"
    );
    let lines: Vec<_> = after
        .lines()
        .filter(|l| l.starts_with("lexserve_operator_api_requests_total"))
        .collect();
    assert_eq!(
        requests, 0.0,
        "a reconcile of a settled object must be served from the caches: {lines:?}"
    );
}
