//! Before the run: a guest token per client and the rooms, over the REST API.

use std::net::SocketAddr;

use anyhow::Context;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scenario::Scenario;

/// HTTP requests in flight during setup.
const SETUP_CONCURRENCY: usize = 32;

/// What setup produced.
pub struct Plan {
    /// Gateway addresses, in `--url` order.
    pub addrs: Vec<SocketAddr>,
    /// Room codes.
    pub rooms: Vec<String>,
    /// One token per client; client `i` is in room `i / clients` and uses addrs[i % n].
    pub tokens: Vec<String>,
}

pub async fn prepare(scn: &Scenario) -> anyhow::Result<Plan> {
    let addrs = scn
        .urls
        .iter()
        .map(|u| parse_addr(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total = scn.rooms * scn.clients;
    let tokens: Vec<String> = stream::iter(0..total)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            async move { guest(addr, &format!("lt{i}")).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let rooms: Vec<String> = stream::iter(0..scn.rooms)
        .map(|r| {
            let addr = addrs[r % addrs.len()];
            let token = tokens[r * scn.clients].clone();
            async move { create_room(addr, &token).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Plan {
        addrs,
        rooms,
        tokens,
    })
}

/// `http://host:port` → the socket address (loopback targets only need no DNS).
pub fn parse_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .with_context(|| format!("`{url}` is not http://ip:port"))
}

async fn guest(addr: SocketAddr, name: &str) -> anyhow::Result<String> {
    let body = post(addr, "/v1/auth/guest", None, &json!({"name": name})).await?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("guest sign-in failed: {body}"))
}

async fn create_room(addr: SocketAddr, token: &str) -> anyhow::Result<String> {
    let body = post(addr, "/v1/rooms", Some(token), &json!({})).await?;
    body["code"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("room creation failed: {body}"))
}

/// One HTTP/1.1 POST on its own connection; the JSON body of the answer.
async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::with_capacity(1024);
    stream.take(1 << 20).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(json).with_context(|| format!("bad answer from {addr}{path}: {text}"))
}
