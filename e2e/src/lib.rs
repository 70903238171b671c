//! lexserve's local Kubernetes control plane, for the e2e tests and the demo.
//!
//! [`LocalCluster`] starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! kwok (simulated GPU and CPU nodes) from binaries that `e2e/cluster/setup.sh` provisions
//! (see [`bins`]). Tests usually share one cluster per test binary ([`shared_cluster`]) and
//! work in a namespace of their own ([`LocalCluster::namespace`]).

pub mod aggregation;
pub mod audit;
pub mod bins;
pub mod chart;
pub mod classifier;
pub mod cluster;
pub mod demo_pods;
pub mod kubelet;
pub mod kwok;
pub mod operator;
pub mod pausable_proxy;
pub mod pki;
pub mod pod_harness;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod request_counts;
pub mod shared;
pub mod sidecar;
pub mod wait;

pub use cluster::{ClusterOptions, KubectlOutput, LocalCluster, TestNamespace};
pub use shared::shared_cluster;

/// Installs ring as rustls' process-wide crypto provider (once).
///
/// Why: the dependency graph enables both of rustls' providers (kube asks for ring, reqwest
/// for aws-lc-rs), and then rustls cannot pick one by itself and panics when a client that
/// relies on the default is built. Every entry point of this crate calls this first.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The repository root (for tests that read `crds/`, `examples/`, the chart).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(
            || std::path::PathBuf::from("."),
            std::path::Path::to_path_buf,
        )
}
