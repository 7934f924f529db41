//! Hardening: request smuggling and framing, sent as raw bytes over real TLS
//! to the real gateway, each case asserting exactly what a raw-socket backend in the sandbox
//! received ([`RawBackend`]: it parses strictly and records every byte).
//!
//! The rule: a request whose framing is ambiguous is refused (4xx, the connection closed) and
//! never forwarded, and nothing after it on the same connection reaches the app as a request of
//! its own. Every forwarded request is re-framed by the gateway (its own `Content-Length` or
//! `chunked`), so the app never sees the client's framing. Many refusals are hyper's (its
//! HTTP/1.1 parser, or the `h2` crate for HTTP/2): these tests prove them on the real binary,
//! together with the gateway's own checks (`edge::headers::framing_violation`).
//!
//! Run: `GATEWAY_BIN=/path/to/gateway cargo test -p gateway-tests --test hardening_smuggling -- --test-threads=1`.

use gateway_tests::{edge::*, env::Env, harness::Sandbox, raw::*};

/// What a case must produce.
struct Expect {
    /// Statuses of the complete responses, in order.
    statuses: &'static [u16],
    /// Whether the gateway must have closed the connection (None: either).
    closed: Option<bool>,
    /// The complete requests the backend must have received, exactly: (request line, body).
    backend: Vec<(&'static str, &'static [u8])>,
}

/// The requests of these tests, to the fixture's sandbox with its token.
trait Smuggling {
    fn req(&self, method: &str, path: &str, extra: &str, body: &str) -> String;
    fn get(&self, path: &str) -> String;
    async fn check(&self, backend: &RawBackend, name: &str, bytes: &[u8], want: Expect);
}

impl Smuggling for Env {
    /// `{method} /port/3000{path} HTTP/1.1` with Host and the token, `extra` header lines
    /// (each ending in CRLF), the blank line, then `body`.
    fn req(&self, method: &str, path: &str, extra: &str, body: &str) -> String {
        format!(
            "{method} /port/3000{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n{extra}\r\n{body}",
            self.host, self.bearer
        )
    }

    /// A plain authenticated GET of `path`.
    fn get(&self, path: &str) -> String {
        self.req("GET", path, "", "")
    }

    async fn check(&self, backend: &RawBackend, name: &str, bytes: &[u8], want: Expect) {
        backend.clear();
        let got = h1_exchange(&self.client, &self.host, bytes, want.statuses.len()).await;
        // Give the backend a moment to record what may still be in flight to it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let statuses = got.statuses();
        assert_eq!(statuses, want.statuses, "{name}: statuses; the gateway answered:\n{}", got.text());
        if let Some(closed) = want.closed {
            assert_eq!(got.closed, closed, "{name}: connection closed? answered:\n{}", got.text());
        }
        let requests = backend.requests();
        let seen: Vec<(String, Vec<u8>)> =
            requests.iter().filter(|r| r.complete).map(|r| (r.request_line().to_string(), r.body.clone())).collect();
        let want_seen: Vec<(String, Vec<u8>)> = want.backend.iter().map(|(l, b)| (l.to_string(), b.to_vec())).collect();
        assert_eq!(seen, want_seen, "{name}: what the backend received: {requests:#?}");
        assert!(requests.iter().all(|r| r.complete), "{name}: a partial request reached the backend: {requests:#?}");
        assert_no_smuggled(backend, name);
    }
}

/// No byte sequence meant to be smuggled ever reaches the app.
fn assert_no_smuggled(backend: &RawBackend, name: &str) {
    let all = String::from_utf8_lossy(&backend.all_bytes()).into_owned();
    assert!(!all.contains("smuggled"), "{name}: smuggled bytes reached the backend:\n{all}");
}

const NO: &[u8] = b"";

#[test]
fn ambiguous_framing_is_refused_and_never_forwarded() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("smuggling").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let backend = spawn_raw_backend(sb, sb.addr(), 3000);
    let smuggled =
        format!("GET /port/3000/smuggled HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n", e.host, e.bearer);
    let next = e.get("/next");

    rt.block_on(async {
        // Baseline: two requests on one connection, both forwarded, re-framed.
        let bytes = format!("{}{next}", e.get("/a"));
        e.check(&backend, "baseline", bytes.as_bytes(), Expect {
            statuses: &[200, 200],
            closed: Some(false),
            backend: vec![("GET /a HTTP/1.1", NO), ("GET /next HTTP/1.1", NO)],
        })
        .await;

        // Content-Length and Transfer-Encoding together (both orders): RFC 9112 §6.1 lets a
        // server process it by Transfer-Encoding alone if it then closes the connection. hyper
        // does exactly that (the Content-Length is dropped before the handler sees the request),
        // so the body is the chunked one, the app gets it re-framed, and what the
        // Content-Length would have left over is never read as a request.
        let cl_te = e.req("POST", "/cl-te", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG");
        e.check(&backend, "CL.TE", format!("{cl_te}{smuggled}").as_bytes(), Expect {
            statuses: &[200],
            closed: Some(true),
            backend: vec![("POST /cl-te HTTP/1.1", NO)],
        })
        .await;
        let chunk = smuggled.as_bytes();
        let te_body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", chunk.len());
        let te_cl = e.req("POST", "/te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &te_body);
        backend.clear();
        let got = h1_exchange(&e.client, &e.host, format!("{te_cl}{next}").as_bytes(), 1).await;
        assert_eq!(got.statuses(), [200], "TE.CL: {}", got.text());
        assert!(got.closed, "TE.CL: the connection is closed after the answer");
        let seen = backend.requests();
        assert_eq!(seen.len(), 1, "TE.CL: {seen:#?}");
        assert_eq!(seen[0].request_line(), "POST /te-cl HTTP/1.1");
        // The would-be request is only the body of the first, re-framed.
        assert_eq!(seen[0].body, smuggled.as_bytes(), "TE.CL body");
        assert!(seen[0].header("content-length").len() <= 1, "{seen:#?}");

        // Content-Length: differing duplicates, comma lists, signs, overflow: 400 and close.
        for (name, headers) in [
            ("duplicate CL, different", "Content-Length: 3\r\nContent-Length: 4\r\n"),
            ("comma-joined CL", "Content-Length: 4, 4\r\n"),
            ("comma-joined CL, different", "Content-Length: 4, 3\r\n"),
            ("CL with a sign", "Content-Length: +4\r\n"),
            ("negative CL", "Content-Length: -4\r\n"),
            ("hex CL", "Content-Length: 0x4\r\n"),
            ("CL overflow", "Content-Length: 18446744073709551620\r\n"),
            ("CL with a space inside", "Content-Length: 4 4\r\n"),
        ] {
            let bytes = format!("{}{next}", e.req("POST", "/cl", headers, "abcd"));
            e.check(&backend, name, bytes.as_bytes(), Expect { statuses: &[400], closed: Some(true), backend: vec![] })
                .await;
        }
        // The same Content-Length twice is one length (RFC 9110 §8.6): forwarded with one.
        let bytes = format!("{}{next}", e.req("POST", "/cl-twice", "Content-Length: 5\r\nContent-Length: 5\r\n", "hello"));
        e.check(&backend, "duplicate CL, same", bytes.as_bytes(), Expect {
            statuses: &[200, 200],
            closed: Some(false),
            backend: vec![("POST /cl-twice HTTP/1.1", b"hello"), ("GET /next HTTP/1.1", NO)],
        })
        .await;
        let forwarded = backend.requests();
        assert_eq!(forwarded[0].header("content-length"), ["5"], "one Content-Length forwarded: {forwarded:#?}");

        // Transfer-Encoding other than exactly `chunked`: refused (hyper for `chunked` not
        // last, the gateway for the rest), never forwarded, the connection closed.
        for (name, headers) in [
            ("TE xchunked", "Transfer-Encoding: xchunked\r\n"),
            ("TE chunked, identity", "Transfer-Encoding: chunked, identity\r\n"),
            ("TE identity", "Transfer-Encoding: identity\r\n"),
            ("TE identity, chunked", "Transfer-Encoding: identity, chunked\r\n"),
            ("TE gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n"),
            ("TE chunked, chunked", "Transfer-Encoding: chunked, chunked\r\n"),
            ("TE twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            ("TE chunked then identity", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
            ("TE with a vertical tab", "Transfer-Encoding: \x0bchunked\r\n"),
            ("TE empty", "Transfer-Encoding: \r\n"),
            ("TE spelled with an underscore", "Transfer_Encoding: chunked\r\n"),
            ("CL spelled with an underscore", "Content_Length: 4\r\n"),
        ] {
            let bytes = format!("{}{next}", e.req("POST", "/te", headers, "4\r\nabcd\r\n0\r\n\r\n"));
            e.check(&backend, name, bytes.as_bytes(), Expect { statuses: &[400], closed: Some(true), backend: vec![] })
                .await;
        }
        // `chunked` spelled with other case or surrounding whitespace is `chunked` (field
        // values are case-insensitive tokens with optional whitespace around): accepted, and
        // the app gets the decoded body re-framed.
        for (name, headers) in [
            ("TE Chunked", "Transfer-Encoding: Chunked\r\n"),
            ("TE CHUNKED", "Transfer-Encoding: CHUNKED\r\n"),
            ("TE with a trailing space", "Transfer-Encoding: chunked \r\n"),
            ("TE after a tab", "Transfer-Encoding:\tchunked\r\n"),
        ] {
            let bytes = format!("{}{next}", e.req("POST", "/te-ok", headers, "4\r\nabcd\r\n0\r\n\r\n"));
            e.check(&backend, name, bytes.as_bytes(), Expect {
                statuses: &[200, 200],
                closed: Some(false),
                backend: vec![("POST /te-ok HTTP/1.1", b"abcd"), ("GET /next HTTP/1.1", NO)],
            })
            .await;
        }

        // Malformed header lines: obs-fold (also hiding a Transfer-Encoding), whitespace
        // before the colon, spaces, NUL or CR in names or values, no colon.
        for (name, headers) in [
            ("TE in a folded line", "X-A: 1\r\n Transfer-Encoding: chunked\r\n"),
            ("TE value folded", "Transfer-Encoding: identity\r\n chunked\r\n"),
            ("obs-fold", "X-A: 1\r\n\t2\r\n"),
            ("space before the colon", "Transfer-Encoding : chunked\r\n"),
            ("tab before the colon", "Content-Length\t: 4\r\n"),
            ("space in a name", "X Y: 1\r\n"),
            ("NUL in a name", "X\0Y: 1\r\n"),
            ("NUL in a value", "X-A: 1\x002\r\n"),
            ("CR in a value", "X-A: 1\rContent-Length: 4\r\n"),
            ("no colon", "X-A 1\r\n"),
            ("empty name", ": 1\r\n"),
        ] {
            let bytes = format!("{}{next}", e.req("POST", "/hdr", headers, "4\r\nabcd\r\n0\r\n\r\n"));
            e.check(&backend, name, bytes.as_bytes(), Expect { statuses: &[400], closed: Some(true), backend: vec![] })
                .await;
        }
        // Request lines.
        for (name, line) in [
            ("two spaces", format!("GET  /port/3000/x HTTP/1.1\r\nHost: {}\r\n\r\n", e.host)),
            ("NUL in the target", format!("GET /port/3000/a\0b HTTP/1.1\r\nHost: {}\r\n\r\n", e.host)),
            ("trailing garbage", format!("GET /port/3000/x HTTP/1.1 x\r\nHost: {}\r\n\r\n", e.host)),
            ("HTTP/1.2", format!("GET /port/3000/x HTTP/1.2\r\nHost: {}\r\n\r\n", e.host)),
            ("HTTP/0.9", "GET /port/3000/x\r\n\r\n".to_string()),
        ] {
            e.check(&backend, name, line.as_bytes(), Expect { statuses: &[400], closed: Some(true), backend: vec![] })
                .await;
        }

        // HTTP/1.0 with Transfer-Encoding: 400 (hyper).
        let bytes = format!(
            "POST /port/3000/v10 HTTP/1.0\r\nHost: {}\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n{next}",
            e.host, e.bearer
        );
        e.check(&backend, "HTTP/1.0 with TE", bytes.as_bytes(), Expect { statuses: &[400], closed: Some(true), backend: vec![] })
            .await;

        // Bare LF line endings: hyper reads them as line ends (RFC 9112 §2.2 allows it); what the
        // app gets is the gateway's own CRLF-framed request, so no one downstream can read the
        // lines differently.
        let bytes = format!("GET /port/3000/lf HTTP/1.1\nHost: {}\nAuthorization: {}\n\n{next}", e.host, e.bearer);
        e.check(&backend, "bare LF", bytes.as_bytes(), Expect {
            statuses: &[200, 200],
            closed: Some(false),
            backend: vec![("GET /lf HTTP/1.1", NO), ("GET /next HTTP/1.1", NO)],
        })
        .await;
        let lf = backend.requests();
        assert!(!lf[0].head.replace("\r\n", "").contains('\n'), "no bare LF forwarded: {:?}", lf[0].head);
    });
}

#[test]
fn broken_chunked_bodies_never_reach_the_app_whole() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("smuggling").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let backend = spawn_raw_backend(sb, sb.addr(), 3000);
    let next = e.get("/next");

    rt.block_on(async {
        for (name, body) in [
            ("chunk-size overflow", "ffffffffffffffff1\r\nabcd\r\n0\r\n\r\n".to_string()),
            ("chunk size 2^64", "10000000000000000\r\nabcd\r\n0\r\n\r\n".to_string()),
            ("chunk size not hex", "zz\r\nabcd\r\n0\r\n\r\n".to_string()),
            ("chunk size negative", "-4\r\nabcd\r\n0\r\n\r\n".to_string()),
            ("chunk without CRLF", "4\r\nabcdX0\r\n\r\n".to_string()),
            ("chunk size with bare LF", "4\nabcd\r\n0\r\n\r\n".to_string()),
            ("chunk longer than its size", "2\r\nabcd\r\n0\r\n\r\n".to_string()),
        ] {
            backend.clear();
            let bytes = format!("{}{next}", e.req("POST", "/broken", "Transfer-Encoding: chunked\r\n", &body));
            let got = h1_exchange(&e.client, &e.host, bytes.as_bytes(), 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            // The head may already be on its way when the body turns out broken (the gateway
            // streams); the app then sees it cut off, never a complete request, and nothing after.
            let seen = backend.requests();
            assert!(seen.iter().all(|r| !r.complete), "{name}: a complete request reached the app: {seen:#?}");
            assert!(seen.iter().all(|r| r.request_line() == "POST /broken HTTP/1.1"), "{name}: {seen:#?}");
            let statuses = got.statuses();
            assert!(
                statuses.is_empty() || (statuses.len() == 1 && [400, 502].contains(&statuses[0])),
                "{name}: {}",
                got.text()
            );
            assert!(got.closed, "{name}: the connection must be closed: {}", got.text());
            assert!(!backend.lines().iter().any(|l| l.contains("/next")), "{name}");
        }
    });
}

#[test]
fn pipelined_requests_are_forwarded_in_order_and_stop_at_the_first_bad_one() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("smuggling").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let backend = spawn_raw_backend(sb, sb.addr(), 3000);

    rt.block_on(async {
        let bytes = [
            e.get("/p1"),
            e.req("POST", "/p2", "Content-Length: 3\r\n", "abc"),
            e.req("POST", "/p3", "Transfer-Encoding: chunked\r\n", "4\r\nwxyz\r\n0\r\n\r\n"),
            e.get("/p4"),
        ]
        .concat();
        backend.clear();
        let got = h1_exchange(&e.client, &e.host, bytes.as_bytes(), 4).await;
        assert_eq!(got.statuses(), [200, 200, 200, 200], "{}", got.text());
        let bodies: Vec<String> = got.responses().iter().map(|r| r.text()).collect();
        assert_eq!(
            bodies,
            ["raw 0 GET /p1 HTTP/1.1", "raw 1 POST /p2 HTTP/1.1", "raw 2 POST /p3 HTTP/1.1", "raw 3 GET /p4 HTTP/1.1"],
            "answers in order, each to its own request"
        );
        let seen = backend.requests();
        let got: Vec<(&str, &[u8])> = seen.iter().map(|r| (r.request_line(), &r.body[..])).collect();
        assert_eq!(
            got,
            [
                ("GET /p1 HTTP/1.1", NO),
                ("POST /p2 HTTP/1.1", &b"abc"[..]),
                ("POST /p3 HTTP/1.1", b"wxyz"),
                ("GET /p4 HTTP/1.1", NO)
            ]
        );
        assert!(seen.iter().all(|r| r.complete));

        // A bad request in the middle: the ones before are answered, the bad one is refused,
        // the connection closed, nothing after it forwarded.
        let bytes =
            [e.get("/q1"), e.req("POST", "/q2", "Content-Length: 1\r\nContent-Length: 2\r\n", "ab"), e.get("/q3")]
                .concat();
        e.check(
            &backend,
            "bad in the middle",
            bytes.as_bytes(),
            Expect { statuses: &[200, 400], closed: Some(true), backend: vec![("GET /q1 HTTP/1.1", NO)] },
        )
        .await;
        // Each pipelined request is authenticated on its own.
        let bytes =
            [e.get("/r1"), format!("GET /port/3000/r2 HTTP/1.1\r\nHost: {}\r\n\r\n", e.host), e.get("/r3")].concat();
        e.check(
            &backend,
            "unauthenticated in the middle",
            bytes.as_bytes(),
            Expect {
                statuses: &[200, 401, 200],
                closed: Some(false),
                backend: vec![("GET /r1 HTTP/1.1", NO), ("GET /r3 HTTP/1.1", NO)],
            },
        )
        .await;
        // A body that holds a request is a body.
        let inner = format!("GET /port/3000/smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", e.host);
        let bytes = e.req("POST", "/outer", &format!("Content-Length: {}\r\n", inner.len()), &inner);
        backend.clear();
        let got = h1_exchange(&e.client, &e.host, bytes.as_bytes(), 1).await;
        assert_eq!(got.statuses(), [200], "{}", got.text());
        let seen = backend.requests();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!((seen[0].request_line(), &seen[0].body[..]), ("POST /outer HTTP/1.1", inner.as_bytes()));
    });
}

#[test]
fn bytes_after_an_upgrade_request_wait_for_the_apps_101() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("smuggling").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let backend = spawn_raw_backend(sb, sb.addr(), 3000);
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let smuggled = format!("GET /port/3000/smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", e.host);

    rt.block_on(async {
        // Accepted: the bytes written right behind the upgrade request reach the app only
        // after it answered 101, as tunnel data (it agreed to switch protocols), never as a
        // request the gateway parsed or forwarded before.
        backend.clear();
        let mut conn = RawH1::connect(&e.client, &e.host).await;
        conn.send(format!("{}{smuggled}", e.req("GET", "/ws", upgrade, "")).as_bytes()).await;
        conn.read(1, std::time::Duration::from_millis(800), std::time::Duration::from_secs(10)).await;
        let (responses, switched) = parse_responses(&conn.received);
        assert!(switched && responses.len() == 1 && responses[0].status == 101, "{}", conn.exchange().text());
        {
            let record = backend.record.lock().expect("record");
            assert!(record.early.is_empty(), "bytes reached the app before its 101: {:?}", record.early);
            let tunnel: Vec<u8> = record.tunnel.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(String::from_utf8_lossy(&tunnel), smuggled, "the tunnel carries the bytes after the 101");
        }
        assert_eq!(backend.lines(), ["GET /ws HTTP/1.1"]);
        // The echo comes back through the tunnel.
        let head_end = conn.received.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        assert_eq!(String::from_utf8_lossy(&conn.received[head_end..]), smuggled);

        // Refused by the app (403, no 101): the connection stays HTTP, the gateway parses what
        // follows as the next request and authenticates it; nothing is tunnelled.
        for (name, follow, statuses, lines) in [
            (
                "refused upgrade, unauthenticated follower",
                smuggled.clone(),
                &[403u16, 401][..],
                vec!["GET /refuse HTTP/1.1"],
            ),
            (
                "refused upgrade, authenticated follower",
                e.get("/after"),
                &[403, 200][..],
                vec!["GET /refuse HTTP/1.1", "GET /after HTTP/1.1"],
            ),
        ] {
            backend.clear();
            let bytes = format!("{}{follow}", e.req("GET", "/refuse", upgrade, ""));
            let got = h1_exchange(&e.client, &e.host, bytes.as_bytes(), statuses.len()).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(got.statuses(), statuses, "{name}: {}", got.text());
            assert_eq!(backend.lines(), lines, "{name}");
            let record = backend.record.lock().expect("record");
            assert!(record.tunnel.is_empty() && record.early.is_empty(), "{name}: nothing tunnelled");
            drop(record);
            assert_no_smuggled(&backend, name);
            let seen = backend.requests();
            if let Some(after) = seen.get(1) {
                // Forwarded by the gateway as a request of its own: its forwarding headers.
                assert_eq!(after.header("x-forwarded-proto"), ["https"], "{name}: {seen:#?}");
            }
        }

        // `Upgrade: h2c` is never honoured: a plain request, Upgrade and Connection removed.
        let bytes = format!(
            "{}{}",
            e.req(
                "GET",
                "/h2c",
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
                ""
            ),
            e.get("/next")
        );
        backend.clear();
        let got = h1_exchange(&e.client, &e.host, bytes.as_bytes(), 2).await;
        assert_eq!(got.statuses(), [200, 200], "{}", got.text());
        let seen = backend.requests();
        assert_eq!(seen.len(), 2, "{seen:#?}");
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert!(seen[0].header(gone).is_empty(), "{gone} forwarded: {seen:#?}");
        }
    });
}

#[test]
fn h2_requests_with_connection_specific_headers_are_reset_and_not_downgraded() {
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).token("smuggling").start();
    let (rt, sb) = (&e.rt, e.sb());
    let _rt = rt.enter();
    let backend = spawn_raw_backend(sb, sb.addr(), 3000);

    rt.block_on(async {
        let mut h2 = RawH2::connect(&e.client, &e.host).await;
        let mut stream = 1u32;
        let base = |path: &'static str| -> Vec<(&'static str, String)> {
            vec![
                (":method", "GET".to_string()),
                (":scheme", "https".to_string()),
                (":authority", e.host.clone()),
                (":path", format!("/port/3000{path}")),
                ("authorization", e.bearer.clone()),
            ]
        };
        let send = |fields: &[(&'static str, String)]| -> Vec<(String, String)> {
            fields.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
        };
        for (name, extra) in [
            ("connection", ("connection", "keep-alive")),
            ("connection: close", ("connection", "close")),
            ("te: gzip", ("te", "gzip")),
            ("te: trailers, gzip", ("te", "trailers, gzip")),
            ("transfer-encoding", ("transfer-encoding", "chunked")),
            ("keep-alive", ("keep-alive", "timeout=5")),
            ("upgrade", ("upgrade", "websocket")),
            ("proxy-connection", ("proxy-connection", "keep-alive")),
            ("CRLF in a value", ("x-a", "1\r\nx-injected: 1")),
            ("LF in a value", ("x-a", "1\nx-injected: 1")),
            ("NUL in a value", ("x-a", "1\0x")),
            ("space in a name", ("x a", "1")),
            ("colon in a name", ("x:a", "1")),
            ("upper case in a name", ("X-Upper", "1")),
            ("NUL in a name", ("x\0a", "1")),
        ] {
            backend.clear();
            let mut fields = base("/smuggled-h2");
            fields.push((extra.0, extra.1.to_string()));
            let owned = send(&fields);
            let refs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let outcome = h2.request(stream, &refs, None).await;
            stream += 2;
            // RST_STREAM PROTOCOL_ERROR (or the whole connection refused with GOAWAY).
            assert!(
                matches!(outcome, H2Outcome::Reset(1) | H2Outcome::GoAway(1)) || outcome.status() == Some(400),
                "{name}: {outcome:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(backend.requests().is_empty(), "{name}: forwarded: {:#?}", backend.requests());
            if matches!(outcome, H2Outcome::GoAway(_)) {
                h2 = RawH2::connect(&e.client, &e.host).await;
                stream = 1;
            }
            // The connection (or a new one) still serves the next request, alone.
            let owned = send(&base("/next"));
            let refs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let outcome = h2.request(stream, &refs, None).await;
            stream += 2;
            assert_eq!(outcome.status(), Some(200), "{name}: then {outcome:?}");
            assert_eq!(backend.lines(), ["GET /next HTTP/1.1"], "{name}");
            let all = String::from_utf8_lossy(&backend.all_bytes()).to_ascii_lowercase();
            assert!(!all.contains("x-injected") && !all.contains("smuggled"), "{name}: {all}");
        }

        // `te: trailers` is the one TE allowed on HTTP/2; forwarded without connection headers.
        backend.clear();
        let mut fields = base("/te-trailers");
        fields.push(("te", "trailers".to_string()));
        let owned = send(&fields);
        let refs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let outcome = h2.request(stream, &refs, None).await;
        stream += 2;
        assert_eq!(outcome.status(), Some(200), "{outcome:?}");
        let seen = backend.requests();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert!(seen[0].header("transfer-encoding").is_empty() && seen[0].header("upgrade").is_empty(), "{seen:#?}");

        // HTTP/2 body framing: DATA longer than content-length is a stream error; a request
        // text hidden in DATA is never a request of its own.
        let hidden = format!("GET /port/3000/smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", e.host);
        for (name, length) in [("content-length 0 with DATA", "0"), ("content-length shorter than DATA", "5")] {
            backend.clear();
            let mut fields = base("/h2-body");
            fields[0].1 = "POST".to_string();
            fields.push(("content-length", length.to_string()));
            let owned = send(&fields);
            let refs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let outcome = h2.request(stream, &refs, Some(hidden.as_bytes())).await;
            stream += 2;
            // The DATA frame travels after the HEADERS: a fast gateway may have forwarded the
            // head (with the declared length of body) and relayed the app's answer before the
            // excess arrives. Either way, what the app saw is checked below.
            assert!(
                matches!(outcome, H2Outcome::Reset(_) | H2Outcome::GoAway(_)) || outcome.status().is_some(),
                "{name}: {outcome:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert_no_smuggled(&backend, name);
            let seen = backend.requests();
            assert!(seen.len() <= 1, "{name}: {seen:#?}");
            // What reached the app (if the head went ahead) is at most the declared length.
            for r in &seen {
                assert_eq!(r.request_line(), "POST /h2-body HTTP/1.1", "{name}");
                assert!(r.body.len() <= length.parse::<usize>().unwrap_or(0), "{name}: {seen:#?}");
            }
            if matches!(outcome, H2Outcome::GoAway(_)) {
                h2 = RawH2::connect(&e.client, &e.host).await;
                stream = 1;
            }
        }
    });
}

/// A malicious app: reads one request head, answers `response` verbatim, closes.
fn spawn_canned(sb: &Sandbox, port: u16, response: &'static [u8]) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::net::SocketAddr::from((sb.addr(), port));
    let std_listener = sb.ns.run(|| std::net::TcpListener::bind(addr)).expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

/// The app is untrusted too: whatever framing it answers with, the client gets a well-framed
/// answer (the app's, re-framed, or 502) and the next request on the same client connection,
/// here to another sandbox, gets its own answer, never bytes the malicious app wrote.
#[test]
fn a_malicious_app_cannot_desync_the_client_connection() {
    let e = Env::new().sandbox("good", &[(3000, "HTTP")]).token("desync").start();
    let Env { gw, client: c, rt, bearer, .. } = &e;
    let good_sb = e.sb();
    let _rt = rt.enter();
    let evil_sb = Sandbox::new();
    let evil_ports: Vec<(u16, &str)> = (3001..=3010).map(|p| (p, "HTTP")).collect();
    register(gw, WS, "evil", &evil_sb, &evil_ports);
    let good = spawn_raw_backend(good_sb, good_sb.addr(), 3000);
    let cases: [(u16, &str, &'static [u8]); 10] = [
        (3001, "extra response after the answer", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3002, "CL and TE", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3003, "two different CL", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 90\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3004, "CL longer than the body", b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3005, "chunk-size overflow", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff1\r\nx\r\n0\r\n\r\n"),
        (3006, "101 to a plain request", b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3007, "header injection by obs-fold", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n x-injected: 1\r\n\r\nok"),
        (3008, "bare LF", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nokHTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-injected: 1\r\n\r\ninjected"),
        (3009, "no status line", b"x-injected: 1\r\n\r\ninjected"),
        (3010, "TE not chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\ninjected"),
    ];
    let _apps: Vec<_> = cases.iter().map(|(port, _, response)| spawn_canned(&evil_sb, *port, response)).collect();
    let evil_host = sandbox_host("evil");
    let good_host = sandbox_host("good");

    rt.block_on(async {
        for (port, name, _) in cases {
            good.clear();
            // One client connection (SNI any: both hosts allowed): the evil app, then the good one.
            let mut conn = RawH1::connect(c, "any.local.gw.test").await;
            let first = format!("GET /port/{port}/x HTTP/1.1\r\nHost: {evil_host}\r\nAuthorization: {bearer}\r\n\r\n");
            conn.send(first.as_bytes()).await;
            conn.read(1, std::time::Duration::from_millis(300), std::time::Duration::from_secs(10)).await;
            let answered = conn.exchange();
            let responses = answered.responses();
            match responses.len() {
                // An answer the gateway framed itself (the app's, re-framed, or 502).
                1 => {
                    let status = responses[0].status;
                    assert!(status == 200 || status == 502, "{name}: {}", answered.text());
                    assert!(responses[0].header("x-injected").is_empty(), "{name}: injected header reached the client");
                    assert!(!responses[0].text().contains("x-injected"), "{name}: {}", answered.text());
                    if port == 3001 {
                        assert_eq!(
                            (status, responses[0].text().as_str()),
                            (200, "ok"),
                            "{name}: the app's answer only"
                        );
                    }
                    if port == 3006 {
                        assert_eq!(status, 502, "{name}: an unasked 101 is the app's error");
                    }
                }
                // The app's body ended early: the client sees it cut off, and the connection closed, so
                // nothing in it can be read as a response of its own.
                0 => {
                    assert!(answered.closed, "{name}: a cut-off answer on a connection left open:\n{}", answered.text())
                }
                _ => panic!("{name}: more answers than requests:\n{}", answered.text()),
            }
            if answered.closed {
                conn = RawH1::connect(c, "any.local.gw.test").await;
            }
            let before = conn.received.len();
            let second =
                format!("GET /port/3000/after HTTP/1.1\r\nHost: {good_host}\r\nAuthorization: {bearer}\r\n\r\n");
            conn.send(second.as_bytes()).await;
            conn.read(1, std::time::Duration::from_millis(300), std::time::Duration::from_secs(10)).await;
            let (next, _) = parse_responses(&conn.received[before..]);
            assert_eq!(next.len(), 1, "{name}: {}", String::from_utf8_lossy(&conn.received[before..]));
            assert_eq!(next[0].status, 200, "{name}");
            assert_eq!(next[0].text(), "raw 0 GET /after HTTP/1.1", "{name}: the good app's own answer");
            assert!(
                !String::from_utf8_lossy(&conn.received[before..]).contains("injected"),
                "{name}: injected bytes reached the next answer"
            );
            assert_eq!(good.lines(), ["GET /after HTTP/1.1"], "{name}");
        }
    });
}
