//! Latency percentiles and error classes.

/// Latency figures of the successful requests, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Fastest.
    pub min_ms: f64,
    /// Mean.
    pub avg_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The nearest-rank `q`-quantile (0 < q <= 1) of sorted samples.
fn rank(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[idx]
}

/// Figures of `nanos` (one latency per successful request, in
/// nanoseconds); `None` if there are none. Sorts `nanos`.
pub fn latency(nanos: &mut [u64]) -> Option<Latency> {
    if nanos.is_empty() {
        return None;
    }
    nanos.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let sum: u128 = nanos.iter().map(|&n| u128::from(n)).sum();
    Some(Latency {
        min_ms: ms(nanos[0]),
        avg_ms: (sum as f64 / nanos.len() as f64) / 1e6,
        p50_ms: ms(rank(nanos, 0.50)),
        p90_ms: ms(rank(nanos, 0.90)),
        p99_ms: ms(rank(nanos, 0.99)),
        p999_ms: ms(rank(nanos, 0.999)),
        max_ms: ms(*nanos.last().expect("not empty")),
    })
}

/// At most `max` characters of `s`, on one line.
fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The message of `e` and of its sources, joined with `: ` without
/// repeating a part (transport errors carry the useful part, e.g.
/// `Connection refused`, in a source, and repeat the others).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        for p in err.to_string().split(": ") {
            let p = p.trim();
            if !p.is_empty() && !parts.iter().any(|q| q == p) {
                parts.push(p.to_string());
            }
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// A message with a source, to join it with its causes.
#[derive(Debug)]
struct Chain<'a>(&'a str, Option<&'a (dyn std::error::Error + 'static)>);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Chain<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1
    }
}

/// The class of a failed request: `<gRPC code>: <message>` for a gRPC
/// status (e.g. `Unavailable: etcdserver: leader changed`), `transport:
/// ...` for a connection failure, else the client's error text.
pub fn classify(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            // The message as the server sent it; for statuses the client
            // made from a transport failure, the causes too.
            let msg = match std::error::Error::source(s) {
                None => s.message().to_string(),
                Some(src) => {
                    let causes = with_sources(src);
                    if s.message().is_empty() {
                        causes
                    } else {
                        with_sources(&Chain(s.message(), Some(src)))
                    }
                }
            };
            format!("{:?}: {}", s.code(), shorten(&msg, 160))
        }
        etcd_client::Error::TransportError(t) => {
            format!("transport: {}", shorten(&with_sources(t), 160))
        }
        other => shorten(&with_sources(other), 160),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        v.reverse();
        let l = latency(&mut v).unwrap();
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p90_ms, 900.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert!((l.avg_ms - 500.5).abs() < 1e-9);
        let mut one = vec![2_500_000];
        let l = latency(&mut one).unwrap();
        assert_eq!((l.p50_ms, l.p999_ms), (2.5, 2.5));
        assert!(latency(&mut []).is_none());
    }

    #[test]
    fn grpc_errors_are_classified_by_code_and_message() {
        let e = etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "etcdserver: leader changed",
        ));
        assert_eq!(classify(&e), "Unavailable: etcdserver: leader changed");
        let e = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("x\ny"));
        assert_eq!(classify(&e), "InvalidArgument: x y");
    }
}
