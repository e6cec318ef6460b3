//! The HTTP surface: the REST API of DESIGN.md §3, health, metrics and the WebSocket upgrade.
//! Every error is `{"error":{"code","message"}}` with the matching status.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use lockstep_shared::bus::Query;
use lockstep_shared::ids::{id_from_random, is_valid_room_code};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{nul, ErrorCode};
use lockstep_worker::clock::now_ms;
use serde_json::{json, Value};

use crate::auth::{clean_name, token_from, Claims};
use crate::conn;
use crate::state::AppState;

/// Largest request body accepted by the REST API.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Chat history page size: default and maximum.
const CHAT_LIMIT_DEFAULT: usize = 50;
const CHAT_LIMIT_MAX: usize = 200;
/// Audit entries returned.
const AUDIT_LIMIT: usize = 200;

pub type Body = Full<Bytes>;

/// Routes one request. `allowed` is false when the client's IP exceeded its connection rate.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    allowed: bool,
) -> Result<Response<Body>, std::convert::Infallible> {
    let route = route_label(req.method(), req.uri().path());
    let resp = if !allowed {
        metrics::counter!(names::GATEWAY_REJECTED, "reason" => "ip_rate").increment(1);
        error(Refusal::new(
            ErrorCode::RateLimited,
            "too many connections from this address",
        ))
    } else {
        match dispatch(req, &state).await {
            Ok(r) => r,
            Err(refusal) => error(refusal),
        }
    };
    metrics::counter!(names::GATEWAY_HTTP_REQUESTS, "route" => route, "status" => resp.status().as_u16().to_string()).increment(1);
    Ok(resp)
}

/// A bounded label for the metrics: the route pattern, never the raw path.
fn route_label(method: &Method, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (_, ["healthz"]) => "/healthz",
        (_, ["readyz"]) => "/readyz",
        (_, ["metrics"]) => "/metrics",
        (_, ["v1", "ws"]) => "/v1/ws",
        (_, ["v1", "auth", "guest"]) => "/v1/auth/guest",
        (_, ["v1", "rooms"]) => "/v1/rooms",
        (_, ["v1", "rooms", _]) => "/v1/rooms/{code}",
        (_, ["v1", "rooms", _, "chat"]) => "/v1/rooms/{code}/chat",
        (_, ["v1", "rooms", _, "audit"]) => "/v1/rooms/{code}/audit",
        (_, ["v1", "rooms", _, "bans"]) => "/v1/rooms/{code}/bans",
        _ => "other",
    }
}

async fn dispatch(
    req: Request<Incoming>,
    state: &Arc<AppState>,
) -> Result<Response<Body>, Refusal> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok")),
        (Method::GET, ["readyz"]) => Ok(if state.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if let Some(why) = (state.not_ready)() {
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header(CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from(why)))
                .unwrap_or_default()
        } else {
            text(StatusCode::OK, "ready")
        }),
        (Method::GET, ["metrics"]) => {
            state.metrics.run_upkeep();
            let body = state.metrics.render();
            Ok(Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default())
        }
        (Method::GET, ["v1", "ws"]) => upgrade(req, state),
        (Method::POST, ["v1", "auth", "guest"]) => guest(req, state).await,
        (Method::POST, ["v1", "rooms"]) => {
            let claims = authenticate(&req, state)?;
            create_room(state, claims).await
        }
        (Method::GET, ["v1", "rooms", code]) => {
            authenticate(&req, state)?;
            let code = room_code(code)?;
            let snap = state.link.query(&code, Query::Snapshot).await?;
            Ok(json_response(StatusCode::OK, &snap))
        }
        (Method::GET, ["v1", "rooms", code, "chat"]) => {
            authenticate(&req, state)?;
            let code = room_code(code)?;
            let (before, limit) = chat_params(req.uri().query())?;
            let page = state
                .link
                .query(&code, Query::Chat { before, limit })
                .await?;
            Ok(json_response(StatusCode::OK, &page))
        }
        (Method::GET, ["v1", "rooms", code, "audit"]) => {
            let claims = authenticate(&req, state)?;
            let code = room_code(code)?;
            let q = Query::Audit {
                user_id: claims.sub,
                limit: AUDIT_LIMIT,
            };
            let entries = state.link.query(&code, q).await?;
            Ok(json_response(StatusCode::OK, &entries))
        }
        (Method::GET, ["v1", "rooms", code, "bans"]) => {
            let claims = authenticate(&req, state)?;
            let code = room_code(code)?;
            let bans = state
                .link
                .query(
                    &code,
                    Query::Bans {
                        user_id: claims.sub,
                    },
                )
                .await?;
            Ok(json_response(StatusCode::OK, &bans))
        }
        (_, ["healthz" | "readyz" | "metrics"])
        | (_, ["v1", "ws"])
        | (_, ["v1", "auth", "guest"])
        | (_, ["v1", "rooms", ..]) => Err(Refusal::new(
            ErrorCode::BadRequest,
            "method not allowed on this path",
        )),
        _ => Err(Refusal::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

fn authenticate(req: &Request<Incoming>, state: &AppState) -> Result<Claims, Refusal> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = token_from(header, req.uri().query()).ok_or_else(|| {
        Refusal::new(
            ErrorCode::Unauthorized,
            "missing token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`",
        )
    })?;
    state
        .auth
        .verify(&token)
        .map_err(|e| Refusal::new(ErrorCode::Unauthorized, e.to_string()))
}

fn upgrade(mut req: Request<Incoming>, state: &Arc<AppState>) -> Result<Response<Body>, Refusal> {
    let allowed = &state.cfg.gateway.allowed_origins;
    if !allowed.is_empty() {
        if let Some(origin) = req.headers().get(ORIGIN) {
            let ok = origin
                .to_str()
                .map(|o| allowed.iter().any(|a| a == o))
                .unwrap_or(false);
            if !ok {
                metrics::counter!(names::GATEWAY_REJECTED, "reason" => "origin").increment(1);
                return Err(Refusal::new(ErrorCode::Forbidden, "origin not allowed"));
            }
        }
    }
    let claims = authenticate(&req, state).inspect_err(|_| {
        metrics::counter!(names::GATEWAY_REJECTED, "reason" => "auth").increment(1);
    })?;
    if state.is_draining() {
        return Err(Refusal::new(ErrorCode::Unavailable, "server is draining"));
    }
    if state.fanout.connection_count() >= state.cfg.gateway.max_connections {
        metrics::counter!(names::GATEWAY_REJECTED, "reason" => "capacity").increment(1);
        return Err(Refusal::new(
            ErrorCode::Unavailable,
            "server is at its connection limit",
        ));
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade",
        ));
    }
    let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    let state = state.clone();
    // The upgrade waits in a short-lived task; the connection then gets a task of its own,
    // so the long-lived one carries nothing of the upgrade.
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => {
                tokio::spawn(conn::serve(ws, claims, state));
            }
            Err(e) => tracing::debug!(cause = %e, "upgrade failed"),
        }
    });
    Ok(resp.map(|_| Full::new(Bytes::new())))
}

async fn guest(req: Request<Incoming>, state: &AppState) -> Result<Response<Body>, Refusal> {
    if !state.cfg.auth.guest_enabled {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "guest sign-in is disabled",
        ));
    }
    let body = read_json(req).await?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .and_then(clean_name)
        .ok_or_else(|| {
            Refusal::new(
                ErrorCode::BadRequest,
                "`name` must be 1-32 printable characters",
            )
        })?;
    let user_id = format!("g_{}", id_from_random(&rand::random::<[u8; 12]>()));
    let claims = Claims {
        sub: user_id.clone(),
        name: name.clone(),
        exp: now_ms() / 1000 + state.cfg.auth.guest_ttl_s,
    };
    let token = state
        .auth
        .issue(&claims)
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"token": token, "user": {"user_id": user_id, "name": name}}),
    ))
}

async fn create_room(state: &AppState, claims: Claims) -> Result<Response<Body>, Refusal> {
    // Codes are random; a collision (vanishingly rare) is retried with a fresh code.
    for _ in 0..3 {
        let code = id_from_random(&rand::random::<[u8; 8]>());
        let q = Query::Create {
            user_id: claims.sub.clone(),
            name: claims.name.clone(),
        };
        match state.link.query(&code, q).await {
            Ok(v) => return Ok(json_response(StatusCode::CREATED, &v)),
            Err(r) if r.code == ErrorCode::Conflict => continue,
            Err(r) => return Err(r),
        }
    }
    Err(Refusal::new(
        ErrorCode::Unavailable,
        "could not allocate a room code; retry",
    ))
}

fn room_code(code: &str) -> Result<String, Refusal> {
    if is_valid_room_code(code) {
        Ok(code.to_owned())
    } else {
        Err(Refusal::new(ErrorCode::BadRequest, "invalid room code"))
    }
}

fn chat_params(query: Option<&str>) -> Result<(Option<u64>, usize), Refusal> {
    let mut before = None;
    let mut limit = CHAT_LIMIT_DEFAULT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "before" => {
                before = Some(v.parse::<u64>().map_err(|_| {
                    Refusal::new(ErrorCode::BadRequest, "`before` must be a message id")
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=CHAT_LIMIT_MAX).contains(n))
                    .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "`limit` must be 1-200"))?
            }
            _ => {}
        }
    }
    Ok((before, limit))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Refusal> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| Refusal::new(ErrorCode::TooLarge, "request body is too large"))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("body is not JSON: {e}")))?;
    if nul::has_nul(&v) {
        return Err(Refusal::new(ErrorCode::BadRequest, nul::NUL_REFUSED));
    }
    Ok(v)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn error(r: Refusal) -> Response<Body> {
    let status =
        StatusCode::from_u16(r.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &json!({"error": {"code": r.code, "message": r.message}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_params_validate() {
        assert_eq!(chat_params(None).ok(), Some((None, 50)));
        assert_eq!(
            chat_params(Some("before=9&limit=200")).ok(),
            Some((Some(9), 200))
        );
        assert!(chat_params(Some("limit=201")).is_err());
        assert!(chat_params(Some("limit=0")).is_err());
        assert!(chat_params(Some("before=x")).is_err());
    }

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(
            route_label(&Method::GET, "/v1/rooms/abc/chat"),
            "/v1/rooms/{code}/chat"
        );
        assert_eq!(route_label(&Method::GET, "/whatever/123"), "other");
    }
}
