//! An operator left alone with settled objects writes nothing, however often it reconciles.
//! Write requests are counted from the apiserver's own `apiserver_request_total`, which has no
//! namespace label: this test has a cluster (a test binary) of its own so that nothing else
//! writes meanwhile.

mod common;

use std::time::Duration;

use common::*;
use lexserve_e2e::shared_cluster;

const WRITTEN: &[&str] = lexserve_e2e::request_counts::OPERATOR_WRITTEN;
const RECONCILES: &str = "lexserve_operator_reconciliations_total";

#[tokio::test]
async fn unchanged_objects_cause_no_writes_across_resyncs() {
    let cluster = shared_cluster().await.expect("local cluster");
    let resync = 2;
    let (_ns, operator) = settled_services(cluster, "idle", resync)
        .await
        .expect("three services settled");

    let per_resource = |text: &str| -> Vec<(String, f64)> {
        WRITTEN
            .iter()
            .map(|r| (r.to_string(), write_requests(text, &[r])))
            .collect()
    };
    let before_text = cluster.apiserver_metrics().await.expect("metrics");
    let before_writes = write_requests(&before_text, WRITTEN);
    let before_reconciles = counter(
        &operator.metrics().await.expect("operator metrics"),
        RECONCILES,
        "",
    );
    let idle = Duration::from_secs(resync * 8);
    tokio::time::sleep(idle).await;
    let after_text = cluster.apiserver_metrics().await.expect("metrics");
    let after_writes = write_requests(&after_text, WRITTEN);
    let changed: Vec<_> = per_resource(&before_text)
        .into_iter()
        .zip(per_resource(&after_text))
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| format!("{}: +{}", b.0, a.1 - b.1))
        .collect();
    let after_reconciles = counter(
        &operator.metrics().await.expect("operator metrics"),
        RECONCILES,
        "",
    );
    println!(
        "idle {idle:?}: {} reconciles, {} write requests to {WRITTEN:?}",
        after_reconciles - before_reconciles,
        after_writes - before_writes
    );
    assert!(
        after_reconciles - before_reconciles >= 6.0,
        "the objects were reconciled during the idle period (resync {resync}s)"
    );
    assert_eq!(
        after_writes - before_writes,
        0.0,
        "an unchanged object must cause no writes: {changed:?}"
    );
}
