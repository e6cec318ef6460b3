//! Outbound connections to upstreams: TCP, optionally tunnelled through an HTTP CONNECT
//! proxy, then TLS (rustls, webpki roots) for `https`/`wss`. Every step has the one
//! request deadline; nothing here retries (the callers' breakers decide).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use super::proxy::Route;

/// A byte stream to an upstream, whatever carried it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Why an upstream call failed; each maps to a metric reason and a breaker outcome.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("proxy refused the tunnel: {0}")]
    Proxy(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("bad upstream URL: {0}")]
    BadUrl(String),
    #[error("every configured proxy is unavailable")]
    NoProxy,
}

impl NetError {
    /// Bounded `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            NetError::Timeout => "timeout",
            NetError::Connect(_) | NetError::Tls(_) | NetError::BadUrl(_) => "connect",
            NetError::Proxy(_) | NetError::NoProxy => "proxy",
            NetError::Status(429) => "status_429",
            NetError::Status(s) if *s >= 500 => "status_5xx",
            NetError::Status(_) => "status_other",
            NetError::TooLarge(_) | NetError::Http(_) => "closed",
        }
    }

    /// Whether the proxy (not the upstream) is to blame: it counts against the proxy.
    pub fn blames_proxy(&self) -> bool {
        matches!(
            self,
            NetError::Proxy(_) | NetError::Connect(_) | NetError::Status(429)
        )
    }
}

/// The TLS client config every upstream connection shares.
pub fn tls_connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => TlsConnector::from(Arc::new(c)),
        // The ring provider always supports the default versions; fall back to an empty
        // config that fails every handshake loudly rather than panicking.
        Err(_) => TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )),
    }
}

/// Opens a stream to `url`'s host over `route`, with TLS when the scheme asks for it.
pub async fn connect(
    url: &Url,
    route: &Route,
    tls: &TlsConnector,
    timeout: Duration,
) -> Result<BoxIo, NetError> {
    tokio::time::timeout(timeout, connect_inner(url, route, tls))
        .await
        .map_err(|_| NetError::Timeout)?
}

async fn connect_inner(url: &Url, route: &Route, tls: &TlsConnector) -> Result<BoxIo, NetError> {
    let host = url
        .host_str()
        .ok_or_else(|| NetError::BadUrl(url.to_string()))?
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| NetError::BadUrl(url.to_string()))?;
    let tcp = match route {
        Route::Direct => TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| NetError::Connect(e.to_string()))?,
        Route::Proxy {
            host: ph, port: pp, ..
        } => {
            let mut s = TcpStream::connect((ph.as_str(), *pp))
                .await
                .map_err(|e| NetError::Connect(format!("proxy {ph}:{pp}: {e}")))?;
            tunnel(&mut s, &host, port).await?;
            s
        }
    };
    let _ = tcp.set_nodelay(true);
    if matches!(url.scheme(), "https" | "wss") {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| NetError::Tls(e.to_string()))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| NetError::Tls(e.to_string()))?;
        Ok(Box::new(stream))
    } else {
        Ok(Box::new(tcp))
    }
}

/// Largest proxy response head we read.
const PROXY_HEAD_MAX: usize = 8 * 1024;

/// `CONNECT host:port` and wait for a 2xx.
async fn tunnel(s: &mut TcpStream, host: &str, port: u16) -> Result<(), NetError> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| NetError::Proxy(e.to_string()))?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head (the tunnelled stream) is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= PROXY_HEAD_MAX {
            return Err(NetError::Proxy("response head too long".into()));
        }
        let n = s
            .read(&mut byte)
            .await
            .map_err(|e| NetError::Proxy(e.to_string()))?;
        if n == 0 {
            return Err(NetError::Proxy("closed during CONNECT".into()));
        }
        head.push(byte[0]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(NetError::Proxy(line.trim().to_owned()))
    }
}
