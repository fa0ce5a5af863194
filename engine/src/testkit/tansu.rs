//! A Tansu broker in its own process, for `cdrs bench` and the end-to-end
//! tests: Tansu 0.6, an Apache-Kafka-compatible broker written in Rust,, with memory storage on a free loopback port.
//! The binary comes from `CDRS_TANSU`, else `.tools/bin/tansu` (installed
//! by `scripts/dev.sh broker`). The process is killed when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a fresh broker gets to answer a metadata request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running Tansu broker process.
pub struct TansuProcess {
    brokers: String,
    child: Child,
}

impl TansuProcess {
    /// Where the binary is: `$CDRS_TANSU`, else `.tools/bin/tansu` under `root`.
    pub fn binary(root: &Path) -> PathBuf {
        std::env::var_os("CDRS_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".tools/bin/tansu"))
    }

    /// Starts `bin` on a free 127.0.0.1 port and blocks until it answers a
    /// metadata request (at most 20 s).
    ///
    /// # Errors
    /// The binary cannot be started, or the broker does not answer.
    pub fn start(bin: &Path) -> anyhow::Result<TansuProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("failed to start {}: {e}", bin.display()))?;
        // From here on, a failure kills the process (drop).
        let tansu = TansuProcess {
            brokers: format!("127.0.0.1:{port}"),
            child,
        };
        super::kafka::wait_for_metadata(&tansu.brokers, START_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("Tansu: {e}"))?;
        Ok(tansu)
    }

    /// Bootstrap servers, `127.0.0.1:PORT`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
