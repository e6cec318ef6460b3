//! A private PostgreSQL cluster (initdb + postgres, trust auth on 127.0.0.1), or a fresh
//! database on the server `LOCKSTEP_TEST_PG_URL` names. As root, the server runs as the
//! `postgres` system user, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::tls::TestCa;
use crate::util::{find_binary, free_port, is_root, temp_dir, wait_for_port};

/// A PostgreSQL database for one test.
pub struct Postgres {
    url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// Extra server settings (TLS), kept for `restart`.
    settings: String,
}

impl Postgres {
    /// Starts a private cluster, or creates a fresh database on the configured server.
    pub fn start() -> Postgres {
        if let Ok(base) = std::env::var("LOCKSTEP_TEST_PG_URL") {
            return Postgres {
                url: fresh_database(&base),
                cluster: None,
            };
        }
        Postgres::start_private(None)
    }

    /// Starts a private cluster that accepts TCP connections over TLS only (`hostssl` in
    /// pg_hba.conf), with a certificate `ca` signed: always private, since a configured
    /// server's TLS settings are unknown. The URL has no `sslmode`; the test adds it.
    pub fn start_tls(ca: &TestCa) -> Postgres {
        Postgres::start_private(Some((ca, false)))
    }

    /// Like [`Postgres::start_tls`], and clients authenticate with a certificate the CA signed
    /// whose common name is the user (`cert` in pg_hba.conf): no password is accepted.
    pub fn start_mtls(ca: &TestCa) -> Postgres {
        Postgres::start_private(Some((ca, true)))
    }

    fn start_private(tls: Option<(&TestCa, bool)>) -> Postgres {
        let bin = pg_bin_dir().unwrap_or_else(|| {
            panic!("PostgreSQL server binaries (initdb, postgres) not found: install postgresql (ops/test.sh does) or set LOCKSTEP_TEST_PG_URL")
        });
        let as_postgres = is_root();
        let dir = temp_dir("pg");
        let data = dir.join("data");
        let mut settings = String::new();
        if let Some((ca, _)) = tls {
            // The server reads its key as its own user, which must own it (mode 0600).
            let (cert, key, roots) = (
                dir.join("server.pem"),
                dir.join("server.key"),
                dir.join("ca.pem"),
            );
            std::fs::copy(ca.cert_file(), &cert).unwrap();
            std::fs::copy(ca.key_file(), &key).unwrap();
            std::fs::copy(ca.ca_file(), &roots).unwrap();
            settings = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={}",
                cert.display(),
                key.display(),
                roots.display()
            );
        }
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown",
            );
        }
        let mut initdb = wrap(as_postgres, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(&mut initdb, "initdb");
        if let Some((_, client_certs)) = tls {
            // Local sockets for the harness; TCP only over TLS (and by certificate).
            let method = if client_certs { "cert" } else { "trust" };
            std::fs::write(
                data.join("pg_hba.conf"),
                format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n"),
            )
            .unwrap();
        }
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            as_postgres,
            running: false,
            settings,
        };
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.start_server() {
                let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
                return Postgres {
                    url,
                    cluster: Some(cluster),
                };
            }
        }
        panic!(
            "postgres did not start on a free port (log: {})",
            cluster.dir.join("log").display()
        );
    }

    /// A connection URL (`postgres://user@host:port/db`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the private server (simulates an outage).
    pub fn stop(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.stop_server();
        }
    }

    /// Starts it again on the same port after [`Postgres::stop`].
    pub fn restart(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            assert!(c.start_server(), "postgres did not restart");
        }
    }
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_server(&mut self) -> bool {
        let mut ctl = wrap(self.as_postgres, &self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off -c max_connections=200{}",
                self.port,
                self.dir.display(),
                self.settings
            ))
            .args(["-w", "-t", "30", "start"]);
        let ok = ctl
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        self.running = ok && wait_for_port(self.port, Duration::from_secs(10));
        self.running
    }

    fn stop_server(&mut self) {
        if !self.running {
            return;
        }
        let mut ctl = wrap(self.as_postgres, &self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
        self.running = false;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop_server();
            let _ = std::fs::remove_dir_all(&c.dir);
        }
    }
}

/// Runs `bin` directly, or as the `postgres` user when we are root.
fn wrap(as_postgres: bool, bin: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest `/usr/lib/postgresql/<v>/bin`, or wherever `initdb` is on PATH.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    find_binary("initdb", &versions.into_iter().rev().collect::<Vec<_>>())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Creates `lockstep_test_<n>` on the configured server with psql; returns its URL.
fn fresh_database(base: &str) -> String {
    let name = format!("lockstep_test_{}_{}", std::process::id(), free_port());
    let status = Command::new("psql")
        .arg(base)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .stdout(Stdio::null())
        .status();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "cannot create a test database on {base}"
    );
    match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_cluster_accepts_connections() {
        let pg = Postgres::start();
        let out = Command::new("psql")
            .arg(pg.url())
            .args(["-tAc", "select 40 + 2"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
