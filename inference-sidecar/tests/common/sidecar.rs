//! A `lexserve-sidecar serve` (or `route`) process on a free port, its logs kept for failure messages, killed when
//! dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::client;

pub struct Sidecar {
    child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// How long a test waits for a server to come up before failing (loading, not asserting on speed).
const STARTUP_LIMIT: Duration = Duration::from_secs(300);

impl Sidecar {
    /// Starts `lexserve-sidecar serve ARGS --listen 127.0.0.1:0` and waits until it listens.
    pub fn start(args: &[String]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts the server and waits until it is ready, with a client to talk to it.
    pub async fn start_ready(args: &[String]) -> (Self, reqwest::Client) {
        let sidecar = Self::start(args);
        let client = client();
        sidecar.wait_ready(&client).await;
        (sidecar, client)
    }

    pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Self {
        Self::start_subcommand("serve", args, env)
    }

    /// Starts `lexserve-sidecar SUBCOMMAND ARGS --listen 127.0.0.1:0` (`serve` or `route`) and
    /// waits until it listens.
    pub fn start_subcommand(subcommand: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lexserve-sidecar"));
        command
            .arg(subcommand)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("ORT_DYLIB_PATH")
            .env("LEXSERVE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn lexserve-sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"listening\"")
                    && let Some(addr) = line
                        .split("\"addr\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                {
                    let _ = addr_tx.send(addr.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx.recv_timeout(STARTUP_LIMIT).unwrap_or_else(|_| {
            panic!(
                "sidecar did not start listening; logs: {:?}",
                logs.lock().unwrap()
            )
        });
        Self {
            child,
            base: format!("http://{addr}"),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `/ready` until it is 200 (or panics after the startup limit, with the server's logs).
    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok(response) = client.get(self.url("/ready")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar never became ready; logs: {:?}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `path` until it answers `status` (the thread that noticed a change may still be
    /// on its way: no timing is asserted, only that it happens within a generous bound); returns
    /// the JSON answer, or panics with the last answer and the server's logs.
    pub async fn wait_status(
        &self,
        client: &reqwest::Client,
        path: &str,
        status: u16,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (got, body) = super::http::get(client, self.url(path)).await;
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered {status} (last: {got} {body}); logs: {:?}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("read /metrics")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (via kill(1), to stay free of libc bindings).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Polls `/ready` (503 throughout) until the load attempt has finished, and returns the reason
    /// it failed.
    pub async fn load_failure(&self, client: &reqwest::Client) -> String {
        loop {
            let (status, body) = super::http::get(client, self.url("/ready")).await;
            assert_eq!(status, 503);
            let reason = body["reason"].as_str().unwrap_or_default().to_string();
            if !reason.contains("loading") {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
