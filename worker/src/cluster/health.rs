//! A worker's own HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves until cancelled. `ready` returns `None` when ready, else the reason.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    cancel: CancellationToken,
) {
    let metrics = crate::telemetry::metrics_handle();
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = ready.clone();
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/healthz" => (StatusCode::OK, "ok".to_owned()),
                        "/readyz" => match ready() {
                            None => (StatusCode::OK, "ready".to_owned()),
                            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                        },
                        "/metrics" => {
                            metrics.run_upkeep();
                            (StatusCode::OK, metrics.render())
                        }
                        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
