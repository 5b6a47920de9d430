//! etcd's gRPC status for a request over the gRPC receive limit.
//!
//! A request message larger than what the gRPC server accepts
//! (`--max-request-bytes` + 512 KiB) is refused by the gRPC library before
//! any service sees it. etcd's library (grpc-go) answers
//! `ResourceExhausted` / `grpc: received message larger than max (N vs. M)`;
//! tonic answers `OutOfRange` / `Error, decoded message length too large:
//! found N bytes, the limit is: M bytes`. Clients classify errors by code
//! (`OutOfRange` is also etcd's code for a compacted or future revision), so
//! [`GrpcLimitsLayer`] rewrites tonic's status into grpc-go's, wherever it
//! appears: in the response headers (a trailers-only response, as for unary
//! calls) or in the trailers of a streaming response. Every other response
//! passes through unchanged.
//!
//! Apply it to the client listener's server:
//! `tonic::transport::Server::builder().layer(GrpcLimitsLayer)`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The start of tonic's message for a request over the receive limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A [`Layer`] that gives requests over the gRPC receive limit etcd's
/// status (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcLimitsLayer;

impl<S> Layer<S> for GrpcLimitsLayer {
    type Service = GrpcLimits<S>;

    fn layer(&self, inner: S) -> GrpcLimits<S> {
        GrpcLimits { inner }
    }
}

/// The [`Service`] made by [`GrpcLimitsLayer`]: `inner`, with tonic's
/// "message too large" status rewritten to grpc-go's.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcLimits<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<GrpcLimitsBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcLimitsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        GrpcLimitsFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcLimits`].
    pub struct GrpcLimitsFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for GrpcLimitsFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GrpcLimitsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx));
        Poll::Ready(res.map(|resp| {
            let (mut parts, body) = resp.into_parts();
            if let Some(status) = rewrite_status(&mut parts.headers) {
                // tonic records the status it answered with here too.
                if parts.extensions.get::<Status>().is_some() {
                    parts.extensions.insert(status);
                }
            }
            http::Response::from_parts(parts, GrpcLimitsBody { inner: body })
        }))
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`GrpcLimits`]: the inner body, with the status
    /// in its trailers rewritten.
    pub struct GrpcLimitsBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for GrpcLimitsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut frame = ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(f)) = &mut frame {
            if let Some(trailers) = f.trailers_mut() {
                rewrite_status(trailers);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// If `headers` carry tonic's status for a message over the receive limit,
/// replaces it with grpc-go's and returns the new status.
fn rewrite_status(headers: &mut HeaderMap) -> Option<Status> {
    if headers.get(&GRPC_STATUS)?.as_bytes() != b"11" {
        return None;
    }
    let message = percent_decode(headers.get(&GRPC_MESSAGE)?.as_bytes())?;
    if !message.starts_with(TONIC_TOO_LARGE) {
        return None;
    }
    // If the sizes cannot be read (another tonic wording), the code is
    // still what matters to clients.
    let message = match sizes(&message) {
        Some((found, limit)) => {
            format!("grpc: received message larger than max ({found} vs. {limit})")
        }
        None => message,
    };
    let encoded = HeaderValue::from_str(&percent_encode(&message)).ok()?;
    headers.insert(GRPC_STATUS, HeaderValue::from_static("8"));
    headers.insert(GRPC_MESSAGE, encoded);
    Some(Status::new(Code::ResourceExhausted, message))
}

/// The two sizes of tonic's message: "... found N bytes, the limit is: M
/// bytes".
fn sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TONIC_TOO_LARGE)?;
    let rest = rest.strip_prefix(": found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// Decodes a `grpc-message` value (percent-encoded UTF-8).
fn percent_decode(value: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'%' && i + 2 < value.len() {
            let hex = &value[i + 1..i + 3];
            if hex.iter().all(u8::is_ascii_hexdigit) {
                let hex = std::str::from_utf8(hex).expect("ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Encodes a `grpc-message` value as grpc-go does: every byte outside
/// printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{ready as ready_fut, Ready};

    use ballast_proto::etcdserverpb::kv_client::KvClient;
    use ballast_proto::etcdserverpb::kv_server::{Kv, KvServer};
    use ballast_proto::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
        PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
    };
    use bytes::Bytes;
    use tonic::{Request, Response};

    use super::*;

    const TONIC_MESSAGE: &str =
        "Error, decoded message length too large: found 2600010 bytes, the limit is: 2097152 bytes";
    const ETCD_MESSAGE: &str = "grpc: received message larger than max (2600010 vs. 2097152)";

    /// A service answering every request with a clone of one response.
    #[derive(Clone)]
    struct Fixed(fn() -> http::Response<TestBody>);

    impl Service<http::Request<()>> for Fixed {
        type Response = http::Response<TestBody>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            ready_fut(Ok((self.0)()))
        }
    }

    /// A body of one data frame, then trailers.
    struct TestBody(Vec<Frame<Bytes>>);

    impl Body for TestBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
        }
    }

    fn status_response(status: Status) -> http::Response<TestBody> {
        status.into_http::<()>().map(|()| TestBody(Vec::new()))
    }

    async fn call(
        make: fn() -> http::Response<TestBody>,
    ) -> http::Response<GrpcLimitsBody<TestBody>> {
        let mut svc = GrpcLimitsLayer.layer(Fixed(make));
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(http::Request::new(())).await.unwrap()
    }

    async fn collect_frames<B: Body + Unpin>(mut body: B) -> Vec<Frame<B::Data>>
    where
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            out.push(f.unwrap());
        }
        out
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(percent_encode(ETCD_MESSAGE), ETCD_MESSAGE);
        assert_eq!(percent_encode("100% ü\n"), "100%25 %C3%BC%0A");
        assert_eq!(percent_decode(b"100%25 %C3%BC%0A").unwrap(), "100% ü\n");
        // Tonic encodes spaces too.
        assert_eq!(
            percent_decode(b"a%20b%2").unwrap(),
            "a b%2",
            "a truncated escape stays as is"
        );
        assert_eq!(percent_decode(b"%+1%zz").unwrap(), "%+1%zz");
        assert_eq!(sizes(TONIC_MESSAGE), Some((2_600_010, 2_097_152)));
        assert_eq!(sizes("Error, decoded message length too large"), None);
    }

    #[tokio::test]
    async fn tonic_too_large_becomes_grpc_go_resource_exhausted() {
        let resp = call(|| status_response(Status::out_of_range(TONIC_MESSAGE))).await;
        let h = resp.headers();
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], ETCD_MESSAGE);
        assert_eq!(h["content-type"], "application/grpc");
        // What a tonic client makes of it.
        let seen = Status::from_header_map(h).expect("a status");
        assert_eq!(seen.code(), Code::ResourceExhausted);
        assert_eq!(seen.message(), ETCD_MESSAGE);
        let ext = resp.extensions().get::<Status>().expect("status extension");
        assert_eq!(
            (ext.code(), ext.message()),
            (Code::ResourceExhausted, ETCD_MESSAGE)
        );
    }

    #[tokio::test]
    async fn other_statuses_pass_unchanged() {
        for make in [
            (|| {
                status_response(Status::out_of_range(
                    "etcdserver: mvcc: required revision has been compacted",
                ))
            }) as fn() -> http::Response<TestBody>,
            || status_response(Status::resource_exhausted(ETCD_MESSAGE)),
            || status_response(Status::invalid_argument(TONIC_MESSAGE)),
            || status_response(Status::ok("")),
            || http::Response::new(TestBody(vec![Frame::data(Bytes::from_static(b"404"))])),
        ] {
            let want = make();
            let got = call(make).await;
            assert_eq!(got.headers(), want.headers());
            assert_eq!(got.status(), want.status());
        }
    }

    #[tokio::test]
    async fn trailers_are_rewritten_too() {
        fn streaming(status: Status) -> http::Response<TestBody> {
            let mut trailers = HeaderMap::new();
            status.add_header(&mut trailers).unwrap();
            let mut resp = http::Response::new(TestBody(vec![
                Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                Frame::trailers(trailers),
            ]));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            resp
        }
        let resp = call(|| streaming(Status::out_of_range(TONIC_MESSAGE))).await;
        assert!(resp.headers().get("grpc-status").is_none());
        let frames = collect_frames(resp.into_body()).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data_ref().unwrap(), &b"\0\0\0\0\0"[..]);
        let t = frames[1].trailers_ref().unwrap();
        assert_eq!(t["grpc-status"], "8");
        assert_eq!(t["grpc-message"], ETCD_MESSAGE);

        let resp = call(|| {
            streaming(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ))
        })
        .await;
        let frames = collect_frames(resp.into_body()).await;
        let t = frames[1].trailers_ref().unwrap();
        assert_eq!(t["grpc-status"], "11");
    }

    /// A KV service that answers every put; the rest is not called.
    struct PutOnly;

    #[tonic::async_trait]
    impl Kv for PutOnly {
        async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
            Err(Status::unimplemented("range"))
        }
        async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            Ok(Response::new(PutResponse::default()))
        }
        async fn delete_range(
            &self,
            _: Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("delete_range"))
        }
        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            Err(Status::unimplemented("txn"))
        }
        async fn compact(
            &self,
            _: Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("compact"))
        }
    }

    /// The layer on a real tonic server, set up as the member's client
    /// listener is (HTTP/1 accepted, routes from an axum router), and a
    /// real tonic client.
    #[tokio::test]
    async fn over_the_limit_through_a_tonic_server() {
        const LIMIT: usize = 1000;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes =
            tonic::service::Routes::new(KvServer::new(PutOnly).max_decoding_message_size(LIMIT));
        let routes: tonic::service::Routes = routes.into_axum_router().into();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(GrpcLimitsLayer)
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );
        let mut client = KvClient::connect(format!("http://{addr}")).await.unwrap();
        let put = |n: usize| PutRequest {
            key: b"k".to_vec(),
            value: vec![b'v'; n],
            ..Default::default()
        };
        client.put(put(10)).await.expect("a small put");
        let big = put(2 * LIMIT);
        let len = prost::Message::encoded_len(&big);
        let err = client.put(big).await.expect_err("over the limit");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            err.message(),
            format!("grpc: received message larger than max ({len} vs. {LIMIT})")
        );
        // The connection still serves.
        client.put(put(10)).await.expect("a small put after");
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    }
}
