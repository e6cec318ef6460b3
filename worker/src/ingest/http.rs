//! The upstream HTTP client: one request per connection (hyper's HTTP/1 client over
//! [`net::connect`]), through the proxy pool, with the session's browser headers, a
//! deadline and a body bound. Gzip bodies are inflated (browsers ask for them).

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use lockstep_shared::metrics as names;
use tokio_rustls::TlsConnector;
use url::Url;

use super::net::{self, NetError};
use super::profiles::BrowserProfile;
use super::proxy::{ProxyPool, Route};
use crate::clock::now_ms;

/// A response that came back 2xx.
#[derive(Debug, Clone)]
pub struct Response {
    pub body: Bytes,
}

/// Shared by every source on the node.
pub struct HttpClient {
    pub(crate) pool: Arc<ProxyPool>,
    pub(crate) tls: TlsConnector,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
}

impl HttpClient {
    /// GET (no body) or POST (JSON body) `url` with `profile`'s headers plus `extra`.
    pub async fn request(
        &self,
        platform: &'static str,
        url: &Url,
        json_body: Option<String>,
        profile: &BrowserProfile,
        extra: &[(&'static str, String)],
    ) -> Result<Response, NetError> {
        let started = Instant::now();
        // A proxy that cannot even open the tunnel costs one more try through another one.
        let attempts = if self.pool.len() > 1 { 2 } else { 1 };
        let mut result = Err(NetError::NoProxy);
        for _ in 0..attempts {
            let route = self.pool.pick(now_ms()).map_err(|_| NetError::NoProxy)?;
            result = tokio::time::timeout(
                self.timeout,
                self.send(url, &route, json_body.clone(), profile, extra),
            )
            .await
            .unwrap_or(Err(NetError::Timeout));
            let proxy_ok = match &result {
                Ok(_) => true,
                Err(e) => !e.blames_proxy(),
            };
            self.pool.report(&route, proxy_ok, now_ms());
            if !matches!(&result, Err(NetError::Proxy(_) | NetError::Connect(_))) {
                break;
            }
        }
        metrics::histogram!(names::INGEST_UPSTREAM_LATENCY, "platform" => platform)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!(names::INGEST_UPSTREAM_ERRORS, "platform" => platform,
                "reason" => e.reason())
            .increment(1);
        }
        result
    }

    async fn send(
        &self,
        url: &Url,
        route: &Route,
        json_body: Option<String>,
        profile: &BrowserProfile,
        extra: &[(&'static str, String)],
    ) -> Result<Response, NetError> {
        let io = net::connect(url, route, &self.tls, self.timeout).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| NetError::Http(e.to_string()))?;
        // The request owns the sender: when it finishes, the connection winds down and
        // `join` returns; the caller's deadline bounds both.
        let request = async move {
            let authority = match url.port() {
                Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_owned(),
            };
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            let is_post = json_body.is_some();
            let accept = if is_post {
                "*/*"
            } else {
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            };
            let mut req = Request::builder()
                .method(if is_post { Method::POST } else { Method::GET })
                .uri(path)
                .header("host", authority);
            for (k, v) in profile.headers(accept) {
                req = req.header(k, v);
            }
            if is_post {
                req = req.header("content-type", "application/json");
            }
            let mut req = req
                .body(Full::new(Bytes::from(json_body.unwrap_or_default())))
                .map_err(|e| NetError::Http(e.to_string()))?;
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    req.headers_mut().insert(k, v);
                }
            }
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| NetError::Http(e.to_string()))?;
            let status = resp.status().as_u16();
            let gzip = resp
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            if !(200..300).contains(&status) {
                return Err(NetError::Status(status));
            }
            let body = Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|_| NetError::TooLarge(self.max_body))?
                .to_bytes();
            let body = if gzip {
                inflate(&body, self.max_body)?
            } else {
                body
            };
            drop(sender);
            Ok(Response { body })
        };
        let (result, _) = tokio::join!(request, conn);
        result
    }
}

fn inflate(body: &[u8], max: usize) -> Result<Bytes, NetError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| NetError::Http(format!("gzip: {e}")))?;
    if out.len() > max {
        return Err(NetError::TooLarge(max));
    }
    Ok(Bytes::from(out))
}
