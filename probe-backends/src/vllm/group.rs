//! [`ServerGroup`]: the servers one launch started ([`LaunchedServer`]); stops exactly those
//! processes and their children.

use std::path::Path;
use std::time::{Duration, Instant};

use probe_core::{Error, Result};

use super::BACKEND;
use super::launcher::LaunchCommand;
use super::process::GroupChild;
use super::spec::ServerSpec;

/// A server process the launcher started. Stopped (its whole process group) when dropped.
#[derive(Debug)]
pub struct LaunchedServer {
    pub(super) spec: ServerSpec,
    pub(super) command: LaunchCommand,
    pub(super) child: GroupChild,
}

impl LaunchedServer {
    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.command.url
    }
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
    /// What it was started from.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }
    /// The command it runs.
    pub fn command(&self) -> &LaunchCommand {
        &self.command
    }
    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.command.log
    }

    pub(super) async fn wait_healthy(
        &mut self,
        http: &reqwest::Client,
        path: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let url = format!("{}{path}", self.command.url);
        loop {
            if let Some(status) = self.child.try_wait() {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "the server for {} exited ({status}) before it was healthy; end of {}:\n{}",
                        self.command.url,
                        self.command.log.display(),
                        log_tail(&self.command.log, 30)
                    ),
                ));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                tracing::info!(url = %self.command.url, pid = self.pid(), "vllm: server is healthy");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Temporary {
                    backend: BACKEND.into(),
                    message: format!(
                        "{url} was not healthy within {timeout:?}; end of {}:\n{}",
                        self.command.log.display(),
                        log_tail(&self.command.log, 30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The last `n` lines of a log file (or why it cannot be read).
fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// The servers of one launch. [`ServerGroup::stop`] (or dropping it) stops exactly these
/// processes and their children: SIGTERM to each process group, then SIGKILL to what is left
/// after the grace period.
#[derive(Debug)]
pub struct ServerGroup {
    pub(super) servers: Vec<LaunchedServer>,
    pub(super) grace: Duration,
}

impl ServerGroup {
    /// The servers, in the launcher's order.
    pub fn servers(&self) -> &[LaunchedServer] {
        &self.servers
    }
    /// Their base URLs, for [`crate::vllm::VllmGenerator::builder`].
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url().to_owned()).collect()
    }

    fn stop_blocking(&mut self) {
        for s in &mut self.servers {
            s.child.terminate();
        }
        let deadline = Instant::now() + self.grace;
        for s in &mut self.servers {
            s.child.finish_stop(deadline);
            tracing::info!(pid = s.pid(), url = %s.url(), "vllm: server stopped");
        }
        // Stopped once: the drop that follows `stop` has nothing left to stop.
        self.servers.clear();
    }

    /// Stops every server and waits until they are gone (blocking work runs off the async
    /// runtime's threads).
    ///
    /// # Errors
    /// A backend error when the stopping thread panicked.
    pub async fn stop(mut self) -> Result<()> {
        let mut servers = std::mem::take(&mut self.servers);
        let grace = self.grace;
        tokio::task::spawn_blocking(move || {
            let mut g = ServerGroup { servers: std::mem::take(&mut servers), grace };
            g.stop_blocking();
        })
        .await
        .map_err(|e| Error::backend(BACKEND, format!("stopping the servers failed: {e}")))
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}
