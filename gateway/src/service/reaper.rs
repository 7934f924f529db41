//! The background reaper: deletes expired previews (their tokens with them) and so closes the
//! kernel ports they held. It sleeps until the next expiry (at most [`MAX_SLEEP`]) and wakes
//! early when previews change. Expired previews stop answering at once anyway (every lookup
//! checks the expiry); the reaper makes the state and the kernel follow.

use super::App;
use crate::model::time;
use std::{sync::Arc, time::Duration};

/// Longest sleep between two passes.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Runs until `shutdown` resolves.
pub async fn run(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        // Registered before reading the next expiry, so a change in between is not missed.
        let changed = app.previews_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let sleep = app.next_preview_expiry().map_or(MAX_SLEEP, |t| time::until(t, time::now()).min(MAX_SLEEP));
        tokio::select! {
            () = &mut shutdown => return,
            () = &mut changed => continue,
            () = tokio::time::sleep(sleep) => {}
        }
        let reaped = app.reap_expired_previews().await;
        if reaped > 0 {
            tracing::debug!(reaped, "reaper pass");
        }
        // A failed deletion is retried, but not in a tight loop.
        if app.next_preview_expiry().is_some_and(|t| t <= time::now()) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        dataplane::Dataplane,
        service::{SandboxSpec, previews::spec::PreviewSpec},
        state::MemoryStore,
    };

    #[tokio::test]
    async fn reaps_at_the_expiry() {
        let app = Arc::new(
            App::start(Config::default(), Arc::new(MemoryStore::new()), Dataplane::disabled()).await.expect("start"),
        );
        let spec = SandboxSpec { address: "198.18.0.2".parse().expect("addr"), interface: "lo".into(), ports: vec![] };
        app.put_sandbox("ws", "app", spec).await.expect("sandbox");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(app.clone(), async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = time::add(time::now(), Duration::from_millis(700));
        let spec =
            PreviewSpec { port: Some(4000), expires_at: Some(time::format_timestamp(at)), ..PreviewSpec::default() };
        app.put_preview("ws", "app", "p", &spec).await.expect("preview");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while app.next_preview_expiry().is_some() {
            assert!(std::time::Instant::now() < deadline, "not reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(time::now() >= at);
        let _ = stop.send(());
        task.await.expect("reaper stops");
    }
}
