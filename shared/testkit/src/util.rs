//! Small helpers shared by the service launchers.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port that was free a moment ago and not handed out before in this process.
pub fn free_port() -> u16 {
    free_ports(1).first().copied().unwrap_or(0)
}

/// `n` distinct ports that were free a moment ago (all bound at once, then released), none
/// of them handed out before in this process: a port given to a node that has not bound it
/// yet must not be given to the next server a parallel test starts (the OS would happily
/// hand it out again, and a gateway then finds a Redis answering on its port).
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut ports = Vec::with_capacity(n);
    // Kept bound until every port is chosen, so the OS cannot repeat one within the batch.
    let mut held = Vec::new();
    for _ in 0..n.saturating_mul(20).max(20) {
        if ports.len() == n {
            break;
        }
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        if let Ok(port) = l.local_addr().map(|a| a.port()) {
            if handed.insert(port) {
                ports.push(port);
            }
        }
        held.push(l);
    }
    ports
}

/// Waits until something accepts on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "lockstep-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Finds an executable on PATH or in the given extra directories.
pub fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Whether this process runs as root (PostgreSQL refuses to run as root).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
