//! Accepts the `:authority` etcd 3.4 clients send.
//!
//! etcdctl 3.4 (grpc-go of its time) sends the endpoint as given, scheme and
//! all — `:authority: http://127.0.0.1:2379` — when an endpoint is written
//! as a URL (`--endpoints=http://…`, and always with `endpoint status
//! --cluster`, which uses the members' client URLs). etcd's Go server
//! ignores the value; the HTTP/2 library under tonic refuses it as a
//! malformed header and resets the stream. [`AuthorityRewrite`] sits
//! between the socket and the HTTP/2 server and rewrites such a value to its
//! `host:port` part.
//!
//! It reads the client's HTTP/2 frames up to the first header block and
//! decodes it. A client sends one authority for every request on a
//! connection, so if that one is fine the rest of the connection passes
//! through untouched (no decoding, no copy). Otherwise it keeps decoding
//! every header block with its own HPACK decoder (its table following the
//! client's) and encodes each again with the authority fixed, as literals
//! that never use the dynamic table, so the server's decoder stays
//! consistent. Other frames, the server's replies and HTTP/1 connections
//! pass unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Payload size of the frames written here: the smallest maximum HTTP/2
/// allows, which the server accepts whatever it announced.
const MAX_PAYLOAD: usize = 16_384;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

enum Phase {
    /// Reading the first bytes: HTTP/2 preface or not?
    Preface,
    /// Inside an HTTP/2 connection: header blocks are inspected.
    Frames,
    /// Not HTTP/2, or the stream could not be followed: bytes pass as read.
    Passthrough,
}

/// A header block being received: its frames as read, and its fragment.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    raw: BytesMut,
    fragment: BytesMut,
}

/// A client connection whose HTTP/2 `:authority` values with a scheme
/// (`http://host:port`) reach the server as `host:port`; nothing else is
/// changed.
pub struct AuthorityRewrite<S> {
    inner: S,
    phase: Phase,
    /// Read from the socket, not yet examined.
    input: BytesMut,
    /// Examined, ready for the server.
    output: BytesMut,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    /// Set once a block was rewritten: every later block is encoded again.
    reencode: bool,
    eof: bool,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityRewrite {
            inner,
            phase: Phase::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            reencode: false,
            eof: false,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) {
        loop {
            match self.phase {
                Phase::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.phase = Phase::Passthrough;
                    } else if n == PREFACE.len() {
                        self.output.put(self.input.split_to(n));
                        self.phase = Phase::Frames;
                    } else {
                        return;
                    }
                }
                Phase::Passthrough => {
                    self.pass_rest();
                    return;
                }
                Phase::Frames => {
                    if !self.next_frame() {
                        return;
                    }
                }
            }
        }
    }

    /// Gives up following the connection: everything held goes out as read.
    fn pass_rest(&mut self) {
        if let Some(p) = self.pending.take() {
            self.output.put(p.raw);
        }
        let rest = self.input.split();
        self.output.put(rest);
        self.phase = Phase::Passthrough;
    }

    /// Handles one complete frame from `input`; false if none is complete.
    fn next_frame(&mut self) -> bool {
        if self.input.len() < FRAME_HEADER {
            return false;
        }
        let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
        if self.input.len() < FRAME_HEADER + len {
            return false;
        }
        let kind = self.input[3];
        let flags = self.input[4];
        let stream =
            u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]])
                & 0x7fff_ffff;
        let frame = self.input.split_to(FRAME_HEADER + len);
        match (kind, self.pending.as_mut()) {
            (CONTINUATION, Some(p)) if p.stream == stream => {
                p.raw.put(&frame[..]);
                p.fragment.put(&frame[FRAME_HEADER..]);
            }
            (_, Some(_)) => {
                // Not allowed inside a header block: let the server say so.
                self.output.put(frame);
                self.pass_rest();
                return false;
            }
            (HEADERS, None) => {
                let Some(fragment) = headers_fragment(&frame[FRAME_HEADER..], flags) else {
                    self.output.put(frame);
                    self.pass_rest();
                    return false;
                };
                self.pending = Some(PendingBlock {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: BytesMut::from(fragment),
                    raw: frame,
                });
            }
            (_, None) => {
                self.output.put(frame);
                return true;
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.pending.take() {
                self.finish_block(block);
            }
        }
        true
    }

    /// Decodes a complete header block and forwards it, rewritten if needed.
    fn finish_block(&mut self, block: PendingBlock) {
        let mut headers = match self.decoder.decode(&block.fragment) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable header block; passing the connection through");
                self.output.put(block.raw);
                self.pass_rest();
                return;
            }
        };
        let mut fixed = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(host_port) = strip_scheme(value) {
                    *value = host_port;
                    fixed = true;
                }
            }
        }
        if !fixed && !self.reencode {
            // A client gives every request on a connection the same
            // authority (one origin per connection): once the first is
            // fine, the rest of the connection passes without decoding.
            self.output.put(block.raw);
            self.pass_rest();
            return;
        }
        self.reencode = true;
        let encoded = encode_literals(&headers);
        write_header_frames(&mut self.output, block.stream, block.end_stream, &encoded);
    }
}

/// The header block fragment of a HEADERS frame's payload (without padding
/// and priority), or `None` if the payload is inconsistent.
fn headers_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// `host:port` of an authority written as a URL (`http://host:port/…`).
fn strip_scheme(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn put_integer(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Headers as HPACK literals without indexing and without Huffman coding:
/// the receiver's dynamic table is neither used nor changed.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        put_integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        put_integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A HEADERS frame, and CONTINUATION frames as needed, carrying `block`.
fn write_header_frames(out: &mut BytesMut, stream: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(MAX_PAYLOAD).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let kind = if first { HEADERS } else { CONTINUATION };
        let mut flags = 0;
        if first && end_stream {
            flags |= END_STREAM;
        }
        if last {
            flags |= END_HEADERS;
        }
        let len = chunk.len() as u32;
        out.put_slice(&len.to_be_bytes()[1..]);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.put_slice(chunk);
        first = false;
        if last {
            return;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame goes to the server as it is.
                this.pass_rest();
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if matches!(this.phase, Phase::Passthrough) && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.input.reserve(READ_CHUNK);
            let mut read = ReadBuf::uninit(this.input.spare_capacity_mut());
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            // SAFETY: `n` bytes of the spare capacity were just initialized
            // by the read.
            unsafe { this.input.advance_mut(n) };
            this.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityRewrite<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A literal header field with incremental indexing, new name.
    fn indexed_literal(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0x40);
        put_integer(out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        put_integer(out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }

    /// Sends `input` through the rewriter in pieces of `step` bytes and
    /// returns what the server would read.
    async fn rewrite(input: &[u8], step: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for piece in input.chunks(step) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        AuthorityRewrite::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap();
        writer.await.unwrap();
        out
    }

    /// Splits a byte stream after the preface into frames.
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(b.starts_with(PREFACE));
        b = &b[PREFACE.len()..];
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        out
    }

    fn decode_all(fs: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in fs {
            if *kind == HEADERS || *kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let h = d.decode(&block).unwrap();
                    blocks.push(
                        h.into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            }
        }
        blocks
    }

    #[tokio::test]
    async fn authority_with_scheme_is_rewritten_and_tables_stay_consistent() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // Block 1: needs the fix; adds both fields to the dynamic table.
        let mut b1 = Vec::new();
        indexed_literal(&mut b1, ":authority", "http://127.0.0.1:2379");
        indexed_literal(&mut b1, "x-a", "1");
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, b"data"));
        // Block 2: needs the fix; padded, with priority, split over a
        // CONTINUATION; refers to "x-a: 1" by its dynamic index (62).
        let mut b2 = Vec::new();
        indexed_literal(&mut b2, ":authority", "http://127.0.0.1:2379");
        b2.push(0x80 | 63); // "x-a: 1", now second in the dynamic table
        let mut p = vec![3u8]; // pad length
        p.extend([0, 0, 0, 0, 16]); // priority
        p.extend_from_slice(&b2[..5]);
        p.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &b2[5..]));
        // Block 3: refers to entries of the client's dynamic table only.
        input.extend(frame(HEADERS, END_HEADERS, 5, &[0x80 | 62, 0x80 | 63]));

        for step in [1, 7, 4096] {
            let out = rewrite(&input, step).await;
            let fs = frames(&out);
            assert_eq!(fs.len(), 5, "{fs:?}");
            assert_eq!(fs[1].2, 1);
            assert_eq!(fs[2], (0x0, END_STREAM, 1, b"data".to_vec()));
            assert_eq!(fs[3].1, END_STREAM | END_HEADERS);
            assert_eq!(fs[3].2, 3);
            let blocks = decode_all(&fs);
            let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            };
            assert_eq!(
                blocks,
                vec![
                    pairs(&[(":authority", "127.0.0.1:2379"), ("x-a", "1")]),
                    pairs(&[(":authority", "127.0.0.1:2379"), ("x-a", "1")]),
                    pairs(&[(":authority", "http://127.0.0.1:2379"), ("x-a", "1")])
                        .into_iter()
                        .map(|(n, v)| (n, v.replace("http://", "")))
                        .collect(),
                ]
            );
        }
    }

    #[tokio::test]
    async fn large_blocks_are_split_and_http1_passes_unchanged() {
        let mut input = PREFACE.to_vec();
        let mut b = Vec::new();
        indexed_literal(&mut b, ":authority", "https://h:1/x");
        indexed_literal(&mut b, "big", &"v".repeat(40_000));
        input.extend(frame(HEADERS, END_HEADERS, 1, &b[..100]));
        // (Malformed on purpose: END_HEADERS with a partial block cannot be
        // decoded, so the connection passes through from there.)
        let out = rewrite(&input, 1000).await;
        assert_eq!(out, input);

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &b[..10_000]));
        input.extend(frame(CONTINUATION, 0, 1, &b[10_000..30_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &b[30_000..]));
        let fs = frames(&rewrite(&input, 5000).await);
        assert!(fs.len() >= 3);
        assert!(fs.iter().all(|f| f.3.len() <= MAX_PAYLOAD));
        let blocks = decode_all(&fs);
        assert_eq!(blocks[0][0].1, "h:1");
        assert_eq!(blocks[0][1].1.len(), 40_000);

        let http1 = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        assert_eq!(rewrite(&http1, 3).await, http1);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_fine_passes_unchanged() {
        let mut input = PREFACE.to_vec();
        let mut b1 = Vec::new();
        indexed_literal(&mut b1, ":authority", "127.0.0.1:2379");
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, b"data"));
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0x80 | 62]));
        for step in [1, 5, 4096] {
            assert_eq!(rewrite(&input, step).await, input);
        }
    }

    #[test]
    fn integers_encode_as_hpack_specifies() {
        let mut out = Vec::new();
        put_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [10]);
        out.clear();
        put_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        assert_eq!(strip_scheme(b"http://a:1"), Some(b"a:1".to_vec()));
        assert_eq!(strip_scheme(b"a:1"), None);
    }
}
