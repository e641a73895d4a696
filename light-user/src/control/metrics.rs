//! The Prometheus metrics endpoint of `light serve --metrics ADDR`: a minimal HTTP/1.1
//! responder (`GET /metrics`, one request per connection) and the text exposition format.
//!
//! Request parsing and response building are sans-IO ([`parse_request`], [`respond`]);
//! [`serve_metrics`] is the thin tokio loop around them.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Largest request head (request line and headers) read; more is answered with 400.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;

/// Why a request could not be parsed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request head exceeds [`MAX_REQUEST`].
    #[error("request head longer than {MAX_REQUEST} bytes")]
    TooLarge,
    /// The request is not HTTP/1.x (reason given).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
}

/// Parses a request head from the bytes read so far: `Ok(None)` while it is incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Malformed("bad target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed("not HTTP/1.0 or HTTP/1.1"));
    }
    for h in lines {
        let Some((name, _)) = h.split_once(':') else {
            return Err(HttpError::Malformed("header line without a colon"));
        };
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(HttpError::Malformed("bad header name"));
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    }))
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

/// Content type of the text exposition format.
pub const EXPOSITION_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to a parsed (or unparsable) request; `metrics` renders the exposition.
pub fn respond(req: Result<Request, HttpError>, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let text = "text/plain; charset=utf-8";
    match req {
        Err(e) => response(400, "Bad Request", text, &format!("{e}\n"), false),
        Ok(r) if r.method != "GET" && r.method != "HEAD" => response(
            405,
            "Method Not Allowed",
            text,
            "only GET and HEAD\n",
            false,
        ),
        Ok(r) if r.path == "/metrics" => {
            response(200, "OK", EXPOSITION_TYPE, &metrics(), r.method == "HEAD")
        }
        Ok(r) => response(
            404,
            "Not Found",
            text,
            "metrics are at /metrics\n",
            r.method == "HEAD",
        ),
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `metrics` renders the
/// exposition for each request.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors and the like: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = one_request(stream, &*metrics).await {
                tracing::debug!(%peer, error = %e, "metrics request");
            }
            drop(slot);
        });
    }
}

/// Reads one request head (bounded in size and time), answers it and closes.
async fn one_request(
    mut stream: TcpStream,
    metrics: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            match parse_request(&buf) {
                Ok(Some(r)) => return Ok(r),
                Err(e) => return Err(e),
                Ok(None) => {}
            }
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(_) => return Err(HttpError::Malformed("read failed")),
            };
            if n == 0 {
                return Err(HttpError::Malformed("connection closed mid-request"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Malformed("request not complete in time")),
    };
    let out = respond(req, metrics);
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        // Closing with unread bytes would reset the connection and could destroy the
        // answer in flight: read what the client still sends (bounded) until it closes.
        let mut sink = [0u8; 4096];
        let mut left = 16 * MAX_REQUEST;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Builds a text exposition: a family's `# HELP` and `# TYPE`, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family; its samples follow with [`Exposition::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Adds a sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', r"\\")
                    .replace('"', "\\\"")
                    .replace('\n', r"\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value as the format spells it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(out: &[u8]) -> u16 {
        let s = std::str::from_utf8(out).unwrap();
        s.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_get_parses_once_the_head_is_complete() {
        let req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        let r = parse_request(req).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
    }

    #[test]
    fn malformed_requests_get_400() {
        let bad: [&[u8]; 8] = [
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /m\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ];
        for req in bad {
            let parsed = parse_request(req);
            assert!(
                matches!(parsed, Err(HttpError::Malformed(_))),
                "{:?}: {parsed:?}",
                String::from_utf8_lossy(req)
            );
            let out = respond(parsed.map(|r| r.unwrap()), || unreachable!());
            assert_eq!(status_of(&out), 400);
        }
    }

    #[test]
    fn oversized_heads_are_refused_without_waiting_for_the_end() {
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_REQUEST {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_request(&req), Err(HttpError::TooLarge));
        req.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&req), Err(HttpError::TooLarge));
    }

    #[test]
    fn routes_and_methods() {
        let get = |raw: &[u8]| respond(parse_request(raw).map(|r| r.unwrap()), || "m 1\n".into());
        let ok = get(b"GET /metrics HTTP/1.0\r\n\r\n");
        let text = String::from_utf8(ok).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 4\r\n") && text.ends_with("\r\n\r\nm 1\n"));
        assert!(text.contains(EXPOSITION_TYPE));
        let head = String::from_utf8(get(b"HEAD /metrics HTTP/1.1\r\n\r\n")).unwrap();
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));
        assert_eq!(status_of(&get(b"GET / HTTP/1.1\r\n\r\n")), 404);
        let post = get(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&post), 405);
        assert!(
            String::from_utf8(post)
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
    }

    #[test]
    fn exposition_format() {
        let mut e = Exposition::new();
        e.single("light_x_total", Kind::Counter, "Things.\nMore.", 3.0);
        e.family("light_y", Kind::Gauge, "Y.");
        e.sample(
            "light_y",
            &[("receiver", "1"), ("reason", "a\"b\\c\nd")],
            2.5,
        );
        e.sample("light_y", &[("receiver", "2")], f64::INFINITY);
        e.family("light_empty", Kind::Gauge, "No samples.");
        assert_eq!(
            e.finish(),
            "# HELP light_x_total Things.\\nMore.\n# TYPE light_x_total counter\nlight_x_total 3\n\
             # HELP light_y Y.\n# TYPE light_y gauge\n\
             light_y{receiver=\"1\",reason=\"a\\\"b\\\\c\\nd\"} 2.5\n\
             light_y{receiver=\"2\"} +Inf\n\
             # HELP light_empty No samples.\n# TYPE light_empty gauge\n"
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, Arc::new(|| "light_up 1\n".into())));
        let ask = |raw: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(raw).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("light_up 1\n"),
            "{ok}"
        );
        let bad = ask(b"\x16\x03\x01 not http\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let big: &'static [u8] = Box::leak(vec![b'a'; 3 * MAX_REQUEST].into_boxed_slice());
        assert!(ask(big).await.starts_with("HTTP/1.1 400"));
        server.abort();
    }
}
