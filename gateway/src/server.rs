//! The accept loop: per-IP connection limiting, optional TLS (rustls), HTTP/1.1 with upgrades.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lockstep_worker::clock::now_ms;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("open {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("read certificates from {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("open {}", key.display()))?,
    ))
    .with_context(|| format!("read key from {}", key.display()))?
    .with_context(|| format!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until `stop` fires.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sndbuf = state.cfg.gateway.socket_send_buffer;
        if sndbuf > 0 {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf) {
                tracing::debug!(cause = %e, "could not set the socket send buffer");
            }
        }
        let allowed = state.ip_limiter.allow(peer.ip(), now_ms());
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_http(s, peer, state, allowed).await,
                    Err(e) => tracing::debug!(cause = %e, %peer, "TLS handshake failed"),
                },
                None => serve_http(stream, peer, state, allowed).await,
            }
        });
    }
}

async fn serve_http<S>(stream: S, peer: SocketAddr, state: Arc<AppState>, allowed: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| crate::http::handle(req, state.clone(), allowed));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(cause = %e, %peer, "http connection ended with an error");
    }
}
