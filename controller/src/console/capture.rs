//! Always-on console capture: the controller keeps a Serial-over-LAN session open to every
//! server whose BMC address it was given (an enrolment), so the bounded console log (`molar console SERVER --log`)
//! holds what scrolled by while no one watched. A session that ends (BMC reset, a BMC
//! without SOL, another tool taking the console) is opened again at the next pass; a BMC
//! that keeps refusing is asked less often, up to [`BACKOFF_MAX`]. An enrolment or new
//! in-band credentials wake it at once ([`ConsoleService::wake_capture`]).

use super::ConsoleService;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait between attempts for a BMC whose console keeps ending.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// What the supervisor remembers of one server.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    failures: u32,
    next: Instant,
}

/// Runs until `shutdown`: every `interval`, starts capture for each server with a BMC
/// address whose console is not active and whose backoff has passed.
pub async fn run(
    consoles: Arc<ConsoleService>,
    store: Arc<Store>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut attempts: HashMap<String, Attempt> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            // A new or changed BMC entry: its backoff starts over.
            _ = consoles.capture_woken() => attempts.clear(),
        }
        // Only BMCs at an address the controller was given and reached (an enrolment):
        // the IP a BMC reports in-band is often on a network the controller cannot reach,
        // and a capture must not knock on it every pass.
        let servers = match store.servers_with_bmc_host().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "console capture: listing BMCs");
                continue;
            }
        };
        let now = Instant::now();
        attempts.retain(|id, _| servers.contains(id));
        for id in servers {
            if consoles.is_active(&id) {
                // Up since the last pass: whatever failed before works now.
                if let Some(a) = attempts.get_mut(&id) {
                    a.failures = 0;
                }
                continue;
            }
            let a = attempts.entry(id.clone()).or_insert(Attempt {
                failures: 0,
                next: now,
            });
            if a.next > now {
                continue;
            }
            // Not active at this pass although started at an earlier one: it ended.
            let wait = interval
                .saturating_mul(1u32 << a.failures.min(10))
                .min(BACKOFF_MAX);
            a.failures = a.failures.saturating_add(1);
            a.next = now + wait;
            tracing::debug!(server = %id, failures = a.failures, "console capture: opening the console");
            consoles.keep(&id, true);
        }
    }
}
