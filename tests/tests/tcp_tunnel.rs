//! The authenticated TCP tunnel end to end: `connect-tcp` over HTTP/1.1 (`Upgrade`) and HTTP/2
//! (extended CONNECT) through the real HTTPS edge to apps in a sandbox's network namespace, with
//! the data plane enforcing (the gateway's connection to the port is admitted by its mark), and
//! `gateway tunnel` carrying `psql` to a real PostgreSQL in the sandbox.
//!
//! Run (root): `cargo build -p gateway && cargo test -p gateway-tests --test tcp_tunnel -- --test-threads=1`.

use gateway_tests::{
    edge::{Reply, TestBody, WS, build, build_h2, create_token, empty, read_reply},
    env::Env,
    gateway_process::{free_port, gateway_command, temp_dir},
    harness::Sandbox,
    tcp_apps::{GREETING, TcpApp, hex, pattern, sink},
};
use http::Method;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Asks for a tunnel to `port` over a new HTTP/1.1 connection: the upgraded stream, or the
/// refusal.
async fn tunnel_h1(e: &Env, path: &str, authorization: Option<&str>) -> Result<Upgraded, Reply> {
    let mut conn = e.client.h1(&e.host).await;
    let mut headers = vec![("connection", "Upgrade"), ("upgrade", "connect-tcp")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    let mut response = conn.send_request(build(Method::GET, &e.host, path, &headers, empty())).await.expect("send");
    if response.status() != 101 {
        return Err(read_reply(response).await);
    }
    assert_eq!(response.headers()["upgrade"], "connect-tcp");
    Ok(hyper::upgrade::on(&mut response).await.expect("upgraded"))
}

/// Asks for a tunnel over HTTP/2 extended CONNECT (`:protocol = connect-tcp`).
async fn tunnel_h2(e: &Env, path: &str, authorization: &str) -> Result<Upgraded, Reply> {
    let mut h2 = e.client.h2(&e.host).await;
    let mut req: http::Request<TestBody> =
        build_h2(Method::CONNECT, &e.host, path, &[("authorization", authorization)], empty());
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("connect-tcp"));
    let mut response = h2.send_request(req).await.expect("extended CONNECT");
    if response.status() != 200 {
        return Err(read_reply(response).await);
    }
    Ok(hyper::upgrade::on(&mut response).await.expect("upgraded h2 stream"))
}

/// Through the sink app: reads the greeting, sends `data`, half-closes, and checks the app's
/// count and digest of what arrived, then the end of the stream.
async fn exchange_through(tunnel: Upgraded, data: &[u8]) {
    let mut io = tokio::io::BufReader::new(TokioIo::new(tunnel));
    let mut line = String::new();
    io.read_line(&mut line).await.expect("the greeting");
    assert_eq!(line, GREETING, "the app spoke first, before the client sent anything");
    io.get_mut().write_all(data).await.expect("send through the tunnel");
    io.get_mut().shutdown().await.expect("half-close");
    line.clear();
    tokio::time::timeout(Duration::from_secs(30), io.read_line(&mut line))
        .await
        .expect("the app's answer after the half-close")
        .expect("read the answer");
    let expected = format!("{} {}\n", data.len(), hex(&Sha256::digest(data)));
    assert_eq!(line, expected, "every byte arrived, in order, and the app could still answer after SHUT_WR");
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.expect("the end of the tunnel");
    assert!(rest.is_empty(), "nothing after the answer: {rest:?}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{text}"))
}

#[test]
fn connect_tcp_carries_raw_bytes_with_the_workspace_token() {
    let e = Env::new()
        .sandbox("db", &[(5432, "TCP"), (5433, "TCP"), (6443, "TLS"), (3000, "HTTP")])
        .token("tunnel")
        .start();
    let _rt = e.rt.enter();
    let _app = TcpApp::spawn(e.sb(), 5432, sink);
    let _tls_app = TcpApp::spawn(e.sb(), 6443, sink);
    let bearer = e.bearer.clone();
    e.rt.block_on(async {
        // HTTP/1.1 upgrade: 8 MiB up, the app's answer after the client's half-close.
        let tunnel = tunnel_h1(&e, "/port/5432", Some(&bearer)).await.unwrap_or_else(|r| panic!("{}", r.text()));
        exchange_through(tunnel, &pattern(8 << 20)).await;
        // HTTP/2 extended CONNECT, to the TLS port (opaque bytes as well).
        let tunnel = tunnel_h2(&e, "/port/6443", &bearer).await.unwrap_or_else(|r| panic!("{}", r.text()));
        exchange_through(tunnel, &pattern(1 << 20)).await;
        // Several tunnels at once.
        let many = (0..8).map(|i| {
            let (e, bearer) = (&e, &bearer);
            async move {
                let tunnel = tunnel_h1(e, "/port/5432", Some(bearer)).await.unwrap_or_else(|r| panic!("{}", r.text()));
                exchange_through(tunnel, &pattern(100_000 + i)).await;
            }
        });
        futures_util::future::join_all(many).await;

        // Refusals, each the edge's usual error.
        let refused = |r: Result<Upgraded, Reply>| r.expect_err("refused");
        refused(tunnel_h1(&e, "/port/5432", None).await).assert_error(401, "AUTHENTICATION_REQUIRED");
        refused(tunnel_h1(&e, "/port/5432", Some("Bearer gw_wrong")).await).assert_error(401, "AUTHENTICATION_FAILED");
        let message = refused(tunnel_h1(&e, "/port/7000", Some(&bearer)).await).assert_error(404, "ROUTE_NOT_FOUND");
        assert!(message.contains("5432"), "{message}");
        refused(tunnel_h1(&e, "/port/443", Some(&bearer)).await).assert_error(403, "FORBIDDEN");
        let message = refused(tunnel_h1(&e, "/", Some(&bearer)).await).assert_error(400, "BAD_REQUEST");
        assert!(message.contains("/port/{N}"), "{message}");
        let message = refused(tunnel_h1(&e, "/port/5432/x", Some(&bearer)).await).assert_error(400, "BAD_REQUEST");
        assert!(message.contains("/port/5432 itself"), "{message}");
        // Nothing listens on 5433: an HTTP answer the client can read, not a tunnel that closes.
        let message = refused(tunnel_h1(&e, "/port/5433", Some(&bearer)).await).assert_error(502, "BAD_GATEWAY");
        assert!(message.contains("refused"), "{message}");
        // A TLS port carries no plain HTTP request.
        let r = e.client.get(&e.host, "/port/6443/", &[("authorization", &bearer)]).await;
        let message = r.assert_error(400, "BAD_REQUEST");
        assert!(message.contains("connect-tcp"), "{message}");
        // Another workspace's token opens nothing here.
        let other = format!("Bearer {}", create_token(&e.gw, "other", "elsewhere"));
        refused(tunnel_h1(&e, "/port/5432", Some(&other)).await).assert_error(403, "FORBIDDEN");
    });

    // A revoked token opens no new tunnel.
    let revoked = format!("Bearer {}", create_token(&e.gw, WS, "soon-revoked"));
    e.rt.block_on(async {
        let tunnel = tunnel_h1(&e, "/port/5432", Some(&revoked)).await.unwrap_or_else(|r| panic!("{}", r.text()));
        exchange_through(tunnel, b"before the revocation").await;
    });
    assert_eq!(e.gw.client().delete(&format!("/v1/workspaces/{WS}/tokens/soon-revoked")).status, 204);
    e.rt.block_on(async {
        let r = tunnel_h1(&e, "/port/5432", Some(&revoked)).await.expect_err("refused after the revocation");
        r.assert_error(401, "AUTHENTICATION_FAILED");
    });

    let text = e.gw.anonymous_client().get("/metrics").text();
    assert!(metric(&text, "gateway_tcp_tunnels_total ") >= 11.0, "{text}");
    assert!(metric(&text, "gateway_tcp_tunnel_bytes_total{direction=\"up\"} ") >= (9 << 20) as f64, "{text}");
    assert_eq!(metric(&text, "gateway_tcp_tunnels_open "), 0.0, "{text}");
}

/// A PostgreSQL server run as the `postgres` user in the sandbox's namespace, its data in a
/// temporary directory; stopped (fast shutdown) on drop.
struct Postgres {
    child: Child,
    _dir: gateway_tests::gateway_process::TempDir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    fn start(sb: &Sandbox, port: u16) -> Postgres {
        let dir = temp_dir("gw-pg");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
        assert!(status.success());
        let as_postgres = |program: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(format!("{PG_BIN}/{program}"));
            c
        };
        let out = as_postgres("initdb")
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // The gateway connects from the host side of the sandbox's link.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).expect("write pg_hba.conf");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", sb.ns.name(), "runuser", "-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", &format!("listen_addresses={}", sb.addr()), "-p", &port.to_string()])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start postgres");
        let pg = Postgres { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("ip")
                .args(["netns", "exec", sb.ns.name(), &format!("{PG_BIN}/pg_isready"), "-q", "-h"])
                .arg(sb.addr().to_string())
                .args(["-p", &port.to_string()])
                .status()
                .expect("pg_isready");
            if ready.success() {
                return pg;
            }
            assert!(Instant::now() < deadline, "postgres did not become ready within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (the children exit with the postmaster).
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gateway tunnel` running, its stderr read until the "Forwarding" line.
struct TunnelCli {
    child: Child,
}

impl TunnelCli {
    fn start(args: &[&str], token: &str) -> Result<TunnelCli, String> {
        let mut child = gateway_command()
            .arg("tunnel")
            .args(args)
            .env("GATEWAY_TOKEN", token)
            .env_remove("SSL_CERT_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gateway tunnel");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        while let Some(Ok(line)) = lines.next() {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("Forwarding ") {
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(TunnelCli { child });
            }
        }
        let _ = child.wait();
        Err(seen)
    }
}

impl Drop for TunnelCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gateway_tunnel_carries_psql_to_postgres_in_a_sandbox() {
    let e = Env::new().sandbox("pg", &[(5432, "TCP")]).token("psql").start();
    let _pg = Postgres::start(e.sb(), 5432);
    let config = e.gw.config_path().to_str().expect("utf-8").to_string();
    let target = format!("{WS}/pg");
    let port = free_port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port)).to_string();

    // A wrong token stops the command at once with the gateway's answer.
    let refused = TunnelCli::start(&[&target, "5432", "--listen", &listen, "--config", &config], "gw_wrong")
        .err()
        .expect("a wrong token is refused at start");
    assert!(refused.contains("HTTP 401 AUTHENTICATION_FAILED"), "{refused}");
    // So does an undeclared port.
    let refused = TunnelCli::start(&[&target, "6379", "--listen", &listen, "--config", &config], e.token())
        .err()
        .expect("an undeclared port is refused at start");
    assert!(refused.contains("HTTP 404 ROUTE_NOT_FOUND"), "{refused}");

    let _tunnel = TunnelCli::start(&[&target, "5432", "--listen", &listen, "--config", &config], e.token())
        .unwrap_or_else(|stderr| panic!("gateway tunnel did not start:\n{stderr}"));
    let psql = |sql: &str| {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-tA", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("run psql")
    };
    let out = psql("select 'tunnelled ' || 41 + 1");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tunnelled 42");
    // A larger result, and two clients at once.
    let both = std::thread::scope(|s| {
        let a = s.spawn(|| psql("select count(*), sum(length(md5(i::text))) from generate_series(1, 200000) i"));
        let b = s.spawn(|| psql("select string_agg(md5(i::text), '') from generate_series(1, 20000) i"));
        (a.join().expect("psql a"), b.join().expect("psql b"))
    });
    assert_eq!(String::from_utf8_lossy(&both.0.stdout).trim(), "200000|6400000");
    assert_eq!(both.1.stdout.len(), 20000 * 32 + 1, "{}", String::from_utf8_lossy(&both.1.stderr));
}
