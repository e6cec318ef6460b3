//! A private `redis-server`, or the server `LOCKSTEP_TEST_REDIS_URL` names.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tls::TestCa;
use crate::util::{find_binary, free_port, temp_dir, wait_for_port};

/// A Redis server for one test.
pub struct Redis {
    url: String,
    port: u16,
    child: Option<Child>,
    dir: Option<std::path::PathBuf>,
    /// How it listens (plain, or TLS only), kept for `restart`.
    listen: Vec<String>,
}

impl Redis {
    /// Starts a private server (no persistence) or uses the configured URL. Panics with a
    /// clear message when neither is possible: a test that needs Redis cannot run without.
    pub fn start() -> Redis {
        if let Ok(url) = std::env::var("LOCKSTEP_TEST_REDIS_URL") {
            return Redis {
                url,
                port: 0,
                child: None,
                dir: None,
                listen: Vec::new(),
            };
        }
        Redis::start_private(None)
    }

    /// Starts a private server that speaks TLS only (`rediss://`), with a certificate `ca`
    /// signed: always private, since a configured server's TLS settings are unknown.
    pub fn start_tls(ca: &TestCa) -> Redis {
        Redis::start_private(Some((ca, false)))
    }

    /// Like [`Redis::start_tls`], and clients must present a certificate the CA signed
    /// (`tls-auth-clients yes`), as some managed services require.
    pub fn start_mtls(ca: &TestCa) -> Redis {
        Redis::start_private(Some((ca, true)))
    }

    fn start_private(tls: Option<(&TestCa, bool)>) -> Redis {
        let bin = find_binary("redis-server", &[]).unwrap_or_else(|| {
            panic!("redis-server not found: install it (apt-get install redis-server; ops/test.sh does) or set LOCKSTEP_TEST_REDIS_URL")
        });
        let dir = temp_dir("redis");
        for _ in 0..5 {
            let port = free_port();
            let (scheme, listen) = match tls {
                Some((ca, client_certs)) => {
                    ("rediss", ca.files().redis_server_args(port, client_certs))
                }
                None => ("redis", vec!["--port".into(), port.to_string()]),
            };
            let mut redis = Redis {
                url: format!("{scheme}://127.0.0.1:{port}"),
                port,
                child: Some(spawn_server(&bin, &listen, &dir, &[])),
                dir: Some(dir.clone()),
                listen,
            };
            if wait_for_port(port, Duration::from_secs(10)) {
                return redis;
            }
            redis.stop();
        }
        panic!("redis-server did not start on a free port");
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private server's process id (to pause it with SIGSTOP in a test).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the private server again on the same port (with no data: it keeps nothing).
    pub fn restart(&mut self) {
        let (Some(bin), Some(dir)) = (find_binary("redis-server", &[]), self.dir.clone()) else {
            return;
        };
        self.stop();
        let child = spawn_server(&bin, &self.listen, &dir, &[]);
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis did not restart"
        );
    }

    /// Stops the private server (simulates an outage); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private `redis-server` listening as `listen` says (`--port <n>`, or TLS settings),
/// keeping nothing on disk, with `extra` settings (a Redis Cluster node adds its cluster flags).
pub(crate) fn spawn_server(
    bin: &std::path::Path,
    listen: &[String],
    dir: &std::path::Path,
    extra: &[&str],
) -> Child {
    Command::new(bin)
        .args(listen)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
