//! Many idle HTTPS connections for `gateway-bench-http --idle`: what a proxy's memory is while
//! it holds them.
//!
//! Each connection: TCP, a TLS 1.3 handshake (ALPN http/1.1, the bench's certificate accepted as
//! in [`crate::openloop`]), one `GET` answered 2xx and read to its end, then nothing: the
//! connection stays open in keep-alive, as a browser tab's would between requests. A bounded
//! number are being opened at any time, so no listen backlog overflows and no contender sees a
//! burst of SYNs the others did not.

use crate::openloop::{Target, request, tls_config};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

type Sender = hyper::client::conn::http1::SendRequest<crate::edge::TestBody>;

/// Connections being opened at once.
const OPENING: usize = 200;

/// Open connections, closed on drop.
pub struct Held {
    /// Their runtime: its tasks drive the connections, dropping it closes them all.
    _runtime: tokio::runtime::Runtime,
    senders: Vec<Sender>,
    /// Connections that could not be opened or whose request failed.
    pub failed: usize,
    /// How long opening them all took.
    pub opening: Duration,
}

impl Held {
    /// Connections opened and answered.
    pub fn opened(&self) -> usize {
        self.senders.len()
    }

    /// Connections still open now (the server may have closed some since).
    pub fn still_open(&self) -> usize {
        self.senders.iter().filter(|s| !s.is_closed()).count()
    }
}

async fn open_one(config: Arc<rustls::ClientConfig>, target: Arc<Target>) -> Option<Sender> {
    let tcp = tokio::net::TcpStream::connect(target.addr).await.ok()?;
    let name = ServerName::try_from(target.host.clone()).ok()?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tls)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request(&target)).await.ok()?;
    let ok = response.status().is_success();
    (response.into_body().collect().await.is_ok() && ok).then_some(sender)
}

/// Opens `n` connections to `target` and returns them open.
pub fn open(target: &Target, n: usize) -> Held {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let config = tls_config();
    let target = Arc::new(target.clone());
    let started = Instant::now();
    let results = runtime.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(OPENING));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let (config, target) = (config.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let sender = open_one(config, target).await;
                drop(permit);
                sender
            }));
        }
        let mut results = Vec::with_capacity(n);
        for t in tasks {
            results.push(t.await.ok().flatten());
        }
        results
    });
    let opening = started.elapsed();
    let failed = results.iter().filter(|r| r.is_none()).count();
    Held { _runtime: runtime, senders: results.into_iter().flatten().collect(), failed, opening }
}
