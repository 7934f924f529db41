//! The background reaper: deletes expired previews (their tokens with them) and so closes the
//! kernel ports they held. It sleeps until the next expiry (at most [`MAX_SLEEP`]) and wakes
//! early when previews change. Expired previews stop answering at once anyway (every lookup
//! checks the expiry); the reaper makes the state and the kernel follow.

use super::time;
use crate::app::App;
use std::{sync::Arc, time::Duration};

/// Longest sleep between two passes.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Runs until `shutdown` resolves.
pub async fn run(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        // Registered before reading the next expiry, so a change in between is not missed.
        let changed = app.previews_changed.notified();
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
