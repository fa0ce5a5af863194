//! Active health checks: every `capacity.health_interval_ms`, a `GET` of
//! each target's `health_url` (2xx within `health_timeout_ms` passes);
//! `health_unhealthy_after` failures in a row mark it down,
//! `health_healthy_after` passes bring it back.

use super::Registry;
use crate::tls::Clients;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// Runs the checks until `shutdown`, each with its target's client
/// (`clients`: the delivery clients, so the same TLS settings).
pub async fn run(
    registry: Arc<Registry>,
    clients: Arc<ArcSwap<Clients>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let cfg = registry.config();
        let timeout = Duration::from_millis(cfg.health_timeout_ms);
        let checks: Vec<(String, String)> = registry
            .targets
            .load()
            .iter()
            .filter_map(|t| {
                t.config
                    .health_url
                    .clone()
                    .map(|u| (t.config.id.clone(), u))
            })
            .collect();
        let runs = checks.into_iter().map(|(id, url)| {
            let clients = clients.load_full();
            async move {
                let shown = crate::redact::url(&url);
                let sent = clients.client(&id).get(&url).timeout(timeout).send().await;
                let r = match sent {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("GET {shown} answered {}", resp.status())),
                    Err(e) if e.is_timeout() => {
                        Err(format!("GET {shown} timed out after {timeout:?}"))
                    }
                    Err(e) => {
                        let cause = match crate::tls::handshake_failure(&e) {
                            Some(c) => Some(c),
                            None => clients.diagnose(&id, &url).await,
                        };
                        Err(match cause {
                            Some(c) => format!("GET {shown}: TLS handshake failed: {c}"),
                            None => format!(
                                "GET {shown} failed: {}",
                                crate::redact::error_chain(&e.without_url())
                            ),
                        })
                    }
                };
                (id, r)
            }
        });
        for (id, r) in futures::future::join_all(runs).await {
            registry.health_result(&id, r);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.health_interval_ms)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
