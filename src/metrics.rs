//! Counters an operator (and a test) reads to see what the recorder did.
//! Plain atomics; a `/metrics` endpoint comes with the operations issue.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by every task of one recorder.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct CountersSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Frames received on stream connections.
    frames_received,
    /// Frames made durable in the WAL.
    frames_durable,
    /// WAL records replayed at start.
    records_replayed,
    /// WAL damage reports met at start (each one a possible gap).
    wal_damage,
    /// WAL group commits (fsyncs).
    wal_syncs,
    /// WAL batches that failed (disk full, read-only filesystem, fsync
    /// error); nothing in them was acknowledged, they are written again.
    wal_write_failures,
    /// Most frames ever held between the channel and the WAL (a gauge of
    /// the high-water mark; bounded by design, see `MAX_BATCH_RECORDS`).
    frames_buffered_max,
    /// Bytes of the WAL's segments on disk (a gauge, set after each batch;
    /// bounded by what the unsealed hours hold, see ARCHITECTURE.md).
    wal_bytes,
    /// Frames that could not be decoded and went to quarantine.
    frames_quarantined,
    /// Stream rows (and kline updates) whose times or ids cannot be
    /// believed (see `[clock]`): quarantined, never filed or used for the clock.
    frames_implausible,
    /// Well-formed events of streams or types that are not recorded.
    events_ignored,
    /// Rows of a (stream, symbol) that is not configured.
    rows_unexpected,
    /// Rows whose key was already held (reconnect overlap, replays).
    rows_duplicate,
    /// Rows that arrived after their hour was sealed.
    rows_late,
    /// Parquet files sealed for the first time.
    files_sealed,
    /// Parquet files sealed again with late rows.
    files_resealed,
    /// Seal attempts that failed and will be retried.
    seal_failures,
    /// Seal jobs that panicked (the Parquet code; the job is retried).
    seal_panics,
    /// Sealed files found unreadable (bad footer), moved aside and rebuilt.
    files_corrupt,
    /// Temporary files of interrupted seals removed at start.
    temporary_files_removed,
    /// Stream connections established.
    connections,
    /// Connection tasks that ended or panicked and were restarted by their
    /// supervisor (a bug: the task itself reconnects forever).
    connection_task_restarts,
    /// Hours whose declared holes the daemon stopped retrying after
    /// `fill.declared_give_up_hours` (they stay declared, for `backfill`).
    declared_given_up,
    /// Stream connections lost.
    disconnects,
    /// Control replies that reported an error.
    control_errors,
    /// `/api/v3/time` answers behind the stream's event times.
    clock_check_failures,
    /// Holes found before sealing (each counted once per fill round).
    holes_found,
    /// REST fill rounds run (one per stream-hour and try).
    fill_rounds,
    /// Fill rounds that left a hole open because REST failed.
    fill_failures,
    /// Rows fetched from REST that the stream had not delivered.
    rows_filled,
    /// Holes sealed as declared in a file's `unfilled` metadata.
    holes_declared,
    /// Declared holes filled later and sealed in a replacement file.
    holes_filled_late,
    // REST pacing and stream reconnects (issue 12).
    /// REST answers 429 (too much weight), each one, also those that only
    /// extend a back-off already in force.
    rest_429,
    /// REST answers 418 (IP banned). Should stay 0: every call waits out a
    /// 429's `Retry-After`, and one probes alone before the rest follow.
    rest_418,
    /// REST back-offs started after a 429 or 418 (each logged once).
    rest_backoffs,
    /// REST requests sent (every endpoint: fills, the clock task, the
    /// symbol check), and the request weight they carried (Binance's
    /// documented weights): what the REST budget was spent on.
    rest_calls,
    rest_weight_used,
    /// REST rows beyond the `limit` a call asked for, ignored.
    rest_rows_over_limit,
    /// REST answers refused unread for being larger than the body cap.
    rest_bodies_too_large,
    /// The longest back-off step (its ceiling before jitter, in ms) any
    /// stream reconnect waited under: stays at `backoff_initial_ms` while
    /// every lost link had delivered data (a gauge of the high-water mark).
    reconnect_backoff_max_ms,
    // Deadlines for queued and in-flight REST work (issue 12).
    /// Fill rounds answered without a REST call: trade holes the aggTrade
    /// stream of the same symbol-hour settles (one-fill aggregates are the
    /// trades; a range no aggregate covers is empty).
    fill_answers_from_agg_trades,
    /// Fill rounds cut at their hour's deadline (running, or still queued):
    /// what they fetched is kept, the rest declared and retried later.
    fill_rounds_cut,
    /// Most fill rounds ever waiting in the queue for a free
    /// `fill.max_concurrent_rounds` slot (a gauge of the high-water mark).
    fill_rounds_queued_max,
    // Silent links (issue 12).
    /// Links judged silent (answering pings, delivering no data past the
    /// bound their streams' rates give) and replaced make-before-break: the
    /// replacement took over.
    silent_links_replaced,
}

impl Counters {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }
}
