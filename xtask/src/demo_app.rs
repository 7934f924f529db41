//! The demo sandbox's processes (`cargo xtask demo-app`, run inside the demo's network
//! namespace): a small web app with a WebSocket echo, and a stand-in for the sandbox API.
//!
//! - web app (`--web`, port 3000): `GET /` → a text page naming the port, path and Host it saw;
//!   `GET /ws` with `Upgrade: websocket` → sends `welcome to the demo app`, then echoes every
//!   message.
//! - sandbox API stand-in (`--api`, port 8080): every request → JSON
//!   `{"service":"sandbox-api","method","path"}`.
//! - a raw TCP line service (`--tcp`, port 7000): greets first (a server-first protocol), then
//!   answers each line with `you said: {line}`.
//!
//! Thread per connection, std only (plus tungstenite for the WebSocket framing).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use anyhow::{Context, Result};

/// Serves all three until killed.
pub fn run(web: SocketAddr, api: SocketAddr, tcp: SocketAddr) -> Result<()> {
    let web_listener = TcpListener::bind(web).with_context(|| format!("cannot listen on {web}"))?;
    let api_listener = TcpListener::bind(api).with_context(|| format!("cannot listen on {api}"))?;
    let tcp_listener = TcpListener::bind(tcp).with_context(|| format!("cannot listen on {tcp}"))?;
    eprintln!("demo-app: web app on {web} (WebSocket echo on /ws), sandbox API stand-in on {api}, TCP lines on {tcp}");
    let tcp_port = tcp.port();
    thread::spawn(move || serve(tcp_listener, move |s| tcp_conn(s, tcp_port)));
    let api_port = api.port();
    thread::spawn(move || serve(api_listener, move |s| api_conn(s, api_port)));
    let web_port = web.port();
    serve(web_listener, move |s| web_conn(s, web_port));
    Ok(())
}

fn serve(listener: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + Copy + 'static) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || handle(stream));
    }
}

/// The request line and headers (lower-case names).
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Peeks at the request head without consuming it (the WebSocket handshake reads it again).
fn peek_head(stream: &TcpStream) -> Option<Head> {
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..100 {
        let n = stream.peek(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return parse_head(&buf[..end]);
        }
        if n == buf.len() {
            return None;
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head { method, path, headers })
}

/// Reads one request head (and discards a body of `Content-Length` bytes).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        raw.extend_from_slice(&line);
    }
    let head = parse_head(raw.strip_suffix(b"\r\n").unwrap_or(&raw))?;
    let len: u64 = head.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    std::io::copy(&mut reader.by_ref().take(len), &mut std::io::sink()).ok()?;
    Some(head)
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn web_conn(stream: TcpStream, port: u16) {
    let upgrade =
        peek_head(&stream).is_some_and(|h| h.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    if upgrade {
        websocket(stream);
        return;
    }
    let Ok(write) = stream.try_clone() else { return };
    let mut write = write;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_request(&mut reader) {
        let body = format!(
            "hello from the demo app on port {port}\nmethod: {}\npath: {}\nhost: {}\n",
            head.method,
            head.path,
            head.header("host").unwrap_or("-"),
        );
        if respond(&mut write, "200 OK", "text/plain; charset=utf-8", &body).is_err() {
            return;
        }
    }
}

/// The greeting, then `you said: {line}` for every line, until the client closes.
fn tcp_conn(stream: TcpStream, port: u16) {
    let Ok(mut write) = stream.try_clone() else { return };
    if writeln!(write, "demo app, raw TCP on port {port}: send a line").is_err() {
        return;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writeln!(write, "you said: {line}").is_err() {
            return;
        }
    }
}

fn websocket(stream: TcpStream) {
    let Ok(mut ws) = tungstenite::accept(stream) else { return };
    if ws.send(tungstenite::Message::text("welcome to the demo app")).is_err() {
        return;
    }
    while let Ok(message) = ws.read() {
        let echo = matches!(message, tungstenite::Message::Text(_) | tungstenite::Message::Binary(_));
        if matches!(message, tungstenite::Message::Close(_)) || (echo && ws.send(message).is_err()) {
            return;
        }
    }
}

fn api_conn(stream: TcpStream, port: u16) {
    let Ok(write) = stream.try_clone() else { return };
    let mut write = write;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_request(&mut reader) {
        let body = serde_json::json!({
            "service": "sandbox-api",
            "port": port,
            "method": head.method,
            "path": head.path,
        })
        .to_string();
        if respond(&mut write, "200 OK", "application/json", &body).is_err() {
            return;
        }
    }
}
