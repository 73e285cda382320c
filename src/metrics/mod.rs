//! What an operator (and a test) reads to see what the recorder does:
//! counters and gauges, per-stream families, latency histograms, all
//! `prometheus-client` metrics registered in one [`Registry`] and served as
//! Prometheus text on `/metrics` (`server.rs`), beside `/health`.
//!
//! Recording code keeps calling [`Counters::add`], [`Counters::set`] and
//! [`Counters::raise`] on the fields; tests read a [`CountersSnapshot`].

pub mod health;
pub mod server;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A gauge of non-negative integers (bytes, counts, high-water marks).
pub type GaugeU64 = Gauge<u64, AtomicU64>;
/// A gauge of seconds.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

/// The labels of a per-stream metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub market: String,
    /// Binance's stream name, e.g. `btcusdt@trade`.
    pub stream: String,
}

/// The labels of a per-market metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarketLabels {
    pub market: String,
}

/// The work a thread's CPU time is counted under
/// (`binance_recorder_cpu_seconds_total{work=...}`): the threads of the
/// WAL's group commits, of the decoding beside them, of the seals and of
/// the spilled runs. What is left of the process's CPU is the runtime's
/// workers: the sockets, the channel and the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A group commit's appends, fsync and segment deletions.
    WalWrite,
    /// A group commit's frames decoded, beside its appends.
    Decode,
    /// A seal job: merge, encode, fsync, rename.
    Seal,
    /// A spilled run written past `memory.max_held_mb`.
    Spill,
}

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::WalWrite => "wal_write",
            Work::Decode => "decode",
            Work::Seal => "seal",
            Work::Spill => "spill",
        }
    }
}

/// The labels of the CPU time counted by [`Work`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkLabels {
    pub work: &'static str,
}

/// The CPU time (user and system) the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let spent = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(spent.tv_sec).unwrap_or(0),
        u32::try_from(spent.tv_nsec).unwrap_or(0),
    )
}

/// Histogram buckets for latencies from 0.1 ms to about 26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// Finer buckets for the acknowledgement latency, whose p99 the issue 14
/// target (15 ms) is read against: doubling from 0.1 ms to about 52 s, so a
/// quantile is known within a factor of two (interpolated within it by
/// `scripts/bench`, as Prometheus' `histogram_quantile` does).
fn ack_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

macro_rules! metric_type {
    (counter) => {
        Counter
    };
    (gauge) => {
        GaugeU64
    };
}

macro_rules! counters {
    ($($(#[doc = $doc:expr])* $kind:ident $name:ident),* $(,)?) => {
        /// Live metrics, shared by every task of one recorder.
        #[derive(Debug)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: metric_type!($kind),)*
            /// Rows received per stream (deduplicated later, when filed).
            pub rows_by_stream: Family<StreamLabels, Counter>,
            /// Exchange time of the newest row per stream, in Unix seconds
            /// (lag = now - this).
            pub last_event_time: Family<StreamLabels, GaugeF64>,
            /// Host clock minus exchange clock per market, in seconds, from
            /// the newest `/api/v3/time` answer.
            pub clock_offset: Family<MarketLabels, GaugeF64>,
            /// Stream links connected now.
            pub links_up: GaugeU64,
            /// Time one WAL batch took to write and fsync.
            pub wal_fsync_seconds: Histogram,
            /// From a frame's receipt to its batch's fsync (the oldest
            /// frame of each batch).
            pub receive_to_durable_seconds: Histogram,
            /// Time one seal job took (merge, encode, fsync, rename).
            pub seal_seconds: Histogram,
            /// CPU time of the threads doing each [`Work`], in seconds.
            pub cpu_seconds: Family<WorkLabels, Counter<f64, AtomicU64>>,
            /// Time connection tasks waited for room in the recorder's
            /// channel, in seconds (their sockets unread meanwhile).
            pub backpressure_seconds: Counter<f64, AtomicU64>,
        }

        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    $($name: Default::default(),)*
                    rows_by_stream: Family::default(),
                    last_event_time: Family::default(),
                    clock_offset: Family::default(),
                    links_up: GaugeU64::default(),
                    wal_fsync_seconds: latency_histogram(),
                    receive_to_durable_seconds: ack_latency_histogram(),
                    seal_seconds: latency_histogram(),
                    cpu_seconds: Family::default(),
                    backpressure_seconds: Counter::default(),
                }
            }
        }

        /// A point-in-time copy of the counters and gauges of [`Counters`].
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct CountersSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.get(),)* }
            }

            /// Registers every metric (clones share the values) under the
            /// `binance_recorder_` prefix; counters get `_total`.
            pub fn register(&self, registry: &mut Registry) {
                let registry = registry.sub_registry_with_prefix("binance_recorder");
                $(registry.register(
                    stringify!($name),
                    concat!($($doc),*).trim(),
                    self.$name.clone(),
                );)*
                registry.register(
                    "rows",
                    "Rows received per stream, before deduplication",
                    self.rows_by_stream.clone(),
                );
                registry.register(
                    "last_event_time_seconds",
                    "Exchange time of the newest row per stream (Unix seconds); lag is now minus this",
                    self.last_event_time.clone(),
                );
                registry.register(
                    "clock_offset_seconds",
                    "Host clock minus the exchange clock per market, from /api/v3/time",
                    self.clock_offset.clone(),
                );
                registry.register(
                    "links_up",
                    "Stream links connected now",
                    self.links_up.clone(),
                );
                registry.register(
                    "wal_fsync_seconds",
                    "Time one WAL batch took to write and fsync",
                    self.wal_fsync_seconds.clone(),
                );
                registry.register(
                    "receive_to_durable_seconds",
                    "From a frame's receipt to its batch's fsync (oldest frame of each batch)",
                    self.receive_to_durable_seconds.clone(),
                );
                registry.register(
                    "seal_seconds",
                    "Time one seal job took (merge, encode, fsync, rename)",
                    self.seal_seconds.clone(),
                );
                registry.register(
                    "backpressure_seconds",
                    "Time connection tasks waited for room in the recorder's channel, their sockets unread meanwhile (the WAL or the state behind the feed)",
                    self.backpressure_seconds.clone(),
                );
                registry.register(
                    "cpu_seconds",
                    "CPU time (user and system) of the threads doing each work: wal_write (group commits), decode (beside them), seal, spill; the rest of the process's CPU is the runtime's workers (sockets, state)",
                    self.cpu_seconds.clone(),
                );
            }

            /// Counts the CPU time this thread used since `since` (a
            /// [`thread_cpu`] reading taken on this thread) under `work`.
            pub fn charge_cpu(&self, work: Work, since: Duration) {
                self.add_cpu(work, thread_cpu().saturating_sub(since));
            }

            /// Counts `spent` of CPU time under `work`.
            pub fn add_cpu(&self, work: Work, spent: Duration) {
                if !spent.is_zero() {
                    self.cpu_seconds
                        .get_or_create(&WorkLabels { work: work.label() })
                        .inc_by(spent.as_secs_f64());
                }
            }

            /// The metrics as Prometheus text (what `/metrics` serves).
            pub fn encode(&self) -> String {
                let mut registry = Registry::default();
                self.register(&mut registry);
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &registry)
                    .expect("writing to a String cannot fail");
                text
            }
        }
    };
}

counters! {
    /// Frames received on stream connections.
    counter frames_received,
    /// Frames made durable in the WAL.
    counter frames_durable,
    /// WAL records replayed at start.
    counter records_replayed,
    /// WAL damage reports met at start (each one a possible gap).
    counter wal_damage,
    /// WAL group commits (fsyncs).
    counter wal_syncs,
    /// WAL batches that failed (disk full, read-only filesystem, fsync
    /// error); nothing in them was acknowledged, they are written again.
    counter wal_write_failures,
    /// Most frames ever held between the channel and the WAL (a gauge of
    /// the high-water mark; bounded by design, see `MAX_BATCH_RECORDS`).
    gauge frames_buffered_max,
    /// Times a connection task found the recorder's channel full and
    /// waited before reading on (the WAL or the state behind the feed;
    /// `backpressure_seconds_total` has the time).
    counter backpressure_waits,
    /// Bytes of the WAL's segments on disk (a gauge, set after each batch;
    /// bounded by what the unsealed hours hold, see ARCHITECTURE.md).
    gauge wal_bytes,
    /// Bytes of heap the unsealed hours' rows take in memory, runs being
    /// written to disk included (a gauge, set every 4,096 rows when checked
    /// against `memory.max_held_mb`, after any spill it led to).
    gauge held_bytes,
    /// Runs of rows spilled to disk past `memory.max_held_mb`.
    counter runs_spilled,
    /// Rows in those runs.
    counter rows_spilled,
    /// Runs that could not be written (their rows stay in memory).
    counter spill_failures,
    /// Frames that could not be decoded and went to quarantine.
    counter frames_quarantined,
    /// Stream rows (and kline updates) whose times or ids cannot be
    /// believed (see `[clock]`): quarantined, never filed or used for the clock.
    counter frames_implausible,
    /// Well-formed events of streams or types that are not recorded.
    counter events_ignored,
    /// Rows of a (stream, symbol) that is not configured.
    counter rows_unexpected,
    /// Rows whose key was already held (reconnect overlap, replays).
    counter rows_duplicate,
    /// Rows that arrived after their hour was sealed.
    counter rows_late,
    /// Parquet files sealed for the first time.
    counter files_sealed,
    /// Parquet files sealed again with late rows.
    counter files_resealed,
    /// Seal attempts that failed and will be retried.
    counter seal_failures,
    /// Seal jobs that panicked (the Parquet code; the job is retried).
    counter seal_panics,
    /// Sealed files found unreadable (bad footer), moved aside and rebuilt.
    counter files_corrupt,
    /// Temporary files of interrupted seals removed at start.
    counter temporary_files_removed,
    /// Stream connections established.
    counter connections,
    /// Connection tasks that ended or panicked and were restarted by their
    /// supervisor (a bug: the task itself reconnects forever).
    counter connection_task_restarts,
    /// Hours whose declared holes the daemon stopped retrying after
    /// `fill.declared_give_up_hours` (they stay declared, for `backfill`).
    counter declared_given_up,
    /// Dated contracts delivered while recorded (or found delivered at
    /// start): their recording ended after the delivery hour.
    counter contracts_delivered,
    /// Stream connections lost.
    counter disconnects,
    /// Control replies that reported an error.
    counter control_errors,
    /// `/api/v3/time` answers behind the stream's event times.
    counter clock_check_failures,
    /// Holes found before sealing (each counted once per fill round).
    counter holes_found,
    /// REST fill rounds run (one per stream-hour and try).
    counter fill_rounds,
    /// Fill rounds that left a hole open because REST failed.
    counter fill_failures,
    /// Rows fetched from REST that the stream had not delivered.
    counter rows_filled,
    /// Holes sealed as declared in a file's `unfilled` metadata.
    counter holes_declared,
    /// Declared holes filled later and sealed in a replacement file.
    counter holes_filled_late,
    // REST pacing and stream reconnects (issue 12).
    /// REST answers 429 (too much weight), each one, also those that only
    /// extend a back-off already in force.
    counter rest_429,
    /// REST answers 418 (IP banned). Should stay 0: every call waits out a
    /// 429's `Retry-After`, and one probes alone before the rest follow.
    counter rest_418,
    /// REST back-offs started after a 429 or 418 (each logged once).
    counter rest_backoffs,
    /// REST requests sent (every endpoint: fills, the clock task, the
    /// symbol check).
    counter rest_calls,
    /// The request weight REST calls carried (Binance's documented
    /// weights): what the REST budget was spent on.
    counter rest_weight_used,
    /// REST rows beyond the `limit` a call asked for, ignored.
    counter rest_rows_over_limit,
    /// REST answers refused unread for being larger than the body cap.
    counter rest_bodies_too_large,
    /// The longest back-off step (its ceiling before jitter, in ms) any
    /// stream reconnect waited under: stays at `backoff_initial_ms` while
    /// every lost link had delivered data (a gauge of the high-water mark).
    gauge reconnect_backoff_max_ms,
    // Deadlines for queued and in-flight REST work (issue 12).
    /// Fill rounds answered without a REST call: trade holes the aggTrade
    /// stream of the same symbol-hour settles (one-fill aggregates are the
    /// trades; a range no aggregate covers is empty).
    counter fill_answers_from_agg_trades,
    /// Fill rounds cut at their hour's deadline (running, or still queued):
    /// what they fetched is kept, the rest declared and retried later.
    counter fill_rounds_cut,
    /// Most fill rounds ever waiting in the queue for a free
    /// `fill.max_concurrent_rounds` slot (a gauge of the high-water mark).
    gauge fill_rounds_queued_max,
    // Silent links (issue 12).
    /// Links judged silent (answering pings, delivering no data past the
    /// bound their streams' rates give) and replaced make-before-break: the
    /// replacement took over.
    counter silent_links_replaced,
    // Subscribed but silent streams (issue 15).
    /// Streams acknowledged on a link and then silent past the bound while
    /// the market's other streams delivered (a USD-M stream on the wrong
    /// route does this): each logged by name, the other route tried once.
    counter streams_subscribed_silent,
    /// Links moved to the other USD-M route because all their streams
    /// stayed silent on the first.
    counter stream_route_switches,
    /// Links replaced make-before-break at the end of their lifetime or
    /// after a `serverShutdown` (silent links are counted apart).
    counter rotations,
    // Uploads to `[storage] destination` (issue 17).
    /// Sealed files waiting for upload (not yet verified at the
    /// destination): grows while the store is unreachable.
    gauge upload_backlog_files,
    /// Sealed files uploaded and verified (size and ETag read back), or
    /// found already there byte for byte.
    counter files_uploaded,
    /// Bytes sent in verified uploads.
    counter upload_bytes,
    /// Upload attempts that failed and will be retried (store down,
    /// refused, verification mismatch).
    counter upload_failures,
    /// Files not uploaded because the key held a more complete object
    /// (more rows or fewer holes, or as complete and there first).
    counter upload_objects_kept,
    /// Local sealed files deleted: verified uploaded and past
    /// `storage.keep_local_hours`.
    counter local_files_deleted,
    /// Upload tasks that panicked and were restarted by their supervisor.
    counter upload_task_restarts,
}

impl Counters {
    pub fn add(counter: &Counter, amount: u64) {
        counter.inc_by(amount);
    }

    /// Sets a gauge.
    pub fn set(gauge: &GaugeU64, value: u64) {
        gauge.set(value);
    }

    /// Raises a high-water-mark gauge to `value` if it is higher.
    pub fn raise(gauge: &GaugeU64, value: u64) {
        gauge
            .inner()
            .fetch_max(value, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's CPU time is counted under its work, and only this
    /// thread's: another thread's busy time is not in it.
    #[test]
    fn cpu_time_is_counted_by_work() {
        let counters = Counters::default();
        let cpu = thread_cpu();
        let mut spun = 0u64;
        while thread_cpu().saturating_sub(cpu) < Duration::from_millis(20) {
            spun = std::hint::black_box(spun.wrapping_add(1));
        }
        counters.charge_cpu(Work::Seal, cpu);
        std::thread::scope(|scope| {
            scope.spawn(|| counters.charge_cpu(Work::Spill, thread_cpu()));
            let mut spun = 0u64;
            let cpu = thread_cpu();
            while thread_cpu().saturating_sub(cpu) < Duration::from_millis(20) {
                spun = std::hint::black_box(spun.wrapping_add(1));
            }
        });
        let text = counters.encode();
        let value = |work: &str| -> f64 {
            let series = format!("binance_recorder_cpu_seconds_total{{work=\"{work}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0)
        };
        assert!(value("seal") >= 0.020, "{text}");
        assert!(value("spill") < 0.010, "{text}");
        assert_eq!(
            value("wal_write"),
            0.0,
            "no series before its work ran: {text}"
        );
    }
}
