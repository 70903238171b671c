//! `lexserve-operator`: a thin command line over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

use lexserve_operator::config::{DEFAULT_SIDECAR_IMAGE, OperatorConfig};
use lexserve_operator::controller::context::Context;
use lexserve_operator::crd::{MAX_CRD_BYTES, render_all};
use lexserve_operator::leader::{LeaderElector, Leadership, LeaseTiming};
use lexserve_operator::metrics_api::signal::LoadSignal;
use lexserve_operator::telemetry::{Metrics, init_logging};

#[derive(Parser)]
#[command(
    name = "lexserve-operator",
    version,
    about = "Kubernetes operator for NLP model deployments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CRD manifests (one file per kind) and print their sizes.
    Crd {
        /// The directories to write into: the repository's `crds/` (for `kubectl apply`) and the
        /// Helm chart's `crds/` (Helm installs those before the templates).
        #[arg(
            long,
            default_values = ["crds", "charts/lexserve/crds"],
            env = "LEXSERVE_CRD_DIR",
            value_delimiter = ','
        )]
        out: Vec<PathBuf>,
        /// Print the YAML to stdout instead of writing files.
        #[arg(long)]
        stdout: bool,
    },
    /// Run the controllers.
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The kubeconfig to use (default: in-cluster config, else ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "LEXSERVE_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Elect a leader through a Lease so that only one replica writes.
    #[arg(long, env = "LEXSERVE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The namespace of the leader Lease (default: the operator's own, from POD_NAMESPACE, else the
    /// kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The name of the leader Lease.
    #[arg(long, env = "LEXSERVE_LEASE_NAME", default_value = "lexserve-operator")]
    lease_name: String,
    /// This replica's identity in the election (default: POD_NAME, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long another replica waits, after it last saw the lease change, before it takes the
    /// lease over, in seconds (at least 3).
    #[arg(long, env = "LEXSERVE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How long the leader keeps writing after the start of its last successful renewal, in
    /// seconds; shorter than the lease duration (default: two thirds of it).
    #[arg(long, env = "LEXSERVE_LEASE_RENEW_DEADLINE_SECONDS")]
    lease_renew_deadline_seconds: Option<u64>,
    /// The pause between two attempts to take or renew the lease, in seconds; shorter than the
    /// renew deadline (default: a seventh of the lease duration, at least 1).
    #[arg(long, env = "LEXSERVE_LEASE_RETRY_PERIOD_SECONDS")]
    lease_retry_period_seconds: Option<u64>,
    /// Where `/metrics` is served.
    #[arg(long, env = "LEXSERVE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    #[arg(long, env = "LEXSERVE_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// The sidecar image for InferenceServices that do not name one.
    #[arg(long, env = "LEXSERVE_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    sidecar_image: String,
    /// Prometheus, as seen from the cluster (autoscaling signal, experiment analysis).
    #[arg(
        long,
        env = "LEXSERVE_PROMETHEUS_URL",
        default_value = "http://prometheus-operated.monitoring.svc:9090"
    )]
    prometheus_url: String,
    /// The cluster's DNS domain, for the URLs in status.
    #[arg(long, env = "LEXSERVE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// How often a settled InferenceService is looked at again when nothing changes (watches
    /// drive everything else; this is a safety net).
    #[arg(long, env = "LEXSERVE_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// The most reconciles running at once.
    #[arg(long, env = "LEXSERVE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "LEXSERVE_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Where the `external.metrics.k8s.io` API (HTTPS) is served; empty turns it off (for
    /// clusters that scale with KEDA only).
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_ADDR",
        default_value = "0.0.0.0:6443"
    )]
    metrics_api_addr: String,
    /// The metrics API's serving certificate (PEM); re-read when it changes. Without it, the
    /// replicas share one generated in --metrics-api-secret.
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_CERT_FILE",
        requires = "metrics_api_key_file"
    )]
    metrics_api_cert_file: Option<PathBuf>,
    /// The key of --metrics-api-cert-file (PEM).
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_KEY_FILE",
        requires = "metrics_api_cert_file"
    )]
    metrics_api_key_file: Option<PathBuf>,
    /// Which clients the metrics API accepts: `requestheader` (only the kube-apiserver's front
    /// proxy, by the CA in kube-system/extension-apiserver-authentication), a path to a CA
    /// file, or `none`.
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_CLIENT_AUTH",
        default_value = "requestheader"
    )]
    metrics_api_client_auth: String,
    /// The Service in front of the metrics API, in the operator's namespace: the generated
    /// certificate is valid for its DNS names.
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_SERVICE",
        default_value = "lexserve-operator"
    )]
    metrics_api_service: String,
    /// The Secret, in the operator's namespace, holding the generated CA and serving certificate
    /// (created by the first replica, read by the others and by later starts).
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_SECRET",
        default_value = "lexserve-operator-metrics-api-tls"
    )]
    metrics_api_secret: String,
    /// The APIService whose `caBundle` is kept at the generated CA (the operator needs get,
    /// watch and patch on it); empty leaves APIServices alone.
    #[arg(
        long,
        env = "LEXSERVE_METRICS_API_APISERVICE",
        default_value = "v1beta1.external.metrics.k8s.io"
    )]
    metrics_api_apiservice: String,
    /// How often the leader checks each autoscaled InferenceService's load signal for its
    /// `ScalingSignalAvailable` condition, in seconds; 0 turns the checks off.
    #[arg(
        long,
        env = "LEXSERVE_SCALING_SIGNAL_INTERVAL_SECONDS",
        default_value_t = 15
    )]
    scaling_signal_interval_seconds: u64,
    /// How long a load signal must stay missing before the status says so, in seconds.
    #[arg(
        long,
        env = "LEXSERVE_SCALING_SIGNAL_GRACE_SECONDS",
        default_value_t = 60
    )]
    scaling_signal_grace_seconds: u64,
    /// How often a running ShadowDeployment is analysed (Prometheus read, verdict judged), in
    /// seconds. Every analysis costs a few queries per shadow; a verdict needs `minSamples`
    /// pairs anyway, so a shorter interval only shortens the wait after they arrive.
    #[arg(
        long,
        env = "LEXSERVE_SHADOW_ANALYSIS_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    shadow_analysis_interval_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out, stdout } => match write_crds(&out, stdout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("lexserve-operator crd: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_logging(matches!(args.log_format, LogFormat::Json));
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("lexserve-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = match runtime.block_on(run(*args)) {
                Ok(code) => code,
                Err(e) => {
                    error!(error = format!("{e:#}"), "lexserve-operator failed");
                    ExitCode::FAILURE
                }
            };
            // Tasks still running (a request stuck on a hung connection) must not hold the
            // exit up: a deposed leader's exit is what ends its term.
            runtime.shutdown_timeout(Duration::from_secs(1));
            code
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Err means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default().await?,
    };
    let metrics = Metrics::default();
    let health = lexserve_operator::http::Health::new(metrics.clone());
    let mut addrs = vec![args.metrics_addr];
    if args.health_addr != args.metrics_addr {
        addrs.push(args.health_addr);
    }
    for addr in addrs {
        let health = health.clone();
        // Bound here so that a taken port fails the start, not a background task.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = lexserve_operator::http::serve(listener, health).await {
                error!(error = %e, %addr, "HTTP endpoint stopped");
            }
        });
    }

    // The load signal: Prometheus plus a cache of the model-server pods' readiness. Every
    // replica serves the metrics API (the APIService's Service selects them all); only the
    // leader turns the signal into conditions.
    let (pods, pod_errors) = lexserve_operator::metrics_api::signal::watch_model_pods(
        client.clone(),
        args.namespace.as_deref(),
    );
    // Until the first list arrives, `/readyz` says what is awaited and why it does not come
    // (no permission to list pods, an apiserver that does not answer), instead of hanging silently.
    health.waiting_for("the model-server pod cache's first list");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            filled = tokio::time::timeout(std::time::Duration::from_secs(2), pods.wait_until_ready()) => {
                if filled.is_ok() {
                    break;
                }
                let why = pod_errors
                    .last()
                    .unwrap_or_else(|| "no answer from the apiserver yet".to_string());
                let message = format!(
                    "the model-server pod cache is not filled (can the operator list and watch pods?): {why}"
                );
                warn!("{message}");
                health.waiting_for(message);
            }
            _ = &mut shutdown => {
                info!("shutting down while waiting for the pod cache");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    health.waiting_for("starting the metrics API");
    let load_signal = LoadSignal::new(&args.prometheus_url, pods)?;
    if !args.metrics_api_addr.trim().is_empty() {
        start_metrics_api(&args, &client, load_signal.clone(), metrics.clone()).await?;
    }

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "localhost".to_string());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let secs = Duration::from_secs;
    let timing = LeaseTiming::new(
        secs(args.lease_duration_seconds.max(3)),
        args.lease_renew_deadline_seconds.map(secs),
        args.lease_retry_period_seconds.map(secs),
    )
    .map_err(anyhow::Error::msg)?;
    let mut elector = args.leader_elect.then(|| {
        LeaderElector::new(
            client.clone(),
            &lease_namespace,
            &args.lease_name,
            &identity,
            timing,
        )
    });

    // A follower is ready (it serves its endpoints and waits); it must not write.
    health.ready();
    let leadership = match &mut elector {
        Some(elector) => tokio::select! {
            leadership = elector.acquire() => leadership,
            _ = shutdown_signal() => {
                info!("shutting down while standing by");
                return Ok(ExitCode::SUCCESS);
            }
        },
        None => Leadership::unconditional(),
    };
    metrics.leader.set(1);
    // Renewing runs beside everything else from here on, through the cache start and the
    // drain at shutdown, and revokes `leadership` the moment the lease is not renewed in time.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let renewing = elector.map(|mut elector| {
        let leadership = leadership.clone();
        tokio::spawn(async move {
            elector
                .hold(&leadership, async {
                    let _ = release_rx.await;
                })
                .await
        })
    });

    let config = OperatorConfig {
        sidecar_image: args.sidecar_image.clone(),
        prometheus_url: args.prometheus_url.clone(),
        cluster_domain: args.cluster_domain.clone(),
        resync: std::time::Duration::from_secs(args.resync_seconds.max(1)),
        concurrency: args.concurrency.max(1),
        scaling_signal_interval: (args.scaling_signal_interval_seconds > 0)
            .then(|| std::time::Duration::from_secs(args.scaling_signal_interval_seconds)),
        scaling_signal_grace: std::time::Duration::from_secs(args.scaling_signal_grace_seconds),
        shadow_analysis_interval: std::time::Duration::from_secs(
            args.shadow_analysis_interval_seconds.max(1),
        ),
    };
    // The watch caches start only once this replica leads: a follower holds no cache.
    let started = Context::start(
        client.clone(),
        args.namespace.as_deref(),
        config,
        metrics.clone(),
        Some(identity.clone()),
        leadership.clone(),
    );
    let (ctx, triggers, peer_triggers) = tokio::select! {
        started = started => started?,
        _ = leadership.lost() => {
            metrics.leader.set(0);
            error!("lost leadership while filling the caches: exiting");
            return Ok(ExitCode::FAILURE);
        }
    };
    let ctx = Arc::new(ctx);

    // Stop the controllers on a signal, or when the lease is lost.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let controller = tokio::spawn(lexserve_operator::controller::inference_service::run(
        client.clone(),
        args.namespace.clone(),
        ctx.clone(),
        triggers,
        lexserve_operator::controller::inference_service::PeerEvents {
            experiments: peer_triggers.experiments,
            shadows: peer_triggers.shadows,
        },
        Some(load_signal),
        stopped(),
    ));
    let experiments = tokio::spawn(lexserve_operator::controller::experiment::run(
        client.clone(),
        args.namespace.clone(),
        ctx.clone(),
        peer_triggers.inference_services,
        stopped(),
    ));
    let shadows = tokio::spawn(lexserve_operator::controller::shadow::run(
        client.clone(),
        args.namespace.clone(),
        ctx,
        peer_triggers.inference_services_for_shadows,
        stopped(),
    ));
    let controller = async move {
        let _ = tokio::join!(controller, experiments, shadows);
    };
    info!(identity = %identity, namespace = ?args.namespace, "controllers started");

    tokio::select! {
        _ = shutdown_signal() => info!("shutting down"),
        _ = leadership.lost() => {
            // Every write already refuses; nothing in flight is waited for (it could only be
            // stuck or refused), and the process exits so that nothing of this term lingers.
            let _ = stop_tx.send(true);
            metrics.leader.set(0);
            error!("lost leadership: exiting so that only the new leader writes");
            return Ok(ExitCode::FAILURE);
        }
    }
    let _ = stop_tx.send(true);
    // Reconciles in flight finish (while the lease is still renewed, and only as long as it
    // is: a write after the deadline is refused); then the lease goes to a follower at once.
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(20), controller) => {}
        _ = leadership.lost() => {}
    }
    metrics.leader.set(0);
    let _ = release_tx.send(());
    if let Some(renewing) = renewing
        && let Ok(true) = renewing.await
    {
        error!("lost leadership while shutting down");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds and serves the external metrics API; a bad address, certificate or client CA fails
/// the start with a message that names it.
async fn start_metrics_api(
    args: &RunArgs,
    client: &kube::Client,
    signal: LoadSignal,
    metrics: Metrics,
) -> anyhow::Result<()> {
    use lexserve_operator::metrics_api::tls::{ClientAuth, ServingCert, server_config};
    let addr: SocketAddr = args
        .metrics_api_addr
        .parse()
        .map_err(|e| anyhow::anyhow!("--metrics-api-addr {:?}: {e}", args.metrics_api_addr))?;
    let mut generated_ca = None;
    let serving = match (&args.metrics_api_cert_file, &args.metrics_api_key_file) {
        (Some(cert), Some(key)) => ServingCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            let namespace = args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let service = &args.metrics_api_service;
            let names = vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.{}", args.cluster_domain),
            ];
            let material = lexserve_operator::metrics_api::serving_secret::ensure(
                client,
                &namespace,
                &args.metrics_api_secret,
                &names,
            )
            .await?;
            generated_ca = Some(material.ca_pem);
            ServingCert::Pem {
                cert: material.cert_pem,
                key: material.key_pem,
            }
        }
    };
    let auth = match args.metrics_api_client_auth.as_str() {
        "requestheader" => ClientAuth::RequestHeader,
        "none" => ClientAuth::None,
        path => ClientAuth::CaFile(PathBuf::from(path)),
    };
    let tls = server_config(client, &serving, &auth)
        .await
        .map_err(|e| anyhow::anyhow!("metrics API TLS: {e:#}"))?;
    if let Some(verifier) = tls.front_proxy.clone() {
        tokio::spawn(lexserve_operator::metrics_api::client_trust::keep_current(
            client.clone(),
            verifier,
        ));
    }
    if let Some(ca) = generated_ca
        && !args.metrics_api_apiservice.trim().is_empty()
    {
        tokio::spawn(lexserve_operator::metrics_api::ca_bundle::keep_ca_bundle(
            client.clone(),
            args.metrics_api_apiservice.clone(),
            ca,
        ));
    }
    let tls = tls.config;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-api-addr): {e}"))?;
    info!(%addr, "external metrics API serving");
    tokio::spawn(async move {
        if let Err(e) =
            lexserve_operator::metrics_api::server::serve(listener, tls, signal, metrics).await
        {
            error!(error = %e, %addr, "external metrics API stopped");
        }
    });
    Ok(())
}

fn write_crds(dirs: &[PathBuf], stdout: bool) -> anyhow::Result<()> {
    let crds = render_all()?;
    if stdout {
        for crd in &crds {
            println!("---\n{}", crd.yaml);
        }
        return Ok(());
    }
    for out in dirs {
        write_crds_into(out, &crds)?;
    }
    Ok(())
}

fn write_crds_into(out: &Path, crds: &[lexserve_operator::crd::RenderedCrd]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for crd in crds {
        let path = out.join(&crd.file_name);
        std::fs::write(&path, &crd.yaml)?;
        let size = crd.yaml.len();
        eprintln!(
            "wrote {} ({} bytes, {:.1} KiB of the {} KiB limit)",
            path.display(),
            size,
            size as f64 / 1024.0,
            MAX_CRD_BYTES / 1024
        );
        if size > MAX_CRD_BYTES {
            anyhow::bail!(
                "{} is {} bytes, over the {} byte limit",
                crd.file_name,
                size,
                MAX_CRD_BYTES
            );
        }
    }
    Ok(())
}
