//! Before the run: a guest token per client and the rooms, over the REST API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scenario::Scenario;
use crate::tls::Tls;

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
    /// Set for `https://` gateways.
    pub tls: Option<Arc<Tls>>,
}

pub async fn prepare(scn: &Scenario) -> anyhow::Result<Plan> {
    let addrs = scn
        .urls
        .iter()
        .map(|u| parse_addr(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = Tls::for_urls(&scn.urls, &addrs, scn.ca_file.as_deref())?;
    let total = scn.rooms * scn.clients;
    let tokens: Vec<String> = stream::iter(0..total)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let tls = tls.clone();
            async move { guest(addr, tls.as_deref(), &format!("lt{i}")).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let rooms: Vec<String> = stream::iter(0..scn.rooms)
        .map(|r| {
            let addr = addrs[r % addrs.len()];
            let token = tokens[r * scn.clients].clone();
            let tls = tls.clone();
            async move { create_room(addr, tls.as_deref(), &token).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Plan {
        addrs,
        rooms,
        tokens,
        tls,
    })
}

/// `http://host:port` (or `https://`) → the socket address (loopback targets only need no
/// DNS).
pub fn parse_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .with_context(|| format!("`{url}` is not http://ip:port"))
}

async fn guest(addr: SocketAddr, tls: Option<&Tls>, name: &str) -> anyhow::Result<String> {
    let body = post(addr, tls, "/v1/auth/guest", None, &json!({"name": name})).await?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("guest sign-in failed: {body}{}", limits_hint(&body)))
}

/// What to do about a server that refuses the load by its own limits: a load test needs
/// them raised (README, "Measuring").
fn limits_hint(body: &Value) -> &'static str {
    if body["error"]["code"] == "rate_limited" {
        "\n  the server's per-address limits refuse the load: start it with \
         LOCKSTEP_GATEWAY__CONNECT_RATE_PER_IP / __CONNECT_BURST_PER_IP (and COMMAND_*, \
         ROOM__CHAT_*) raised (README, \"Measuring\")"
    } else {
        ""
    }
}

async fn create_room(addr: SocketAddr, tls: Option<&Tls>, token: &str) -> anyhow::Result<String> {
    let body = post(addr, tls, "/v1/rooms", Some(token), &json!({})).await?;
    body["code"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("room creation failed: {body}{}", limits_hint(&body)))
}

/// One HTTP/1.1 POST on its own connection (TLS for `https://` gateways); the JSON body of
/// the answer.
async fn post(
    addr: SocketAddr,
    tls: Option<&Tls>,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let tcp = TcpStream::connect(addr)
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
    let raw = match tls {
        Some(tls) => {
            let stream = tls
                .connect(addr, tcp)
                .await
                .with_context(|| format!("TLS to {addr}"))?;
            exchange(stream, &req).await?
        }
        None => exchange(tcp, &req).await?,
    };
    let text = String::from_utf8_lossy(&raw);
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(json).with_context(|| format!("bad answer from {addr}{path}: {text}"))
}

/// Sends `req` and reads the answer until the server closes (at most 1 MiB). A TLS server that
/// closes without `close_notify` still gave its whole answer (`Connection: close`).
async fn exchange<S>(mut stream: S, req: &str) -> anyhow::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut raw = Vec::with_capacity(1024);
    match stream.take(1 << 20).read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_the_servers_limits_says_which_to_raise() {
        let limited = json!({"error": {"code": "rate_limited", "message": "too many"}});
        assert!(limits_hint(&limited).contains("LOCKSTEP_GATEWAY__CONNECT_RATE_PER_IP"));
        let other = json!({"error": {"code": "unauthorized", "message": "no"}});
        assert_eq!(limits_hint(&other), "");
    }
}
