//! Waiting for the signals that stop long-running commands (SIGINT, i.e. Ctrl-C, and SIGTERM),
//! and for SIGHUP, which asks `relay up` to read its certificate again.

pub(crate) async fn stop_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this command");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Calls `reload` on every SIGHUP, for as long as the process runs.
pub(crate) async fn on_hangup(reload: impl Fn()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                while hangup.recv().await.is_some() {
                    reload();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; restart to reload the certificate")
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}
