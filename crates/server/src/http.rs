//! The HTTP endpoints etcd serves beside gRPC on its client URLs:
//! `/health`, `/version` and `/metrics`, and the gRPC metrics middleware.
//!
//! They share the gRPC routes' listener: the server accepts HTTP/1 and
//! HTTP/2 (h2c) on one port, and requests are routed by path.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ballast_mvcc::Store;
use ballast_proto::etcdserverpb::{AlarmType, RangeRequest};
use bytes::Bytes;
use http_body::Frame;
use tonic::service::Routes;

use crate::metrics::{MemberFacts, Metrics};

/// What the HTTP handlers need.
pub struct HttpState {
    /// The engine.
    pub store: Store,
    /// The write path and read barrier, for `/health`'s leader and quorum check.
    pub proposer: crate::proposer::Proposer,
    /// The member's metrics.
    pub metrics: Arc<Metrics>,
    /// Identity and quota, for `/metrics`.
    pub facts: MemberFacts,
}

/// etcd 3.5's `/health` answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// `"true"` or `"false"` (strings, as etcd).
    pub health: String,
    /// Why not healthy (`"ALARM NOSPACE"`, ...), empty when healthy.
    pub reason: String,
}

/// Adds the HTTP endpoints, a 404 for unknown paths (gRPC's
/// `Unimplemented` for unknown gRPC methods) and the gRPC metrics to the
/// gRPC `routes`.
pub fn with_http(routes: Routes, state: Arc<HttpState>) -> Routes {
    let health_state = state.clone();
    let metrics_state = state.clone();
    let metrics = state.metrics.clone();
    routes
        .into_axum_router()
        .route(
            "/health",
            get(move |uri: Uri| {
                let s = health_state.clone();
                async move { health(s, uri.query().map(str::to_string)).await }
            }),
        )
        .route("/version", get(version))
        .route(
            "/metrics",
            get(move || {
                let s = metrics_state.clone();
                async move { render_metrics(s).await }
            }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let m = metrics.clone();
                async move { grpc_metrics(m, req, next).await }
            },
        ))
        .into()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn not_found(req: Request) -> Response {
    if is_grpc(req.headers()) {
        return tonic::Status::unimplemented("").into_http::<Body>();
    }
    text(StatusCode::NOT_FOUND, "404 page not found\n".to_string())
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// Judges the member's health as etcd 3.5's `checkHealth`: an active alarm
/// (unless excluded with `?exclude=NOSPACE`) makes it unhealthy, then a
/// store that refuses writes after a failed disk write, then a failing read.
/// The caller checks the leader and, unless `?serializable=true`, a
/// linearizable read.
pub fn check_health(store: &Store, query: Option<&str>) -> Health {
    let excluded: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "exclude")
        .map(|(_, v)| v.to_string())
        .collect();
    let unhealthy = |reason: String| Health {
        health: "false".into(),
        reason,
    };
    for a in store.alarms() {
        let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        if excluded.iter().any(|e| e == name) {
            continue;
        }
        return unhealthy(match AlarmType::try_from(a.alarm) {
            Ok(AlarmType::Nospace) => "ALARM NOSPACE".into(),
            Ok(AlarmType::Corrupt) => "ALARM CORRUPT".into(),
            _ => "ALARM UNKNOWN".into(),
        });
    }
    if store.is_poisoned() {
        return unhealthy("STORAGE ERROR: writes stopped after a failed disk write".into());
    }
    let probe = RangeRequest {
        key: b"health".to_vec(),
        count_only: true,
        ..Default::default()
    };
    if let Err(e) = store.range(&probe) {
        return unhealthy(format!("QGET ERROR:{e}"));
    }
    Health {
        health: "true".into(),
        reason: String::new(),
    }
}

async fn health(state: Arc<HttpState>, query: Option<String>) -> Response {
    let serializable = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == "serializable=true");
    let store = state.store.clone();
    let h = if state.proposer.node().leader_id().is_none() {
        Health {
            health: "false".into(),
            reason: "RAFT NO LEADER".into(),
        }
    } else {
        let Ok(mut h) =
            tokio::task::spawn_blocking(move || check_health(&store, query.as_deref())).await
        else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
        };
        // As etcd's QGET: a linearizable read needs the leader and a quorum.
        if h.health == "true" && !serializable {
            if let Err(e) = state.proposer.read_barrier().await {
                h = Health {
                    health: "false".into(),
                    reason: format!("QGET ERROR:{e}"),
                };
            }
        }
        h
    };
    let body = serde_json::to_string(&h).expect("serializable");
    if h.health == "true" {
        state.metrics.health_success.fetch_add(1, Ordering::Relaxed);
        text(StatusCode::OK, body)
    } else {
        state
            .metrics
            .health_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %h.reason, "serving /health false");
        text(StatusCode::SERVICE_UNAVAILABLE, body + "\n")
    }
}

/// etcd's `/version` answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    /// The server's version.
    pub etcdserver: String,
    /// The cluster's version.
    pub etcdcluster: String,
}

async fn version() -> Response {
    let v = Versions {
        etcdserver: crate::ETCD_VERSION.into(),
        etcdcluster: crate::ETCD_CLUSTER_VERSION.into(),
    };
    let body = serde_json::to_string(&v).expect("serializable");
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn render_metrics(state: Arc<HttpState>) -> Response {
    let s = state.clone();
    match tokio::task::spawn_blocking(move || s.metrics.render(&s.store, &s.facts)).await {
        Ok(body) => (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(v.parse().ok()?))
}

/// Counts gRPC calls as go-grpc-prometheus does: started when the request
/// arrives, handled with its status code when the response ends (in the
/// headers of an error answered at once, else in the trailers).
async fn grpc_metrics(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    if !is_grpc(req.headers()) {
        return next.run(req).await;
    }
    let Some((service, method)) = req
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(s, m)| (s.to_string(), m.to_string()))
    else {
        return next.run(req).await;
    };
    metrics.grpc_started(&service, &method);
    let resp = next.run(req).await;
    if let Some(code) = grpc_code(resp.headers()) {
        metrics.grpc_handled(&service, &method, code);
        return resp;
    }
    resp.map(|body| {
        Body::new(CountedBody {
            inner: body,
            call: Some(Call {
                metrics,
                service,
                method,
            }),
        })
    })
}

struct Call {
    metrics: Arc<Metrics>,
    service: String,
    method: String,
}

impl Call {
    fn done(self, code: tonic::Code) {
        self.metrics.grpc_handled(&self.service, &self.method, code);
    }
}

/// A response body that reports the call's status when its trailers pass
/// (or `Canceled` if the body is dropped first: the client went away).
struct CountedBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    if let Some(call) = self.call.take() {
                        call.done(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.done(tonic::Code::Unknown);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.done(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.done(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_json_is_etcds() {
        let h = Health {
            health: "true".into(),
            reason: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"health":"true","reason":""}"#
        );
    }
}
