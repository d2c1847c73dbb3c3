//! Docker in the guest: [`Dockerd::start`] runs `dockerd` in a VM booted
//! from an image that has Docker (the built-in `debian:12-docker`), waits
//! until `docker info` answers, and [`Dockerd::stop`] stops it cleanly
//! before the VM shuts down. See docs/docker.md.

use std::time::{Duration, Instant};

use crate::{Error, Process, Signal, Vm};

/// Where the daemon's output goes in the guest.
pub const DOCKERD_LOG: &str = "/var/log/dockerd.log";
/// How long [`Dockerd::start`] waits for the daemon by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`Dockerd::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between `docker info` probes while starting.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A running `dockerd` in a guest. Dropping it leaves the daemon running
/// (it goes with the VM); [`Dockerd::stop`] stops it cleanly.
pub struct Dockerd {
    process: Process,
    ready_after: Duration,
}

impl Dockerd {
    /// Starts `dockerd` (which starts its own containerd) and waits until
    /// `docker info` answers, for at most [`DEFAULT_START_TIMEOUT`].
    pub async fn start(vm: &Vm) -> Result<Self, Error> {
        Self::start_with_timeout(vm, DEFAULT_START_TIMEOUT).await
    }

    /// [`Dockerd::start`] with another timeout.
    pub async fn start_with_timeout(vm: &Vm, timeout: Duration) -> Result<Self, Error> {
        let started = Instant::now();
        let has_docker = vm
            .exec("sh", ["-c", "command -v dockerd && command -v docker"])
            .await?;
        if !has_docker.status.success() {
            return Err(Error::InvalidConfig(
                "the guest image has no dockerd/docker: boot the built-in \"debian:12-docker\" \
                 image, or an image with Docker installed"
                    .into(),
            ));
        }
        let process = vm
            .command("sh")
            .args(["-c", &format!("exec dockerd >>{DOCKERD_LOG} 2>&1")])
            .spawn()?;
        loop {
            let probe = vm
                .exec("docker", ["info", "--format", "{{.ServerVersion}}"])
                .await?;
            if probe.status.success() {
                return Ok(Self {
                    process,
                    ready_after: started.elapsed(),
                });
            }
            let exited = tokio::time::timeout(Duration::ZERO, process.exit()).await;
            let why = match exited {
                Ok(status) => Some(format!("exited ({:?})", status?)),
                Err(_) if started.elapsed() > timeout => Some(format!(
                    "did not answer `docker info` within {} s",
                    timeout.as_secs()
                )),
                Err(_) => None,
            };
            if let Some(why) = why {
                let _ = process.kill(Signal::KILL);
                let log = vm.exec("tail", ["-n", "20", DOCKERD_LOG]).await?;
                return Err(Error::Service {
                    service: "dockerd",
                    message: format!(
                        "{why}; last lines of {DOCKERD_LOG}:\n{}",
                        String::from_utf8_lossy(&log.stdout)
                    ),
                });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Time from `start` to the first answer of `docker info`.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The daemon's guest process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Stops the daemon with SIGTERM (it stops its containers and
    /// containerd and unmounts its layers), waiting up to 30 s before
    /// SIGKILL. Call it before [`Vm::shutdown`] so the root file system is
    /// left clean for a persistent root.
    pub async fn stop(self) -> Result<(), Error> {
        self.process.kill(Signal::TERM)?;
        match tokio::time::timeout(STOP_TIMEOUT, self.process.exit()).await {
            Ok(status) => status.map(|_| ()),
            Err(_) => {
                self.process.kill(Signal::KILL)?;
                self.process.exit().await?;
                Err(Error::Service {
                    service: "dockerd",
                    message: format!(
                        "did not stop within {} s of SIGTERM and was killed",
                        STOP_TIMEOUT.as_secs()
                    ),
                })
            }
        }
    }
}
