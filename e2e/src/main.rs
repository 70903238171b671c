//! `lexserve-e2e`: the local control plane as a command, for the demo and for poking around.
//!
//! `cluster up` starts a cluster that outlives the command (a detached supervisor process owns
//! it), `cluster down` stops it, `cluster status` says what runs. The kubeconfig is always at
//! `$HOME/.cache/lexserve/cluster/kubeconfig`, so scripts and users can rely on one path.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lexserve_e2e::{ClusterOptions, LocalCluster, bins};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "lexserve-e2e",
    about = "lexserve's local Kubernetes control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Start, stop or inspect the local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run lexserve-operator on this machine as the Helm chart deploys it.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Play kubelet, kube-proxy, cluster DNS and Prometheus for the demo's namespace
    /// (lexserve-live, which kwok leaves to it): a real server for every pod the operator makes,
    /// Ready when it answers, a loopback address per Service, a Prometheus scraping them (until
    /// SIGTERM/SIGINT; what runs is written to the state file).
    Pods(PodsArgs),
}

#[derive(Args, Clone, Debug)]
struct PodsArgs {
    /// The state file (JSON: prometheus, services).
    #[arg(long)]
    state: PathBuf,
    /// The operator's /metrics address (host:port), for Prometheus to scrape.
    #[arg(long)]
    operator_metrics: Option<String>,
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Become lexserve-operator, acting with a token of the chart's ServiceAccount and the
    /// environment of the chart's Deployment (only the listen addresses are loopback ones), as the
    /// chart's pod would run: what the demo does after `helm install`.
    AsDeployed(AsDeployedArgs),
}

#[derive(Args, Clone, Debug)]
struct AsDeployedArgs {
    /// The release's namespace.
    #[arg(long, default_value = "lexserve-system")]
    namespace: String,
    /// The chart's Deployment (the release name, with the chart's default naming).
    #[arg(long, default_value = "lexserve")]
    deployment: String,
    /// The loopback port of the operator's /metrics (default: a free one).
    #[arg(long)]
    metrics_port: Option<u16>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start the cluster in the background and print its kubeconfig's path.
    Up(UpArgs),
    /// Stop the cluster started by `up`.
    Down,
    /// Say whether the cluster runs, and its components.
    Status,
    /// Run the cluster in the foreground until SIGTERM/SIGINT (what `up` starts detached).
    #[command(hide = true)]
    Run(UpArgs),
}

#[derive(Args, Clone, Debug)]
struct UpArgs {
    /// Simulated GPU nodes.
    #[arg(long, default_value_t = 2)]
    gpu_nodes: u32,
    /// GPUs (nvidia.com/gpu) per GPU node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// nvidia.com/gpu.product label of the GPU nodes.
    #[arg(long, default_value = "NVIDIA-H100-80GB-HBM3")]
    gpu_product: String,
    /// Simulated nodes without GPUs.
    #[arg(long, default_value_t = 2)]
    cpu_nodes: u32,
    /// kube-controller-manager's HPA downscale stabilization, in seconds.
    #[arg(long, default_value_t = 30)]
    hpa_downscale_stabilization_secs: u64,
    /// How long `up` waits for the cluster, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
}

/// What the supervisor writes once the cluster is up (`state.json`).
#[derive(Serialize, Deserialize, Debug)]
struct State {
    supervisor_pid: u32,
    apiserver: String,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    components: Vec<(String, u32)>,
}

fn cluster_dir() -> PathBuf {
    bins::cache_dir().join("cluster")
}

fn pid_file() -> PathBuf {
    cluster_dir().join("supervisor.pid")
}

fn state_file() -> PathBuf {
    cluster_dir().join("state.json")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Cluster(ClusterCommand::Up(args)) => up(&args),
        Top::Cluster(ClusterCommand::Down) => down(),
        Top::Cluster(ClusterCommand::Status) => status(),
        Top::Cluster(ClusterCommand::Run(args)) => run(args),
        Top::Operator(OperatorCommand::AsDeployed(args)) => as_deployed(&args),
        Top::Pods(args) => pods(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lexserve-e2e: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn up(args: &UpArgs) -> Result<()> {
    let dir = cluster_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(pid) = running_supervisor() {
        if state_file().exists() {
            eprintln!("the local cluster is already up (supervisor pid {pid})");
            println!("{}", dir.join("kubeconfig").display());
            return Ok(());
        }
        bail!(
            "a cluster supervisor (pid {pid}) is starting or stuck; run `lexserve-e2e cluster down` first"
        );
    }
    let _ = std::fs::remove_file(state_file());
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().context("duplicating the log handle")?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut cmd = Command::new(exe);
    cmd.args(["cluster", "run"])
        .args(["--gpu-nodes", &args.gpu_nodes.to_string()])
        .args(["--gpus-per-node", &args.gpus_per_node.to_string()])
        .args(["--gpu-product", &args.gpu_product])
        .args(["--cpu-nodes", &args.cpu_nodes.to_string()])
        .args([
            "--hpa-downscale-stabilization-secs",
            &args.hpa_downscale_stabilization_secs.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; the supervisor leaves our session and process group
    // so that it survives this command and the terminal it ran in.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the cluster supervisor")?;
    eprintln!(
        "starting the local cluster (supervisor pid {}, log {})",
        child.id(),
        log_path.display()
    );
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout_secs);
    loop {
        if state_file().exists() {
            break;
        }
        if let Some(status) = child.try_wait().context("checking the supervisor")? {
            bail!(
                "the cluster supervisor exited ({status}) before the cluster was up; its log ({}):\n{}",
                log_path.display(),
                lexserve_e2e::cluster::tail(&log_path, 40)
            );
        }
        if start.elapsed() > timeout {
            let _ = stop_pid(child.id());
            bail!(
                "the cluster was not up within {timeout:?}; supervisor log ({}):\n{}",
                log_path.display(),
                lexserve_e2e::cluster::tail(&log_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the local cluster is up after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    eprintln!("  export KUBECONFIG={}", dir.join("kubeconfig").display());
    println!("{}", dir.join("kubeconfig").display());
    Ok(())
}

fn down() -> Result<()> {
    let Some(pid) = running_supervisor() else {
        let _ = std::fs::remove_file(pid_file());
        let _ = std::fs::remove_file(state_file());
        eprintln!("the local cluster is not running");
        return Ok(());
    };
    let start = Instant::now();
    stop_pid(pid)?;
    let _ = std::fs::remove_file(pid_file());
    let _ = std::fs::remove_file(state_file());
    eprintln!(
        "the local cluster is down ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn status() -> Result<()> {
    let Some(pid) = running_supervisor() else {
        println!("the local cluster is not running");
        return Ok(());
    };
    let Some(state) = read_state() else {
        println!("the local cluster is starting (supervisor pid {pid})");
        return Ok(());
    };
    println!("the local cluster is up (supervisor pid {pid})");
    println!("  apiserver:  {}", state.apiserver);
    println!("  kubeconfig: {}", state.kubeconfig.display());
    println!("  logs:       {}", state.log_dir.display());
    for (name, pid) in &state.components {
        let alive = if pid_alive(*pid) {
            "running"
        } else {
            "NOT RUNNING"
        };
        println!("  {name:<24} pid {pid:<8} {alive}");
    }
    Ok(())
}

/// The supervisor: owns the cluster until SIGTERM or SIGINT, then stops it.
fn run(args: UpArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    std::fs::write(pid_file(), std::process::id().to_string()).context("writing the pid file")?;
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let options = ClusterOptions {
            gpu_nodes: args.gpu_nodes,
            gpus_per_node: args.gpus_per_node,
            gpu_product: args.gpu_product.clone(),
            cpu_nodes: args.cpu_nodes,
            hpa_downscale_stabilization: Duration::from_secs(args.hpa_downscale_stabilization_secs),
            work_dir: Some(cluster_dir()),
            start_timeout: Duration::from_secs(args.timeout_secs),
            ..ClusterOptions::default()
        };
        let start = tokio::select! {
            started = LocalCluster::start(options) => started?,
            _ = term.recv() => bail!("stopped while starting"),
        };
        let cluster = start;
        let state = State {
            supervisor_pid: std::process::id(),
            apiserver: cluster.apiserver_url().to_string(),
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            log_dir: cluster.log_dir().to_path_buf(),
            components: cluster.pids(),
        };
        write_atomic(&state_file(), &serde_json::to_string_pretty(&state)?)?;
        eprintln!(
            "cluster up: {} (kubeconfig {})",
            state.apiserver,
            state.kubeconfig.display()
        );
        tokio::select! {
            _ = term.recv() => eprintln!("SIGTERM: stopping the cluster"),
            _ = tokio::signal::ctrl_c() => eprintln!("SIGINT: stopping the cluster"),
        }
        cluster.shutdown();
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(state_file());
    let _ = std::fs::remove_file(pid_file());
    result
}

fn read_state() -> Option<State> {
    let text = std::fs::read_to_string(state_file()).ok()?;
    serde_json::from_str(&text).ok()
}

/// The supervisor's pid, if its pid file names a live process that is ours.
fn running_supervisor() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A stale pid file may name a pid reused by something else: check it is a supervisor.
    let cmdline = String::from_utf8_lossy(&cmdline);
    let is_ours = cmdline.contains("lexserve-e2e") && cmdline.contains("cluster\0run");
    (pid_alive(pid) && is_ours).then_some(pid)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // A zombie is not running: check /proc's state too.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    // SAFETY: signal 0 only checks whether the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !zombie
}

/// SIGTERM, wait up to 30 s (the supervisor stops the components in turn), then SIGKILL.
fn stop_pid(pid: u32) -> Result<()> {
    let ipid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(ipid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the supervisor (pid {pid}) did not stop within 30s: killing it (its components die with it)"
    );
    // SAFETY: plain kill(2); the components have PR_SET_PDEATHSIG and die with it.
    unsafe {
        libc::kill(ipid, libc::SIGKILL);
    }
    Ok(())
}

fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// `operator as-deployed`: resolves the chart's Deployment (environment, ServiceAccount) with the
/// admin kubeconfig, writes a kubeconfig holding a token of that ServiceAccount, then execs the
/// operator with them, so that what it may do is what the chart grants.
fn as_deployed(args: &AsDeployedArgs) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    lexserve_e2e::init_crypto();
    let admin = cluster_dir().join("kubeconfig");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let pod = format!("{}-0", args.deployment);
    let (env, account) = runtime.block_on(async {
        let client = admin_client(&admin).await?;
        let env =
            lexserve_e2e::chart::deployed_env(&client, &args.namespace, &args.deployment, &pod)
                .await?;
        let deployment = kube::Api::<Deployment>::namespaced(client, &args.namespace)
            .get(&args.deployment)
            .await?;
        let account = deployment
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "default".to_string());
        anyhow::Ok((env, account))
    })?;
    let token = Command::new(bins::kubectl()?)
        .args(["--kubeconfig", &admin.display().to_string()])
        .args(["create", "token", &account, "-n", &args.namespace])
        .arg("--duration=24h")
        .output()
        .context("kubectl create token")?;
    if !token.status.success() {
        bail!(
            "kubectl create token {account}: {}",
            String::from_utf8_lossy(&token.stderr)
        );
    }
    let kubeconfig = cluster_dir().join(format!("{}-{account}.kubeconfig", args.namespace));
    let text = lexserve_e2e::chart::token_kubeconfig(
        &std::fs::read_to_string(&admin)?,
        &args.namespace,
        &account,
        &String::from_utf8_lossy(&token.stdout),
    )?;
    std::fs::write(&kubeconfig, text)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let operator_args = lexserve_e2e::chart::as_deployed_args(
        &kubeconfig,
        match args.metrics_port {
            Some(port) => port,
            None => lexserve_e2e::sidecar::free_port()?,
        },
        lexserve_e2e::sidecar::free_port()?,
        lexserve_e2e::chart::metrics_api_port(&env)?,
    );
    eprintln!(
        "lexserve-operator as system:serviceaccount:{}:{account}, with the environment of Deployment {}/{}",
        args.namespace, args.namespace, args.deployment
    );
    let error = Command::new(lexserve_e2e::operator::workspace_bin("lexserve-operator")?)
        .args(&operator_args)
        .envs(env)
        .exec();
    Err(error).context("exec lexserve-operator")
}

/// `pods`: runs [`lexserve_e2e::demo_pods`] with the admin kubeconfig until SIGTERM or SIGINT.
fn pods(args: PodsArgs) -> Result<()> {
    lexserve_e2e::init_crypto();
    let admin = cluster_dir().join("kubeconfig");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = admin_client(&admin).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        lexserve_e2e::demo_pods::run(
            client,
            lexserve_e2e::demo_pods::Options {
                dir: cluster_dir().join(format!("pods-{}", lexserve_e2e::kwok::PODS_NAMESPACE)),
                namespace: lexserve_e2e::kwok::PODS_NAMESPACE.to_string(),
                state: args.state,
                operator_metrics: args.operator_metrics,
            },
            shutdown,
        )
        .await
    })
}

/// A client acting with the local cluster's admin kubeconfig at `path`.
async fn admin_client(path: &Path) -> Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading {} (is the cluster up?)", path.display()))?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}
