//! A private Redis Cluster of three masters (optionally with a replica each) on free loopback
//! ports (sharded pub/sub needs Redis ≥ 7.0), or the seed nodes
//! `LOCKSTEP_TEST_REDIS_CLUSTER_NODES` names (comma-separated `redis://host:port`).

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
    /// Replicas per master.
    replicas: usize,
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
                replicas: 0,
            };
        }
        RedisCluster::start_private(None, 0)
    }

    /// Starts a private cluster of three masters, each with a replica that takes over when
    /// its master fails (always private: a configured cluster's layout is unknown).
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start_private(None, 1)
    }

    /// Starts a private cluster whose nodes speak TLS only (`rediss://`), with a certificate
    /// `ca` signed; the nodes' bus is TLS too.
    pub fn start_tls(ca: &TestCa) -> RedisCluster {
        RedisCluster::start_private(Some(ca.files()), 0)
    }

    fn start_private(tls: Option<TlsFiles>, replicas: usize) -> RedisCluster {
        let bin = find_binary("redis-server", &[]).unwrap_or_else(|| {
            panic!("redis-server not found: install it (apt-get install redis-server; ops/test.sh does) or set LOCKSTEP_TEST_REDIS_CLUSTER_NODES")
        });
        for _ in 0..3 {
            let dir = temp_dir("redis-cluster");
            let ports = free_ports(MASTERS * (1 + replicas) * 2);
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
                replicas,
            };
            if cluster.nodes.len() == MASTERS * (1 + replicas)
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

    /// Kills (SIGKILL) the master holding `key` in a cluster started with replicas and waits
    /// until its replica has been promoted and every live node says `cluster_state:ok`, as a
    /// managed cluster fails over. Returns the killed node's port.
    pub fn kill_master_holding(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        self.kill_master(port);
        port
    }

    /// The ports of the live masters.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && self.role(n.port) == "master")
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving the slot of `name` (a key or a channel: sharded
    /// channels hash like keys), as `CLUSTER NODES` on a live node says.
    pub fn master_of(&self, name: &str) -> u16 {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot: u16 = self
            .query(live.port, &["CLUSTER", "KEYSLOT", name])
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {name} gave no number"));
        let nodes = self
            .cli_output(&["-p", &live.port.to_string(), "CLUSTER", "NODES"])
            .unwrap_or_else(|e| panic!("CLUSTER NODES failed: {e}"));
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = *fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?;
                let serves = fields.iter().skip(8).any(|range| {
                    let mut ends = range.split('-').map(str::parse::<u16>);
                    match (ends.next(), ends.next()) {
                        (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                        (Some(Ok(a)), None) => a == slot,
                        _ => false,
                    }
                });
                serves.then(|| port.parse().ok()).flatten()
            })
            .next()
            .unwrap_or_else(|| panic!("no live master serves slot {slot} of {name}"))
    }

    /// The sharded channels someone subscribes to on any live master, matching `pattern`
    /// (`PUBSUB SHARDCHANNELS`).
    pub fn shard_channels(&self, pattern: &str) -> Vec<String> {
        self.masters()
            .into_iter()
            .flat_map(|port| {
                self.cli_output(&["-p", &port.to_string(), "PUBSUB", "SHARDCHANNELS", pattern])
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Lets the cluster keep serving the slots of live masters while one is down
    /// (`cluster-require-full-coverage no`, as many managed clusters run): without it every
    /// node refuses every command from the moment a master is marked failed until its
    /// replica is promoted.
    pub fn serve_partial_coverage(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let set = ["CONFIG", "SET", "cluster-require-full-coverage", "no"];
            assert_eq!(self.query(n.port, &set), "OK", "CONFIG SET on {}", n.port);
        }
    }

    /// Kills (SIGKILL) the master on `port` in a cluster started with replicas and waits until
    /// its replica has been promoted and every live node says `cluster_state:ok`.
    pub fn kill_master(&mut self, port: u16) {
        assert!(
            self.replicas > 0,
            "start the cluster with replicas to fail over"
        );
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port && n.child.is_some())
            .unwrap_or_else(|| panic!("no live node on port {port}"));
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The others notice only after the node timeout: until a replica is promoted there
        // are fewer live masters than slots need.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.masters().len() == MASTERS && self.wait_ok(Duration::from_secs(1)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over from the killed master"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
        args.extend([
            "--cluster-replicas".into(),
            self.replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args) && self.wait_ok(Duration::from_secs(20)) && self.wait_replicas_synced()
    }

    /// A replica that never finished its first sync cannot be promoted: wait until every
    /// replica's link to its master is up.
    fn wait_replicas_synced(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let synced = self.nodes.iter().all(|n| {
                let info = self
                    .redis_cli()
                    .args(["-p", &n.port.to_string(), "INFO", "replication"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if synced {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn wait_ok(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // A killed node (no process) cannot answer; the others must agree.
            let mut live = self.nodes.iter().filter(|n| n.child.is_some());
            if live.all(|n| self.state_ok(n.port)) {
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

    /// `master` or `slave`, as `ROLE` says.
    fn role(&self, port: u16) -> String {
        self.query(port, &["ROLE"])
    }

    /// The first line `redis-cli` prints for a command to one node.
    fn query(&self, port: u16, args: &[&str]) -> String {
        self.redis_cli()
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
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
        Some(tls) => tls.redis_server_args(port, false),
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
            // A replica's first sync starts at once instead of waiting for company.
            "--repl-diskless-sync-delay",
            "0",
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
