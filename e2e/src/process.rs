//! Child processes that cannot outlive the process that started them.
//!
//! A test binary that panics, is interrupted, or simply exits must not leave an etcd or a
//! kube-apiserver behind: the next run would find its ports taken and CI would hang on it.
//! Three layers make sure of it:
//!
//! 1. Each component runs in its own process group, and stopping it signals the whole group
//!    (SIGTERM, then SIGKILL after a grace period). [`Process`] does this on drop.
//! 2. Each child gets `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when its parent dies,
//!    whatever the way (SIGKILL included). The kernel ties this to the *thread* that forked the
//!    child, not the process: a child spawned from a test's thread would be killed when that
//!    test ends. So every child is spawned from one long-lived spawner thread.
//! 3. Process groups still alive at `exit()` are killed by an `atexit` hook ([`on_exit`]),
//!    because statics (such as a cluster shared by the tests of one binary) are never dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Process groups that are running, for the exit hook.
static LIVE_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Callbacks for the exit hook, run before live groups are killed.
static EXIT_HOOKS: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());
static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
static ATEXIT: OnceLock<()> = OnceLock::new();

/// How long a component gets to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running child process, alone in its process group, killed with its group on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, its stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Process::spawn`] with `env` set on top of this process's environment.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        install_exit_hook();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening log {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody will signal us.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_from_spawner(cmd)
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child_pid(&child)?;
        lock(&LIVE_GROUPS).push(pid);
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The component's name, as given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM to the process group, as the kubelet does to a terminating pod's container,
    /// and returns at once.
    pub fn terminate(&self) {
        if let Ok(pid) = child_pid(&self.child) {
            signal_group(pid, libc::SIGTERM);
        }
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL after a grace period. Idempotent.
    pub fn stop(&mut self) {
        let Ok(pid) = child_pid(&self.child) else {
            return;
        };
        if self.child.try_wait().ok().flatten().is_none() {
            signal_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The leader may be gone while others in its group live on: always kill the group.
        signal_group(pid, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        lock(&LIVE_GROUPS).retain(|&p| p != pid);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers `hook` to run at process exit (before any still-running process group is killed).
/// Used for statics that own resources, since statics are never dropped.
pub fn on_exit(hook: impl FnOnce() + Send + 'static) {
    install_exit_hook();
    lock(&EXIT_HOOKS).push(Box::new(hook));
}

fn install_exit_hook() {
    ATEXIT.get_or_init(|| {
        // SAFETY: registering a plain extern "C" fn; it runs once at exit().
        unsafe {
            libc::atexit(run_exit_hooks);
        }
    });
}

extern "C" fn run_exit_hooks() {
    // Never block at exit: a lock held by a thread that is gone would hang the process.
    let hooks = match EXIT_HOOKS.try_lock() {
        Ok(mut hooks) => std::mem::take(&mut *hooks),
        Err(_) => Vec::new(),
    };
    for hook in hooks {
        // A panic must not unwind across the extern "C" boundary.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook));
    }
    let groups = match LIVE_GROUPS.try_lock() {
        Ok(groups) => groups.clone(),
        Err(_) => Vec::new(),
    };
    for &pid in &groups {
        signal_group(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && groups.iter().any(|&pid| reap(pid) || group_alive(pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in &groups {
        signal_group(pid, libc::SIGKILL);
    }
}

fn spawn_from_spawner(cmd: Command) -> std::io::Result<Child> {
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // This thread lives as long as the process: children are tied to it by PDEATHSIG.
        let spawned = std::thread::Builder::new()
            .name("lexserve-e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender is in a static and never dropped: keep the thread (and with it
                // the children) alive until the process exits, whatever happens.
                loop {
                    std::thread::park();
                }
            });
        if let Err(err) = spawned {
            eprintln!("lexserve-e2e: cannot start the spawner thread: {err}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(sender)
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread did not answer"))?
}

fn child_pid(child: &Child) -> Result<i32> {
    i32::try_from(child.id()).map_err(|_| anyhow!("pid {} out of range", child.id()))
}

fn signal_group(pid: i32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Reaps the leader if it has exited (a zombie still counts as alive for kill(2)); returns
/// false, so that it can sit in front of `group_alive` in a condition.
fn reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on our own child with WNOHANG; status is a valid out-pointer.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
    false
}

fn group_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 1 && unsafe { libc::kill(-pid, 0) } == 0
}

/// Locks a mutex, ignoring poisoning: the data (pids, hooks) stays valid after a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
