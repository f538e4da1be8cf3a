//! The controller's metrics in the Prometheus text exposition format (OpenMetrics 1.0, as
//! `prometheus-client` writes it), served at `/metrics`: on the API listener behind the admin
//! token, and, when `--metrics-listen` is given, on a plain-HTTP listener of its own without
//! one (for a scraper on a management network).
//!
//! Events are counted where they happen through the process-wide [`get`]; state (agents
//! connected, servers by lifecycle state, tasks by method and state) is read at scrape time
//! by [`render`], so it is never out of step with the store. One controller runs per
//! process; in-process tests that start several share the counters and look at deltas.

use crate::fleet::Fleet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::OnceLock;
use std::time::Duration;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `accepted` or `refused`.
    pub result: String,
    /// The refusal's protocol code (`unauthorized`, `session_conflict`, ...), `timeout`,
    /// `malformed`; empty when accepted.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The route's pattern (`/api/v1/servers/{id}`), never the concrete path: a label per
    /// server id would grow without bound.
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub method: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `read` or `write`: which of the store's connections ran the query.
    pub connection: String,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub agents_connected: Gauge,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub servers: Family<StateLabels, Gauge>,
    pub tasks: Family<TaskLabels, Gauge>,
    pub task_duration: Family<TaskLabels, Histogram>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub api_duration: Family<RouteLabels, Histogram>,
    pub store_duration: Family<StoreLabels, Histogram>,
    pub log_records_dropped: Counter,
    pub log_records_stored: Counter,
    pub scrape_errors: Counter,
    /// Periodic BMC session checks ([`crate::bmc`]) by result.
    pub bmc_checks: Family<ResultLabels, Counter>,
    /// BMCs whose last session check failed (read at scrape time).
    pub bmcs_failing: Gauge,
}

fn seconds_histogram(start: f64, factor: f64, n: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, factor, n))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("molar");
        let m = Metrics {
            agents_connected: Gauge::default(),
            handshakes: Family::default(),
            servers: Family::default(),
            tasks: Family::default(),
            // 1 s .. ~36 h: a ping to a multi-pass erase of a large disk.
            task_duration: Family::new_with_constructor(|| seconds_histogram(1.0, 2.0, 18)),
            // 0.5 ms .. ~16 s.
            api_duration: Family::new_with_constructor(|| seconds_histogram(0.0005, 2.0, 16)),
            // 50 µs .. ~1.6 s.
            store_duration: Family::new_with_constructor(|| seconds_histogram(0.00005, 2.0, 16)),
            api_requests: Family::default(),
            log_records_dropped: Counter::default(),
            log_records_stored: Counter::default(),
            scrape_errors: Counter::default(),
            bmc_checks: Family::default(),
            bmcs_failing: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "agents_connected",
            "Agent connections with a completed handshake",
            m.agents_connected.clone(),
        );
        registry.register(
            "handshakes",
            "Agent handshakes by result and refusal reason",
            m.handshakes.clone(),
        );
        registry.register("servers", "Servers by lifecycle state", m.servers.clone());
        registry.register("tasks", "Stored tasks by method and state", m.tasks.clone());
        registry.register_with_unit(
            "task_duration",
            "Time from a task's start to its terminal status, by method and final state",
            Unit::Seconds,
            m.task_duration.clone(),
        );
        registry.register(
            "api_requests",
            "API requests by route pattern, method and HTTP status",
            m.api_requests.clone(),
        );
        registry.register_with_unit(
            "api_request_duration",
            "API request latency by route pattern (until the response head; streams excluded)",
            Unit::Seconds,
            m.api_duration.clone(),
        );
        registry.register_with_unit(
            "store_query_duration",
            "Store query latency including the wait for the connection's thread",
            Unit::Seconds,
            m.store_duration.clone(),
        );
        registry.register(
            "log_records_dropped",
            "Log records agents reported dropping before they reached the controller",
            m.log_records_dropped.clone(),
        );
        registry.register(
            "log_records_stored",
            "Log records received from agents and stored",
            m.log_records_stored.clone(),
        );
        registry.register(
            "scrape_errors",
            "Scrapes whose store counts could not be read",
            m.scrape_errors.clone(),
        );
        registry.register(
            "bmc_checks",
            "Periodic BMC session checks with the stored credentials, by result",
            m.bmc_checks.clone(),
        );
        registry.register(
            "bmcs_failing",
            "BMCs whose last session check with the stored credentials failed",
            m.bmcs_failing.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a handshake outcome.
    pub fn handshake(&self, result: &str, reason: &str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: result.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records a finished API request.
    pub fn api_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.api_requests
            .get_or_create(&ApiLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a task's terminal status.
    pub fn task_finished(&self, method: &str, state: &str, took: Duration) {
        self.task_duration
            .get_or_create(&TaskLabels {
                method: method.to_owned(),
                state: state.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a periodic BMC session check.
    pub fn bmc_check(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.bmc_checks
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records one store query's latency.
    pub fn store_query(&self, write: bool, took: Duration) {
        let connection = if write { "write" } else { "read" };
        self.store_duration
            .get_or_create(&StoreLabels {
                connection: connection.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The exposition text, with the state gauges read from `fleet` and its store now.
pub async fn render(fleet: &Fleet) -> String {
    let m = get();
    m.agents_connected.set(fleet.connected_count() as i64);
    match fleet.store.stats().await {
        Ok((servers, tasks)) => {
            m.servers.clear();
            for c in servers {
                let state = c.labels.into_iter().next().unwrap_or_default();
                m.servers
                    .get_or_create(&StateLabels { state })
                    .set(c.count.min(i64::MAX as u64) as i64);
            }
            m.tasks.clear();
            for c in tasks {
                let mut l = c.labels.into_iter();
                let labels = TaskLabels {
                    method: l.next().unwrap_or_default(),
                    state: l.next().unwrap_or_default(),
                };
                m.tasks
                    .get_or_create(&labels)
                    .set(c.count.min(i64::MAX as u64) as i64);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: reading the store's counts");
            m.scrape_errors.inc();
        }
    }
    match fleet.store.bmcs_failing().await {
        Ok(n) => {
            m.bmcs_failing.set(n);
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: counting failing BMCs");
            m.scrape_errors.inc();
        }
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "metrics: encoding");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_labels_are_escaped() {
        let m = Metrics::new();
        m.handshake("refused", "unauthorized");
        m.api_request("/api/v1/servers/{id}", "GET", 404, Duration::from_millis(3));
        m.task_finished("decom.disk_erase", "complete", Duration::from_secs(90));
        m.store_query(true, Duration::from_micros(200));
        m.bmc_check(false);
        m.bmcs_failing.set(1);
        m.servers
            .get_or_create(&StateLabels {
                state: "we\"ird\nstate".into(),
            })
            .set(2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for line in [
            "# TYPE molar_handshakes counter",
            "molar_handshakes_total{result=\"refused\",reason=\"unauthorized\"} 1",
            "# TYPE molar_task_duration_seconds histogram",
            "# UNIT molar_task_duration_seconds seconds",
            "molar_task_duration_seconds_count{method=\"decom.disk_erase\",state=\"complete\"} 1",
            "molar_api_requests_total{route=\"/api/v1/servers/{id}\",method=\"GET\",status=\"404\"} 1",
            "molar_store_query_duration_seconds_count{connection=\"write\"} 1",
            "molar_servers{state=\"we\\\"ird\\nstate\"} 2",
            "molar_bmc_checks_total{result=\"failed\"} 1",
            "molar_bmcs_failing 1",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert!(out.ends_with("# EOF\n"));
    }
}
