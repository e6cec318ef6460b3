//! A private `redis-server`, or the server `LOCKSTEP_TEST_REDIS_URL` names.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

    /// Always a private server, started with `extra` settings (e.g. a command renamed away, as
    /// some providers and proxies do; `restart` starts it without them).
    pub fn start_with(extra: &[&str]) -> Redis {
        Redis::start_private_with(None, extra)
    }

    fn start_private(tls: Option<(&TestCa, bool)>) -> Redis {
        Redis::start_private_with(tls, &[])
    }

    fn start_private_with(tls: Option<(&TestCa, bool)>, extra: &[&str]) -> Redis {
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
                child: Some(spawn_server(&bin, &listen, &dir, extra)),
                dir: Some(dir.clone()),
                listen,
            };
            if redis.serving(tls.is_none()) {
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
        let plain = self.url.starts_with("redis:");
        assert!(self.serving(plain), "redis did not restart");
    }

    /// Waits until our own server answers on its port. Something else may listen there: the
    /// port was free a moment ago, and a test beside us may have been handed it too (our server
    /// then exits, unable to bind, and the port answers for the other's). A plain server must
    /// answer `CONFIG GET dir` with our directory; a TLS one must still be running once its
    /// port accepts.
    fn serving(&mut self, plain: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return false;
            }
            let ours = match (&self.dir, plain) {
                (Some(dir), true) => answers_with_dir(self.port, dir),
                _ => {
                    wait_for_port(self.port, Duration::from_millis(200)) && {
                        std::thread::sleep(Duration::from_millis(50));
                        !self.exited()
                    }
                }
            };
            if ours {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the private server (simulates an outage); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the Redis on `port` works in `dir` (its name is unique to one test's server).
fn answers_with_dir(port: u16, dir: &Path) -> bool {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let ask = b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$3\r\ndir\r\n";
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .and_then(|()| stream.write_all(ask))
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while reply.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if String::from_utf8_lossy(&reply).contains(name) {
            return true;
        }
    }
    false
}

/// A private `redis-server` listening as `listen` says (`--port <n>`, or TLS settings),
/// keeping nothing on disk, with `extra` settings (a Redis Cluster node adds its cluster flags).
pub(crate) fn spawn_server(bin: &Path, listen: &[String], dir: &Path, extra: &[&str]) -> Child {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tests handed the same port: the second must not take the first's server for its own.
    #[test]
    fn a_server_on_our_port_is_ours_only_if_it_works_in_our_directory() {
        let (first, second) = (Redis::start_with(&[]), Redis::start_with(&[]));
        let (Some(first_dir), Some(second_dir)) = (&first.dir, &second.dir) else {
            panic!("private servers have directories");
        };
        assert!(answers_with_dir(first.port(), first_dir));
        assert!(answers_with_dir(second.port(), second_dir));
        assert!(!answers_with_dir(first.port(), second_dir));
    }
}
