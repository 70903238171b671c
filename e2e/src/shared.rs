//! One cluster shared by all tests of a test binary.
//!
//! Starting a control plane takes seconds, so the tests of one binary share one and isolate
//! themselves by namespace ([`crate::LocalCluster::namespace`]). It lives in a static, which is
//! never dropped: an exit hook stops it when the test binary exits (normally, or after failed
//! tests), and PR_SET_PDEATHSIG kills its processes if the binary dies any other way.

use anyhow::{Result, anyhow};
use tokio::sync::OnceCell;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::process;

/// The start's outcome, kept: after one failed start, the other tests fail at once with the
/// same error instead of each trying again for minutes.
static SHARED: OnceCell<Result<LocalCluster, String>> = OnceCell::const_new();

/// The cluster shared by this test binary, started on first use with default options.
pub async fn shared_cluster() -> Result<&'static LocalCluster> {
    let outcome = SHARED
        .get_or_init(|| async {
            let started = LocalCluster::start(ClusterOptions::default()).await;
            match started {
                Ok(cluster) => {
                    process::on_exit(|| {
                        if let Some(Ok(cluster)) = SHARED.get() {
                            cluster.shutdown();
                        }
                    });
                    Ok(cluster)
                }
                Err(err) => Err(format!("{err:#}")),
            }
        })
        .await;
    outcome
        .as_ref()
        .map_err(|err| anyhow!("the shared local cluster did not start: {err}"))
}
