//! Forwarding the agent's own tracing records to the controller as `log` commands.
//!
//! A tracing [`Layer`] copies each record into a bounded buffer; while connected, a pump sends
//! them in batches. While disconnected the buffer keeps the newest records and drops the oldest,
//! counting what it dropped so the controller learns about the gap.

use molar_protocol::PeerHandle;
use molar_protocol::methods::{LogParams, LogRecord};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Records kept while disconnected.
pub const DEFAULT_CAPACITY: usize = 2000;
/// Records per `log` command.
const BATCH: usize = 200;

/// The bounded buffer between the tracing layer and the connection.
pub struct LogBuffer {
    records: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    /// Dropped since the last batch was sent.
    dropped: AtomicU64,
    /// Dropped since the agent started.
    dropped_total: AtomicU64,
    notify: Notify,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(LogBuffer {
            records: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, VecDeque<LogRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, record: LogRecord) {
        let mut q = self.records();
        while q.len() >= self.capacity {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(record);
        drop(q);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.records().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Takes up to `n` of the oldest records and the drop count to report with them.
    fn take(&self, n: usize) -> (Vec<LogRecord>, u64) {
        let mut q = self.records();
        let k = q.len().min(n);
        let batch: Vec<LogRecord> = q.drain(..k).collect();
        (batch, self.dropped.swap(0, Ordering::Relaxed))
    }

    /// Puts back a batch that could not be delivered, in front, as far as room allows.
    fn give_back(&self, batch: Vec<LogRecord>, dropped: u64) {
        let mut q = self.records();
        let room = self.capacity.saturating_sub(q.len());
        let lost = batch.len().saturating_sub(room) as u64;
        for r in batch.into_iter().rev().take(room) {
            q.push_front(r);
        }
        self.dropped.fetch_add(dropped + lost, Ordering::Relaxed);
        self.dropped_total.fetch_add(lost, Ordering::Relaxed);
    }

    /// Sends batches over `peer` until it closes.
    pub async fn pump(self: Arc<Self>, peer: PeerHandle) {
        loop {
            let (batch, dropped) = self.take(BATCH);
            if batch.is_empty() && dropped == 0 {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = peer.closed() => return,
                }
                // Let a burst accumulate into one batch.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let params = LogParams {
                records: batch.clone(),
                dropped,
            };
            match peer
                .call_method::<molar_protocol::catalogue::Log>(&params)
                .await
            {
                Ok(_) => {}
                Err(molar_protocol::CallError::Remote(body))
                    if crate::tasks::refused_for_good(&body) =>
                {
                    // Refused as malformed: resending the same batch cannot help.
                }
                Err(_) => {
                    self.give_back(batch, dropped);
                    if peer.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The tracing layer feeding a [`LogBuffer`].
pub struct ForwardLayer {
    buffer: Arc<LogBuffer>,
    max_level: Level,
}

impl ForwardLayer {
    /// Forwards records at `max_level` and more severe.
    pub fn new(buffer: Arc<LogBuffer>, max_level: Level) -> Self {
        ForwardLayer { buffer, max_level }
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::from(value));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message" {
            self.msg = s;
        } else {
            self.fields.insert(field.name().to_owned(), Value::from(s));
        }
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max_level {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.buffer.push(LogRecord {
            ts_ms,
            level: meta.level().as_str().to_ascii_lowercase(),
            target: meta.target().to_owned(),
            msg: f.msg,
            fields: f.fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    fn rec(i: u64) -> LogRecord {
        LogRecord {
            ts_ms: i,
            level: "info".into(),
            target: "t".into(),
            msg: format!("m{i}"),
            fields: Map::new(),
        }
    }

    #[test]
    fn full_buffer_drops_oldest_and_counts() {
        let b = LogBuffer::new(3);
        for i in 0..5 {
            b.push(rec(i));
        }
        let (batch, dropped) = b.take(10);
        assert_eq!(
            batch.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(dropped, 2);
        assert_eq!(b.dropped_total(), 2);
        // Undelivered batches go back in front, keeping order.
        b.push(rec(9));
        b.give_back(batch, dropped);
        let (again, dropped) = b.take(10);
        assert_eq!(
            again.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
            vec![3, 4, 9]
        );
        assert_eq!(
            dropped, 3,
            "2 reported before plus record 2 that found no room"
        );
    }

    #[test]
    fn layer_captures_message_fields_and_level() {
        let b = LogBuffer::new(10);
        let sub = tracing_subscriber::registry().with(ForwardLayer::new(b.clone(), Level::INFO));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(device = "/dev/loop0", bytes = 42u64, "erase started");
            tracing::debug!("not forwarded");
        });
        let (batch, _) = b.take(10);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].msg, "erase started");
        assert_eq!(batch[0].level, "info");
        assert_eq!(batch[0].fields["device"], "/dev/loop0");
        assert_eq!(batch[0].fields["bytes"], 42);
    }
}
