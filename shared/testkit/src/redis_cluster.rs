//! A private Redis Cluster of three masters on free loopback ports (sharded pub/sub needs
//! Redis ≥ 7.0), or the seed nodes `LOCKSTEP_TEST_REDIS_CLUSTER_NODES` names
//! (comma-separated `redis://host:port`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::spawn_server;
use crate::tls::{TestCa, TlsFiles};
use crate::util::{find_binary, free_ports, temp_dir, wait_for_port};

/// Masters in a private cluster: the fewest `redis-cli --cluster create` accepts.
const MASTERS: usize = 3;

struct ClusterNode {
    port: u16,
    bus_port: u16,
    child: Option<Child>,
}

/// A Redis Cluster for one test.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    external: Option<Vec<String>>,
    dir: Option<PathBuf>,
    /// Set when the nodes speak TLS only (clients, `redis-cli` and the cluster bus).
    tls: Option<TlsFiles>,
}

impl RedisCluster {
    /// Starts a private cluster or uses the configured one. Panics with a clear message when
    /// neither is possible: a test that needs a Redis Cluster cannot run without.
    pub fn start() -> RedisCluster {
        if let Ok(seeds) = std::env::var("LOCKSTEP_TEST_REDIS_CLUSTER_NODES") {
            return RedisCluster {
                nodes: Vec::new(),
                external: Some(seeds.split(',').map(|s| s.trim().to_owned()).collect()),
                dir: None,
                tls: None,
            };
        }
        RedisCluster::start_private(None)
    }

    /// Starts a private cluster whose nodes speak TLS only (`rediss://`), with a certificate
    /// `ca` signed; the nodes' bus is TLS too.
    pub fn start_tls(ca: &TestCa) -> RedisCluster {
        RedisCluster::start_private(Some(ca.files()))
    }

    fn start_private(tls: Option<TlsFiles>) -> RedisCluster {
        let bin = find_binary("redis-server", &[]).unwrap_or_else(|| {
            panic!("redis-server not found: install it (apt-get install redis-server; ops/test.sh does) or set LOCKSTEP_TEST_REDIS_CLUSTER_NODES")
        });
        for _ in 0..3 {
            let dir = temp_dir("redis-cluster");
            let ports = free_ports(MASTERS * 2);
            let mut cluster = RedisCluster {
                nodes: ports
                    .chunks(2)
                    .map(|p| ClusterNode {
                        port: p[0],
                        bus_port: p[1],
                        child: Some(spawn_node(&bin, p[0], p[1], &dir, tls.as_ref())),
                    })
                    .collect(),
                external: None,
                dir: Some(dir),
                tls: tls.clone(),
            };
            if cluster.nodes.len() == MASTERS
                && cluster
                    .nodes
                    .iter()
                    .all(|n| wait_for_port(n.port, Duration::from_secs(10)))
                && cluster.create()
            {
                return cluster;
            }
            cluster.stop_all();
        }
        panic!("a private Redis Cluster did not form (redis-server ≥ 7.0 and redis-cli needed)");
    }

    /// The seed nodes, as `cluster.redis_cluster_nodes` takes them.
    pub fn seeds(&self) -> Vec<String> {
        match &self.external {
            Some(seeds) => seeds.clone(),
            None => {
                let scheme = if self.tls.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                self.nodes
                    .iter()
                    .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
                    .collect()
            }
        }
    }

    /// The process ids of a private cluster's nodes (to pause them with SIGSTOP in a test).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The client ports of a private cluster (empty for a configured one).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Kills node `i` of a private cluster and starts it again on the same ports with the same
    /// identity (its `nodes.conf`); it keeps no data. Returns once the cluster is whole again.
    pub fn restart_node(&mut self, i: usize) {
        let (Some(bin), Some(dir)) = (find_binary("redis-server", &[]), self.dir.clone()) else {
            return;
        };
        let node = &mut self.nodes[i];
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.child = Some(spawn_node(
            &bin,
            node.port,
            node.bus_port,
            &dir,
            self.tls.as_ref(),
        ));
        assert!(
            wait_for_port(node.port, Duration::from_secs(10)),
            "redis cluster node did not restart"
        );
        assert!(
            self.wait_ok(Duration::from_secs(20)),
            "the redis cluster did not become whole after a node restart"
        );
    }

    /// Adds an empty master and moves a share of the slots (and their keys and channels) to it,
    /// as an operator scaling out does (`redis-cli --cluster add-node`, then `rebalance
    /// --cluster-use-empty-masters`). Returns the new node's port once every node agrees.
    pub fn add_node_and_rebalance(&mut self) -> u16 {
        let (Some(bin), Some(dir)) = (find_binary("redis-server", &[]), self.dir.clone()) else {
            panic!("only a private cluster can grow");
        };
        let ports = free_ports(2);
        let (port, bus_port) = (ports[0], ports[1]);
        let child = spawn_node(&bin, port, bus_port, &dir, self.tls.as_ref());
        self.nodes.push(ClusterNode {
            port,
            bus_port,
            child: Some(child),
        });
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "new node did not start"
        );
        let first = format!("127.0.0.1:{}", self.nodes[0].port);
        let added = self.cli(&[
            "--cluster",
            "add-node",
            &format!("127.0.0.1:{port}"),
            &first,
        ]);
        assert!(added, "redis-cli --cluster add-node failed");
        // `rebalance` refuses while the nodes still disagree about the configuration.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.wait_ok(Duration::from_secs(1)) && self.cli(&["--cluster", "check", &first])) {
            assert!(Instant::now() < deadline, "the new node never joined");
        }
        // A busy machine can make a rebalance fail half-way (a slot left migrating, the
        // nodes briefly disagreeing); `fix` finishes what it left, and it is tried again.
        let mut attempts = Vec::new();
        loop {
            let out = self.cli_output(&[
                "--cluster",
                "rebalance",
                &first,
                "--cluster-use-empty-masters",
                "--cluster-yes",
            ]);
            match out {
                Ok(_) => break,
                Err(e) if attempts.len() < 4 => {
                    eprintln!("redis-cli --cluster rebalance failed, fixing and retrying: {e}");
                    attempts.push(e);
                    std::thread::sleep(Duration::from_millis(500));
                    let _ = self.cli_output(&["--cluster", "fix", &first, "--cluster-yes"]);
                    let _ = self.wait_ok(Duration::from_secs(10));
                }
                Err(e) => {
                    panic!("redis-cli --cluster rebalance failed: {e}\nearlier: {attempts:?}")
                }
            }
        }
        assert!(
            self.wait_ok(Duration::from_secs(20)),
            "the cluster did not settle after rebalancing"
        );
        port
    }

    /// Assigns the slots over the masters and waits for every node to say `cluster_state:ok`.
    fn create(&self) -> bool {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args) && self.wait_ok(Duration::from_secs(20))
    }

    fn wait_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.nodes.iter().all(|n| self.state_ok(n.port)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl RedisCluster {
    /// `redis-cli`, with the TLS flags when the nodes need them.
    fn redis_cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        if let Some(tls) = &self.tls {
            cmd.args(tls.redis_cli_args());
        }
        cmd
    }

    /// `redis-cli` with `args`; whether it succeeded.
    fn cli(&self, args: &[&str]) -> bool {
        self.redis_cli()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `redis-cli` with `args`: its output, or why it failed (output included).
    fn cli_output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .redis_cli()
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            Err(tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        }
    }

    fn state_ok(&self, port: u16) -> bool {
        self.redis_cli()
            .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            .unwrap_or(false)
    }
}

fn spawn_node(bin: &Path, port: u16, bus_port: u16, dir: &Path, tls: Option<&TlsFiles>) -> Child {
    let (bus_port, config) = (bus_port.to_string(), format!("nodes-{port}.conf"));
    let listen = match tls {
        Some(tls) => tls.redis_server_args(port),
        None => vec!["--port".into(), port.to_string()],
    };
    spawn_server(
        bin,
        &listen,
        dir,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus_port,
            "--cluster-config-file",
            &config,
            "--cluster-node-timeout",
            "2000",
        ],
    )
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop_all();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
