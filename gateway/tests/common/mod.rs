//! Test harness: starts the real embedded node on 127.0.0.1:0 with a private database, and
//! drives it with a real WebSocket client (tokio-tungstenite) and a raw HTTP/1.1 client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::Serialized;
use futures_util::{SinkExt, StreamExt};
use lockstep_gateway::embedded::{self, Running};
use lockstep_shared::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long any single expected frame may take to arrive.
pub const WAIT: Duration = Duration::from_secs(10);

/// A private data directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "lockstep-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    /// `LOCKSTEP_TEST_KEEP_LOGS=1` keeps the directory (the nodes' logs) for a post-mortem.
    fn drop(&mut self) {
        if std::env::var_os("LOCKSTEP_TEST_KEEP_LOGS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (N.fetch_add(1, Ordering::Relaxed) << 32)
}

/// A running node plus its data directory.
pub struct Node {
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub dir: PathBuf,
}

/// The config tests start from: port 0, private db, fixed secret, limits out of the way,
/// and no video metadata lookups (they would go to youtube.com; tests/metadata.rs turns
/// them on against a local fake).
pub fn test_config(dir: &std::path::Path) -> figment::Figment {
    Config::figment()
        .merge(Serialized::default("gateway.listen", "127.0.0.1:0"))
        .merge(Serialized::default("store.path", dir.join("lockstep.db")))
        .merge(Serialized::default("auth.jwt_secret", SECRET))
        .merge(Serialized::default(
            "gateway.connect_burst_per_ip",
            10_000.0,
        ))
        .merge(Serialized::default("gateway.connect_rate_per_ip", 10_000.0))
        .merge(Serialized::default("ingest.metadata.enabled", false))
}

pub async fn start(
    dir: &std::path::Path,
    tweak: impl FnOnce(figment::Figment) -> figment::Figment,
) -> Node {
    if std::env::var("RUST_LOG").is_ok() {
        lockstep_gateway::telemetry::init_tracing();
    }
    let cfg = Config::from_figment(tweak(test_config(dir))).expect("valid test config");
    let running = embedded::start(cfg).await.expect("node starts");
    Node {
        addr: running.addr,
        running: Some(running),
        dir: dir.to_path_buf(),
    }
}

impl Node {
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signs in as a guest: (token, user_id).
    pub async fn guest(&self, name: &str) -> (String, String) {
        guest_at(self.addr, name).await
    }

    pub async fn create_room(&self, token: &str) -> String {
        create_room_at(self.addr, token).await
    }

    pub async fn connect(&self, token: &str) -> Client {
        Client::connect(self.addr, token).await
    }

    /// A guest who created a room and joined it: (client, token, room code).
    pub async fn owner(&self, name: &str) -> (Client, String, String) {
        let (token, _) = self.guest(name).await;
        let room = self.create_room(&token).await;
        let mut c = self.connect(&token).await;
        c.join(&room, None).await;
        (c, token, room)
    }

    /// A signed-in guest connected and joined to `room`.
    pub async fn member(&self, name: &str, room: &str) -> (Client, String, Value) {
        let (token, user) = self.guest(name).await;
        let mut c = self.connect(&token).await;
        let ack = c.join(room, None).await;
        (c, user, ack)
    }
}

/// Signs in as a guest on the node at `addr`: (token, user_id).
pub async fn guest_at(addr: SocketAddr, name: &str) -> (String, String) {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/auth/guest",
        None,
        Some(&json!({"name": name})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["token"].as_str().unwrap().to_owned(),
        body["user"]["user_id"].as_str().unwrap().to_owned(),
    )
}

/// Creates a room on the node at `addr`; returns its code.
pub async fn create_room_at(addr: SocketAddr, token: &str) -> String {
    let (status, body) = http(addr, "POST", "/v1/rooms", Some(token), None).await;
    assert_eq!(status, 201, "{body}");
    body["code"].as_str().unwrap().to_owned()
}

/// `GET /v1/rooms/{room}`: (status, body).
pub async fn room_body(addr: SocketAddr, token: &str, room: &str) -> (u16, Value) {
    http(addr, "GET", &format!("/v1/rooms/{room}"), Some(token), None).await
}

/// A room's chat texts through the REST API, newest first (up to 200).
pub async fn chat_texts(addr: SocketAddr, token: &str, room: &str) -> Vec<String> {
    chat_history(addr, token, room)
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// A room's chat messages through the REST API, newest first (up to 200).
pub async fn chat_history(addr: SocketAddr, token: &str, room: &str) -> Vec<Value> {
    let (status, page) = http(
        addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=200"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["messages"].as_array().cloned().unwrap_or_default()
}

/// The actions in a room's audit log, newest first (asserts the read is allowed).
pub async fn audit_actions(addr: SocketAddr, token: &str, room: &str) -> Vec<String> {
    let path = format!("/v1/rooms/{room}/audit");
    let (status, audit) = http(addr, "GET", &path, Some(token), None).await;
    assert_eq!(status, 200, "{audit}");
    audit["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["action"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    lockstep_testkit::free_port()
}

/// The child's exit status if it exits within `limit`, else `None` (it is left running).
pub async fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok()? {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node at `addr` answers `/readyz` with 200.
pub async fn wait_ready(addr: SocketAddr, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while std::time::Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            let (status, body) = http(addr, "GET", "/readyz", None, None).await;
            if status == 200 {
                return;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} at {addr} never became ready; it said {last}");
}

/// A minimal HTTP/1.1 client: one request per connection. Returns (status, JSON body or
/// `{"raw": text}`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or_else(|_| json!({"raw": body}));
    (status, value)
}

/// Status of a WebSocket upgrade attempt that is expected to fail.
pub async fn upgrade_status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: Ws,
    next: u64,
    /// Frames read while waiting for a reply, returned by later `recv` calls in order.
    backlog: std::collections::VecDeque<Value>,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(u16),
    Dropped,
}

impl Client {
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        Client {
            ws,
            next: 0,
            backlog: Default::default(),
        }
    }

    pub fn from_stream(ws: Ws) -> Client {
        Client {
            ws,
            next: 0,
            backlog: Default::default(),
        }
    }

    /// Numbers this client's command ids from `n` on: a user reconnecting must not reuse
    /// ids an earlier connection sent, or the room answers them from its idempotency cache.
    pub fn ids_from(mut self, n: u64) -> Client {
        self.next = n;
        self
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Sends a command with a fresh id; returns the id.
    pub async fn send(&mut self, mut cmd: Value) -> String {
        self.next += 1;
        let id = format!("c{}", self.next);
        cmd["id"] = json!(id);
        self.send_raw(&cmd.to_string()).await;
        id
    }

    /// The next frame: first any kept while waiting for a reply, then from the socket.
    pub async fn recv(&mut self) -> Value {
        match self.backlog.pop_front() {
            Some(v) => v,
            None => self.read_socket().await,
        }
    }

    /// The next text frame as JSON (pings are answered by tungstenite as we read).
    async fn read_socket(&mut self) -> Value {
        // One deadline for the whole wait: pings must not keep extending it.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("frame within the wait")
                .expect("socket open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("socket closed unexpectedly: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The reply (ack or error) with `id`; other frames stay queued for `recv`.
    pub async fn reply(&mut self, id: &str) -> Value {
        let is_reply = |v: &Value| (v["type"] == "ack" || v["type"] == "error") && v["id"] == id;
        if let Some(pos) = self.backlog.iter().position(is_reply) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let v = self.read_socket().await;
            if is_reply(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// Forgets frames kept while waiting for replies.
    pub fn drain_backlog(&mut self) {
        self.backlog.clear();
    }

    /// Sends and waits for the reply.
    pub async fn call(&mut self, cmd: Value) -> Value {
        let id = self.send(cmd).await;
        self.reply(&id).await
    }

    /// Sends and expects an ack; returns its result.
    pub async fn ok(&mut self, cmd: Value) -> Value {
        let r = self.call(cmd.clone()).await;
        assert_eq!(r["type"], "ack", "{cmd} -> {r}");
        r["result"].clone()
    }

    pub async fn join(&mut self, room: &str, since_seq: Option<u64>) -> Value {
        let mut cmd = json!({"type": "room.join", "room": room});
        if let Some(s) = since_seq {
            cmd["since_seq"] = json!(s);
        }
        self.ok(cmd).await
    }

    /// Next event of a type.
    pub async fn event(&mut self, kind: &str) -> Value {
        self.recv_until(|v| v["type"] == kind).await
    }

    /// Reads until the socket ends; returns the close code.
    pub async fn closed(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close within the wait")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ended::Close(u16::from(frame.code))
                }
                Some(Ok(Message::Close(None))) => return Ended::Close(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives so the server has seen it.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// A node with the test configuration and its scratch directory (keep both alive).
pub async fn node(tag: &str) -> (TempDir, Node) {
    let dir = TempDir::new(tag);
    let node = start(&dir.0, |f| f).await;
    (dir, node)
}
