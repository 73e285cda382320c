//! Connections that never give up: each way a link can end is followed by a
//! fresh, resubscribed link, within the configured bounds, and the exchange's
//! limits (pongs, frames per second, streams per connection, handshakes per
//! window, lifetime) are kept.

use std::time::Duration;

use binance_recorder::domain::{Hour, StreamKind};
use binance_recorder::metrics::CountersSnapshot;
use fake_binance::{FakeConfig, FakeExchange, Fault, Limits};

use crate::support::*;

/// Connection settings for tests: a link silent for 1.5 s is dead, backoff
/// is short, and rotation is off unless a test sets it.
fn connection_toml(extra: &str) -> String {
    format!(
        "[connection]\ndead_after_ms = 1500\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nhealthy_after_ms = 2000\n{extra}\n"
    )
}

fn config_with(
    fake: &FakeExchange,
    root: &std::path::Path,
    streams: &[&str],
    connection: &str,
) -> String {
    format!(
        "{}{}",
        connection_toml(connection),
        recorder_toml_patient(fake, root, &["BTCUSDT"], streams)
    )
}

/// Waits for `n` more handshakes and fresh frames after them.
async fn wait_for_fresh_link(
    fake: &FakeExchange,
    recorder: &RunningRecorder,
    handshakes_before: u64,
    what: &str,
) {
    wait_until(Duration::from_secs(20), what, || {
        fake.counters().ws_handshakes_accepted > handshakes_before
    })
    .await;
    let frames_then = recorder.counters().frames_durable;
    wait_until(
        Duration::from_secs(20),
        "frames flow on the new link",
        || recorder.counters().frames_durable > frames_then + 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_link_ends_is_followed_by_a_fresh_subscribed_link() {
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(500),
            ..Limits::default()
        },
        ..fake_config(60.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let recorder = RunningRecorder::start(&config_with(
        &fake,
        scratch.path(),
        &["trade", "aggTrade", "kline_1m"],
        "",
    ));
    wait_for_fresh_link(&fake, &recorder, 0, "first link").await;

    let faults = [
        ("TCP abort", Fault::DropConnections { abort: true }),
        ("close frame", Fault::DropConnections { abort: false }),
        (
            "stall with no data and no pings",
            Fault::Stall {
                duration_ms: 4_000,
                keep_backlog: false,
            },
        ),
        ("serverShutdown", Fault::ServerShutdown),
    ];
    for (what, fault) in faults {
        let before = fake.counters().ws_handshakes_accepted;
        let disconnects_before = recorder.counters().disconnects;
        fake.inject(fault);
        wait_for_fresh_link(&fake, &recorder, before, what).await;
        let counters = recorder.counters();
        assert!(counters.connections > before, "{what}: {counters:?}");
        if what == "serverShutdown" {
            // Make-before-break: the replacement took over inside the grace
            // the exchange gives, so no link was lost.
            wait_until(Duration::from_secs(10), "the old link closed", || {
                fake.counters().ws_connections_open == 1
            })
            .await;
            assert_eq!(
                recorder.counters().disconnects,
                disconnects_before,
                "{what}: rotated, not lost"
            );
        } else {
            assert!(
                counters.disconnects > disconnects_before,
                "{what}: the lost link is recorded: {counters:?}"
            );
        }
    }
    let fake_counters = fake.counters();
    assert_eq!(
        fake_counters.ws_control_errors, 0,
        "every SUBSCRIBE accepted: {fake_counters:?}"
    );
    assert_eq!(fake_counters.ws_rate_limit_closes, 0, "{fake_counters:?}");
    let counters: CountersSnapshot = recorder.stop().await;
    assert_eq!(counters.control_errors, 0, "{counters:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_that_delivered_before_they_dropped_reconnect_at_the_first_backoff_step() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    // Links live far less than healthy_after: only the data they delivered
    // can reset the backoff.
    let config = format!(
        "[connection]\ndead_after_ms = 1500\nbackoff_initial_ms = 50\nbackoff_max_ms = 5000\nhealthy_after_ms = 600000\n{}",
        recorder_toml_patient(&fake, scratch.path(), &["BTCUSDT"], &["trade", "aggTrade"])
    );
    let recorder = RunningRecorder::start(&config);
    wait_for_fresh_link(&fake, &recorder, 0, "first link").await;
    for drop_number in 0..6 {
        let before = fake.counters().ws_handshakes_accepted;
        fake.inject(Fault::DropConnections {
            abort: drop_number % 2 == 0,
        });
        wait_for_fresh_link(&fake, &recorder, before, "a link after the drop").await;
    }
    let counters = recorder.stop().await;
    assert!(counters.disconnects >= 6, "{counters:?}");
    assert_eq!(
        counters.reconnect_backoff_max_ms, 50,
        "every reconnect waited under the first step: {counters:?}"
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_pings_get_pongs_in_time() {
    // The ratio (pings every 5 s, a 15 s deadline), sped up tenfold:
    // pings every 500 ms, a 1.5 s deadline, for 20 s of real time (40 pings,
    // several simulated hours at 240x). Pongs count against the 5 frames a
    // second, so faster pings would break the rate limit by themselves.
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(500),
            pong_timeout: Duration::from_millis(1500),
            ..Limits::default()
        },
        ..fake_config(240.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let recorder = RunningRecorder::start(&config_with(
        &fake,
        scratch.path(),
        &["trade", "aggTrade", "kline_1m"],
        "",
    ));
    wait_until(Duration::from_secs(40), "40 pings sent", || {
        fake.counters().ws_pings_sent >= 40
    })
    .await;
    let fake_counters = fake.counters();
    assert_eq!(fake_counters.ws_pong_timeout_closes, 0, "{fake_counters:?}");
    assert!(fake_counters.ws_pongs_received >= 38, "{fake_counters:?}");
    assert_eq!(fake_counters.ws_rate_limit_closes, 0, "{fake_counters:?}");
    let counters = recorder.stop().await;
    assert_eq!(counters.disconnects, 0, "{counters:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_before_the_lifetime_loses_nothing_and_needs_no_rest() {
    // A 6 s lifetime, rotated after 3 s: a simulated hour at 240x (15 s)
    // sees about five rotations, and the exchange never closes a link first.
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(500),
            max_lifetime: Duration::from_secs(6),
            ..Limits::default()
        },
        ..fake_config(240.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let connection = "rotate_after_secs = 3\nrotation_overlap_timeout_ms = 2000";
    let recorder = RunningRecorder::start(&config_with(
        &fake,
        root,
        &["trade", "aggTrade", "kline_1m"],
        connection,
    ));
    let hour = Hour::containing(SIM_START_US).next();
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    wait_until(Duration::from_secs(60), "the hour sealed", || {
        kinds
            .iter()
            .all(|kind| file_path(root, &key("BTCUSDT", *kind), hour).exists())
    })
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    assert_eq!(
        fake_counters.ws_lifetime_closes, 0,
        "rotated before the exchange closed: {fake_counters:?}"
    );
    assert!(
        fake_counters.ws_handshakes_accepted >= 4,
        "rotations happened: {fake_counters:?}"
    );
    assert!(
        counters.rows_duplicate > 0,
        "the overlap delivered rows twice, stored once: {counters:?}"
    );
    let truth = fake.ground_truth("BTCUSDT", hour.end() + 60_000_000);
    for kind in kinds {
        assert_file_matches_truth(
            &file_path(root, &key("BTCUSDT", kind), hour),
            kind,
            &truth,
            hour,
        );
    }
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_stays_within_the_handshake_budget() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    // At most 4 handshakes per 2 s window, while every link is dropped as
    // soon as it is made (accept then drop) for 6 s.
    let connection = "handshake_limit = 4\nhandshake_window_secs = 2";
    let recorder =
        RunningRecorder::start(&config_with(&fake, scratch.path(), &["trade"], connection));
    wait_until(Duration::from_secs(10), "first link", || {
        fake.counters().ws_handshakes_accepted >= 1
    })
    .await;
    let storm_start = tokio::time::Instant::now();
    let before = fake.counters().ws_handshakes_accepted;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    while storm_start.elapsed() < Duration::from_secs(6) {
        fake.inject(Fault::DropConnections { abort: true });
        ticker.tick().await;
    }
    let during = fake.counters().ws_handshakes_accepted - before;
    // 6 s is three windows (plus the one already open at the start).
    assert!(
        during <= 4 * 4,
        "{during} handshakes in 6 s with a budget of 4 per 2 s"
    );
    assert!(during >= 2, "it kept trying: {during}");
    let recorder_counters = recorder.counters();
    assert!(recorder_counters.disconnects >= 2, "{recorder_counters:?}");
    assert!(
        recorder_counters.reconnect_backoff_max_ms > 50,
        "links dropped before delivering climb the backoff: {recorder_counters:?}"
    );
    // After the storm it recovers.
    wait_for_fresh_link(
        &fake,
        &recorder,
        fake.counters().ws_handshakes_accepted.saturating_sub(1),
        "recovery",
    )
    .await;
    recorder.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_streams_are_spread_within_limits() {
    let symbols: Vec<String> = (0..400).map(|index| format!("SYM{index:03}USDT")).collect();
    let fake = FakeExchange::start(FakeConfig {
        symbols: symbols.clone(),
        mean_orders_per_sec: 0.02,
        limits: Limits {
            ping_interval: Duration::from_secs(1),
            ..Limits::default()
        },
        // 1,200 kline streams update every 2 simulated seconds: keep the
        // clock slow so the fake and the recorder share two cores easily.
        ..fake_config(2.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let symbol_refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let streams = ["trade", "aggTrade", "kline_1m", "kline_5m", "kline_1h"];
    let connection = connection_toml("").replace("dead_after_ms = 1500", "dead_after_ms = 5000");
    let config = format!(
        "{connection}{}",
        recorder_toml_patient(&fake, scratch.path(), &symbol_refs, &streams)
    );
    let recorder = RunningRecorder::start(&config);
    // 2,000 streams at 200 per connection: 10 links, each subscribed in two
    // SUBSCRIBE requests paced at 2 per second.
    wait_until(Duration::from_secs(30), "ten links subscribed", || {
        let counters = fake.counters();
        counters.ws_handshakes_accepted >= 10 && counters.ws_control_requests >= 20
    })
    .await;
    wait_until(Duration::from_secs(30), "klines of every link flow", || {
        recorder.counters().frames_durable > 2_000
    })
    .await;
    let fake_counters = fake.counters();
    assert_eq!(
        fake_counters.ws_handshakes_accepted, 10,
        "{fake_counters:?}"
    );
    assert_eq!(
        fake_counters.ws_too_many_streams_closes, 0,
        "{fake_counters:?}"
    );
    assert_eq!(
        fake_counters.ws_rate_limit_closes, 0,
        "never more than 5 frames a second: {fake_counters:?}"
    );
    assert_eq!(fake_counters.ws_control_errors, 0, "{fake_counters:?}");
    let counters = recorder.stop().await;
    assert_eq!(counters.disconnects, 0, "{counters:?}");
    fake.shutdown().await;
}

/// A disk whose every fsync takes 200 ms: the real filesystem with latency
/// injected into `sync_data` (the delay is the fault being simulated, not a
/// wait for a condition). It counts the fsyncs under way.
#[derive(Debug, Default)]
struct SlowDisk {
    syncing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
struct SlowFile {
    file: Box<dyn binance_recorder::wal::WalFile>,
    syncing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl binance_recorder::wal::WalFile for SlowFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        self.syncing.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        let synced = self.file.sync_data();
        self.syncing.fetch_sub(1, Ordering::SeqCst);
        synced
    }
}

impl FileFault for SlowDisk {
    fn wrap(
        &self,
        file: Box<dyn binance_recorder::wal::WalFile>,
    ) -> Box<dyn binance_recorder::wal::WalFile> {
        Box::new(SlowFile {
            file,
            syncing: self.syncing.clone(),
        })
    }
}

/// The config of the disk tests: `SYMBOLS`' `streams`, a link dead only
/// after 20 s of silence (a disk's wait is not the exchange's), and the
/// connection task's wait for room in the channel.
fn slow_disk_config(
    fake: &FakeExchange,
    root: &std::path::Path,
    max_backpressure_wait_ms: u64,
    streams: &[&str],
) -> String {
    format!(
        "{}{}",
        connection_toml(&format!(
            "dead_after_ms = 20000\nmax_backpressure_wait_ms = {max_backpressure_wait_ms}"
        ))
        .replace("dead_after_ms = 1500\n", ""),
        recorder_toml_patient(fake, root, &SYMBOLS, streams)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_under_a_burst_keeps_memory_bounded_and_loses_nothing() {
    use binance_recorder::binance::ws::FRAMES_PER_MESSAGE;
    use binance_recorder::recorder::MAX_BATCH_RECORDS;
    // A burst: 3 symbols at 240x with 2 taker orders a simulated second,
    // thousands of frames a second against a disk that syncs 5 times a second.
    let fake = FakeExchange::start(FakeConfig {
        mean_orders_per_sec: 2.0,
        ..fake_config(240.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = binance_recorder::config::Config::from_toml(&slow_disk_config(
        &fake,
        root,
        15_000,
        &["trade", "aggTrade"],
    ))
    .expect("valid config");
    let counters = std::sync::Arc::new(binance_recorder::metrics::Counters::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let disk = SlowDisk::default();
    let syncing = disk.syncing.clone();
    let task = tokio::spawn(binance_recorder::recorder::run_with_wal_fs(
        config,
        std::sync::Arc::new(FaultyFs(disk)),
        counters.clone(),
        shutdown.clone(),
    ));
    // The first hour watched from its start: at 240x the fake's first
    // minute is a quarter of a real second, which a loaded machine's
    // start-up can outlast (the next hour would then be owed from its
    // start and filled from REST, which this test does not expect).
    wait_until(Duration::from_secs(30), "the first frame", || {
        counters.frames_received.get() > 0
    })
    .await;
    let hour = Hour::containing(fake.sim_now_us()).next();
    let kinds = [StreamKind::Trade, StreamKind::AggTrade];
    wait_until(Duration::from_secs(120), "the hour sealed", || {
        SYMBOLS.iter().all(|symbol| {
            kinds
                .iter()
                .all(|kind| file_path(root, &key(symbol, *kind), hour).exists())
        })
    })
    .await;
    shutdown.cancel();
    task.await.expect("no panic").expect("clean stop");
    // The stop waited for every batch, the last one started by the finish
    // of the one before included.
    assert_eq!(
        syncing.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a WAL fsync still under way after the stop returned"
    );
    let counters = counters.snapshot();
    // The batch being written and the records waiting for the next, each
    // at most one message's frames past `MAX_BATCH_RECORDS`.
    let bound = (2 * (MAX_BATCH_RECORDS + FRAMES_PER_MESSAGE)) as u64;
    eprintln!("slow disk: {counters:?}, bound {bound}");
    assert!(
        counters.frames_buffered_max <= bound,
        "{} frames held, bound {bound}",
        counters.frames_buffered_max
    );
    assert!(
        counters.frames_buffered_max > 1_000,
        "the disk was the bottleneck: {counters:?}"
    );
    for symbol in SYMBOLS {
        let truth = fake.ground_truth(symbol, hour.end() + 60_000_000);
        for kind in kinds {
            assert_file_matches_truth(
                &file_path(root, &key(symbol, kind), hour),
                kind,
                &truth,
                hour,
            );
        }
    }
    fake.shutdown().await;
}

/// A WAL whose fsync, once armed, blocks until the test releases it (or
/// for two minutes at most): a disk that stops answering.
#[derive(Debug, Clone, Default)]
struct StalledDisk {
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waiting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    released: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl StalledDisk {
    fn release(&self) {
        let (released, condvar) = &*self.released;
        *released.lock().expect("not poisoned") = true;
        condvar.notify_all();
    }
}

#[derive(Debug)]
struct StalledFile(Box<dyn binance_recorder::wal::WalFile>, StalledDisk);

impl binance_recorder::wal::WalFile for StalledFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let disk = &self.1;
        if disk.armed.load(Ordering::SeqCst) {
            disk.waiting.store(true, Ordering::SeqCst);
            let (released, condvar) = &*disk.released;
            let guard = released.lock().expect("not poisoned");
            let _released = condvar
                .wait_timeout_while(guard, Duration::from_secs(120), |released| !*released)
                .expect("not poisoned");
        }
        self.0.sync_data()
    }
}

impl FileFault for StalledDisk {
    fn wrap(
        &self,
        file: Box<dyn binance_recorder::wal::WalFile>,
    ) -> Box<dyn binance_recorder::wal::WalFile> {
        Box::new(StalledFile(file, self.clone()))
    }
}

/// The disk stops answering in the middle of an hour: the recorder stops
/// taking frames, the channel fills, and the connection task, past
/// `max_backpressure_wait`, closes its link rather than leave the
/// exchange's pings unanswered, hands over the frames it holds once there
/// is room, and reconnects when the backlog drains; gap fill fetches what
/// the closed link missed, and the hour seals equal to the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_closes_the_link_for_its_backlog_and_the_hour_is_still_whole() {
    use std::sync::atomic::Ordering;
    let fake = FakeExchange::start(FakeConfig {
        mean_orders_per_sec: 8.0,
        ..fake_config(240.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = slow_disk_config(&fake, root, 300, &["aggTrade"]);
    let disk = StalledDisk::default();
    let recorder = RunningRecorder::start_with_seams(
        &config,
        binance_recorder::recorder::Seams {
            wal_fs: std::sync::Arc::new(FaultyFs(disk.clone())),
            ..Default::default()
        },
    );
    let counters = recorder.counters.clone();
    wait_until(Duration::from_secs(30), "the first frame", || {
        counters.frames_received.get() > 0
    })
    .await;
    // The stall falls inside a whole hour the recorder watched from its start.
    let hour = Hour::containing(fake.sim_now_us()).next();
    wait_until(Duration::from_secs(60), "the hour under way", || {
        fake.sim_now_us() >= hour.start() + 60_000_000
    })
    .await;
    disk.armed.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(60),
        "the link closed for the backlog",
        || disk.waiting.load(Ordering::SeqCst) && fake.counters().ws_connections_open == 0,
    )
    .await;
    disk.armed.store(false, Ordering::SeqCst);
    disk.release();
    let kind = StreamKind::AggTrade;
    wait_until(Duration::from_secs(120), "the hour sealed", || {
        SYMBOLS
            .iter()
            .all(|symbol| file_path(root, &key(symbol, kind), hour).exists())
    })
    .await;
    // The wait that ended with the close is counted, all of it.
    assert!(counters.backpressure_waits.get() >= 1);
    let waited = counters.backpressure_seconds.get();
    assert!(waited >= 0.3, "waited {waited} s, the limit is 0.3 s");
    let (_, counters) = recorder.stop_within(Duration::from_secs(30)).await;
    assert!(counters.disconnects >= 1, "{counters:?}");
    assert!(
        counters.fill_rounds >= 1,
        "the missed frames were fetched: {counters:?}"
    );
    let mut n_rest = 0;
    for symbol in SYMBOLS {
        let truth = fake.ground_truth(symbol, hour.end() + 60_000_000);
        let path = file_path(root, &key(symbol, kind), hour);
        n_rest += assert_file_matches_truth_with_rest(&path, kind, &truth, hour).len();
    }
    // What the closed link missed came from REST; everything else was the
    // stream's, the frames held when the link closed among them.
    assert!(n_rest > 0, "the closed link missed nothing: {counters:?}");
    eprintln!("stalled disk: {n_rest} rows from REST, {counters:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_pings_but_delivers_nothing_is_replaced_and_nothing_is_lost() {
    // 3 symbols x 3 streams at 3 streams a connection: three links, one per
    // symbol. At 240x a kline stream pushes every 8 ms of real time, so every
    // link's bound is the 1 s floor set here (20 s by default). A ping left
    // unanswered for 1.5 s closes a link: the silent one must keep answering.
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(500),
            pong_timeout: Duration::from_millis(1500),
            ..Limits::default()
        },
        ..fake_config(240.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let bound = Duration::from_secs(1);
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let config = format!(
        "{}{}",
        connection_toml(&format!(
            "streams_per_connection = 3\nsilent_after_min_ms = {}",
            bound.as_millis()
        )),
        recorder_toml_patient(&fake, root, &SYMBOLS, &["trade", "aggTrade", "kline_1m"])
    );
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(20), "three links deliver", || {
        fake.counters().ws_handshakes_accepted == 3 && recorder.counters().frames_durable > 300
    })
    .await;
    // Silence one link inside the hour checked below, so what it withholds
    // must be in that hour's files.
    let hour = Hour::containing(SIM_START_US).next();
    wait_until(Duration::from_secs(20), "the hour runs", || {
        fake.sim_now_us() > hour.start() + 120_000_000
    })
    .await;
    let silenced_at = tokio::time::Instant::now();
    fake.inject(Fault::SilenceConnection {
        stream: "btcusdt@trade".to_owned(),
    });
    wait_until(Duration::from_secs(10), "the silent link replaced", || {
        recorder.counters().silent_links_replaced >= 1
    })
    .await;
    let took = silenced_at.elapsed();
    eprintln!("silent link replaced {took:?} after the fault (bound {bound:?})");
    // The bound, then a handshake, a SUBSCRIBE and the first frame.
    assert!(
        took < bound + Duration::from_secs(2),
        "replaced after {took:?} with a bound of {bound:?}"
    );
    wait_until(Duration::from_secs(10), "the silent link closed", || {
        fake.counters().ws_connections_open == 3
    })
    .await;
    let fake_counters = fake.counters();
    assert!(fake_counters.frames_silenced > 0, "{fake_counters:?}");
    assert_eq!(
        fake_counters.ws_pong_timeout_closes, 0,
        "the silent link answered pings to the end: {fake_counters:?}"
    );
    assert_eq!(
        fake_counters.ws_handshakes_accepted, 4,
        "one replacement, the delivering links left alone: {fake_counters:?}"
    );

    wait_until(Duration::from_secs(60), "the hour sealed", || {
        SYMBOLS.iter().all(|symbol| {
            kinds
                .iter()
                .all(|kind| file_path(root, &key(symbol, *kind), hour).exists())
        })
    })
    .await;
    let counters = recorder.stop().await;
    assert_eq!(counters.silent_links_replaced, 1, "{counters:?}");
    assert_eq!(
        counters.disconnects, 0,
        "replaced, never lost: {counters:?}"
    );
    let mut n_rest_rows_btc = 0;
    for symbol in SYMBOLS {
        let truth = fake.ground_truth(symbol, hour.end() + 60_000_000);
        for kind in kinds {
            let path = file_path(root, &key(symbol, kind), hour);
            let rest_keys = assert_file_matches_truth_with_rest(&path, kind, &truth, hour);
            assert_complete_hour(&path, hour);
            if symbol == "BTCUSDT" {
                n_rest_rows_btc += rest_keys.len();
            } else {
                assert!(
                    rest_keys.is_empty(),
                    "{symbol} {kind:?}: its link was never silent: {rest_keys:?}"
                );
            }
        }
    }
    eprintln!(
        "silent link: {} frames withheld, {n_rest_rows_btc} BTCUSDT rows filled from REST",
        fake_counters.frames_silenced
    );
    assert!(
        n_rest_rows_btc > 0,
        "what the silent link withheld came from REST"
    );
    fake.shutdown().await;
}

/// SUBSCRIBE requests the exchange refuses with an error body that carries
/// no id (the reference's error table), or never answers: the refused
/// batch is charged to the oldest request and asked again stream by
/// stream; the unanswered one is taken as made after ten seconds, and its
/// streams, silent, are asked for once more. Every stream then delivers:
/// the third hour (after both) comes whole from the stream and equals the
/// ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_refused_without_an_id_or_never_answered_end_delivering() {
    let fake = FakeExchange::start(fake_config(240.0))
        .await
        .expect("fake starts");
    // The first link's SUBSCRIBE is lost, the second's refused without an
    // id; the third is answered as usual.
    fake.inject(Fault::SubscribeUnanswered { count: 1 });
    fake.inject(Fault::SubscribeRefusedWithoutId { count: 1 });
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let kinds = [StreamKind::Trade, StreamKind::AggTrade, minute_klines()];
    let config = format!(
        "{}{}",
        connection_toml("streams_per_connection = 3\nsilent_after_min_ms = 1000"),
        recorder_toml_patient(&fake, root, &SYMBOLS, &["trade", "aggTrade", "kline_1m"])
    );
    let recorder = RunningRecorder::start(&config);
    let hour = Hour::containing(SIM_START_US).next().next();
    wait_until(Duration::from_secs(90), "the third hour sealed", || {
        SYMBOLS.iter().all(|symbol| {
            kinds
                .iter()
                .all(|kind| file_path(root, &key(symbol, *kind), hour).exists())
        })
    })
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    assert_eq!(
        (
            fake_counters.faults_injected.get("subscribe_unanswered"),
            fake_counters
                .faults_injected
                .get("subscribe_refused_without_id"),
        ),
        (Some(&1), Some(&1)),
        "{fake_counters:?}"
    );
    assert!(fake_counters.ws_control_errors >= 1, "{fake_counters:?}");
    assert!(
        counters.streams_subscribed_silent >= 2,
        "the lost request's streams were judged silent: {counters:?}"
    );
    for symbol in SYMBOLS {
        let truth = fake.ground_truth(symbol, hour.end() + 60_000_000);
        for kind in kinds {
            let path = file_path(root, &key(symbol, kind), hour);
            assert_file_matches_truth(&path, kind, &truth, hour);
            let by_source: serde_json::Value =
                serde_json::from_str(&metadata(&path)["rows_by_source"]).expect("JSON");
            assert_eq!(by_source["rest"], 0, "{}: {by_source}", path.display());
        }
    }
    fake.shutdown().await;
}

/// A rotation asked for (here by `serverShutdown`) while the handshake
/// budget is spent waits for a slot without leaving the old link: the link
/// reads on and answers every ping, where a connection task waiting for the
/// slot would leave them unanswered and the exchange would close the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_refusing_the_stream_named_in_its_url_leaves_the_streams_recorded() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    // An exchange that does not serve these streams named in a URL (as
    // the reference's undocumented USD-M `@trade` may be), while
    // SUBSCRIBE takes them.
    for stream in ["btcusdt@trade", "btcusdt@aggTrade"] {
        fake.inject(Fault::RefuseStreamInUrl {
            stream: stream.to_owned(),
        });
    }
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = config_with(&fake, root, &["trade", "aggTrade"], "");
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(20), "both streams deliver", || {
        let sent = fake.counters().ws_frames_sent;
        sent.get("trade").copied().unwrap_or(0) > 20
            && sent.get("aggTrade").copied().unwrap_or(0) > 20
    })
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    // The first URL named the trade stream, the second the aggTrade one,
    // the third none: one link, every stream subscribed by SUBSCRIBE.
    assert_eq!(fake_counters.ws_handshakes_rejected, 2, "{fake_counters:?}");
    assert_eq!(fake_counters.ws_handshakes_accepted, 1, "{fake_counters:?}");
    assert!(counters.frames_durable > 40, "{counters:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_handshake_is_slow_keeps_reading_the_old_link() {
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(300),
            pong_timeout: Duration::from_millis(1000),
            server_shutdown_grace: Duration::from_secs(60),
            ..Limits::default()
        },
        ..fake_config(60.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = config_with(&fake, root, &["trade", "aggTrade"], "");
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(20), "the link delivers", || {
        recorder.counters().frames_durable > 50
    })
    .await;
    // The replacement's upgrade is answered after 4 s: pings every 300 ms
    // and a close after 1 s without a pong, so an old link left unread
    // while the replacement dials is closed by the exchange.
    fake.inject(Fault::SlowHandshakes {
        delay_ms: 4_000,
        count: 1,
    });
    fake.inject(Fault::ServerShutdown);
    wait_until(
        Duration::from_secs(30),
        "the replacement takes over",
        || recorder.counters().rotations >= 1,
    )
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    assert_eq!(fake_counters.ws_pong_timeout_closes, 0, "{fake_counters:?}");
    assert_eq!(fake_counters.ws_handshakes_accepted, 2, "{fake_counters:?}");
    assert_eq!(counters.disconnects, 0, "{counters:?}");
    fake.shutdown().await;
}

/// A `serverShutdown` heard by the replacement while it still overlaps the
/// old link (it landed on a server about to stop) is kept: once the
/// replacement takes over it is rotated again, make-before-break, before
/// the exchange closes it. Before, the event on a replacement was ignored,
/// and the link the exchange then closed was lost (a gap for REST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutdown_heard_by_the_replacement_rotates_it_once_it_takes_over() {
    // ETHUSDT halts a simulated minute in: a replacement never sees its
    // trades, so a rotation lasts the whole overlap timeout (2 s), the
    // window in which the replacement hears its own shutdown.
    let settings = fake_config(60.0);
    let halt_from = settings.sim_start_us + 60 * 1_000_000;
    let fake = FakeExchange::start(FakeConfig {
        halts: vec![(
            "ETHUSDT".to_owned(),
            halt_from,
            halt_from + 10 * 3_600_000_000,
        )],
        limits: Limits {
            server_shutdown_grace: Duration::from_secs(4),
            ..Limits::default()
        },
        ..settings
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config = format!(
        "{}{}",
        connection_toml("rotation_overlap_timeout_ms = 2000"),
        recorder_toml_patient(&fake, root, &["BTCUSDT", "ETHUSDT"], &["trade"])
    );
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(20), "the halt begins", || {
        fake.sim_now_us() > halt_from + 5_000_000 && recorder.counters().frames_durable > 20
    })
    .await;

    let handshakes = fake.counters().ws_handshakes_accepted;
    fake.inject(Fault::ServerShutdown);
    wait_until(Duration::from_secs(10), "the replacement connects", || {
        fake.counters().ws_handshakes_accepted > handshakes
    })
    .await;
    fake.inject(Fault::ServerShutdownNewest {
        stream: "btcusdt@trade".to_owned(),
    });
    wait_until(
        Duration::from_secs(30),
        "the replacement replaced in turn, or lost",
        || {
            let counters = recorder.counters();
            counters.rotations >= 2 || counters.disconnects > 0
        },
    )
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    assert_eq!(counters.disconnects, 0, "{counters:?}");
    assert_eq!(
        fake_counters.ws_handshakes_accepted,
        handshakes + 2,
        "{fake_counters:?}"
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_a_handshake_slot_keeps_reading_the_old_link() {
    let fake = FakeExchange::start(FakeConfig {
        limits: Limits {
            ping_interval: Duration::from_millis(300),
            pong_timeout: Duration::from_millis(1000),
            server_shutdown_grace: Duration::from_secs(60),
            ..Limits::default()
        },
        ..fake_config(60.0)
    })
    .await
    .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    // One handshake an hour: the first link takes it.
    let config = config_with(
        &fake,
        root,
        &["trade", "aggTrade"],
        "handshake_limit = 1\nhandshake_window_secs = 3600",
    );
    let recorder = RunningRecorder::start(&config);
    wait_until(Duration::from_secs(20), "the link delivers", || {
        recorder.counters().frames_durable > 50
    })
    .await;
    fake.inject(Fault::ServerShutdown);
    let frames_then = recorder.counters().frames_durable;
    // Pings every 300 ms, closed after 1 s without a pong: frames for
    // several seconds more mean the old link was read all along.
    wait_until(
        Duration::from_secs(20),
        "the old link delivers on while the rotation waits",
        || recorder.counters().frames_durable > frames_then + 500,
    )
    .await;
    let counters = recorder.stop().await;
    let fake_counters = fake.counters();
    assert_eq!(fake_counters.ws_pong_timeout_closes, 0, "{fake_counters:?}");
    assert_eq!(fake_counters.ws_handshakes_accepted, 1, "{fake_counters:?}");
    assert_eq!(counters.disconnects, 0, "{counters:?}");
    fake.shutdown().await;
}

/// A burst reaches the recorder a few frames a message (one channel send
/// per frame cost more than the frame's WAL record), never more than
/// `FRAMES_PER_MESSAGE`, each message's frames in the order read, and every
/// frame once: the connection task alone against the fake's firehose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_the_recorder_a_few_frames_a_message_in_the_order_read() {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;

    use binance_recorder::binance::decode::{decode_frame, Decoded};
    use binance_recorder::binance::markets::Route;
    use binance_recorder::binance::ws::{
        run_connection, ConnectionPlan, HandshakeBudget, Inbound, MarketActivity, OpenLinks,
        FRAMES_PER_MESSAGE,
    };
    use binance_recorder::recorder::CHANNEL_CAPACITY;
    use fake_binance::FirehoseConfig;

    const N_FRAMES: u64 = 30_000;
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let mut settings = fake_config(1.0);
    settings.symbols = symbols.iter().map(|symbol| symbol.to_string()).collect();
    settings.mean_orders_per_sec = 0.001;
    settings.firehose = Some(FirehoseConfig {
        frames: N_FRAMES,
        max_duration: Duration::from_secs(120),
        rate_per_sec: None,
        step_us: 1_000,
    });
    let fake = FakeExchange::start(settings).await.expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let config = binance_recorder::config::Config::from_toml(&recorder_toml(
        &fake,
        scratch.path(),
        &symbols,
        &["aggTrade"],
    ))
    .expect("valid config");
    let market = &config.markets[0];
    let (sender, mut receiver) = tokio::sync::mpsc::channel(CHANNEL_CAPACITY);
    let plan = ConnectionPlan {
        market: market.market,
        task: 0,
        ws_base_url: market.ws_url.clone(),
        route: Route::Unrouted,
        streams: market
            .symbols
            .iter()
            .flat_map(|symbol| market.streams.iter().map(|kind| (symbol.clone(), *kind)))
            .collect(),
        activity: Arc::new(MarketActivity::default()),
        retired: tokio::sync::watch::channel(Arc::new(BTreeSet::new())).1,
        open_links: Arc::new(OpenLinks::default()),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let connection = tokio::spawn(run_connection(
        plan,
        market.connection.clone(),
        Arc::new(HandshakeBudget::new(300, Duration::from_secs(300))),
        sender,
        cancel.clone(),
        Arc::new(binance_recorder::metrics::Counters::default()),
    ));
    let mut message_sizes = Vec::new();
    let mut last_id: HashMap<String, i64> = HashMap::new();
    let mut n_frames = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while n_frames < N_FRAMES {
            let frames = match receiver.recv().await.expect("the connection task runs") {
                Inbound::Frame {
                    recv_time, payload, ..
                } => vec![(recv_time, payload)],
                Inbound::Frames { frames, .. } => frames,
                _ => continue,
            };
            message_sizes.push(frames.len());
            let mut recv_times = Vec::new();
            for (recv_time, payload) in frames {
                recv_times.push(recv_time);
                let Ok(Decoded::Row { key, row, .. }) =
                    decode_frame(market.market, payload.as_bytes(), recv_time)
                else {
                    continue;
                };
                n_frames += 1;
                // Ids contiguous per symbol from 1: each once, in order.
                let last = last_id.entry(key.symbol.to_string()).or_insert(0);
                assert_eq!(row.key(), *last + 1, "{key:?} after {last}");
                *last = row.key();
            }
            assert!(
                recv_times.is_sorted(),
                "a message's frames in the order read: {recv_times:?}"
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n_frames} of {N_FRAMES} frames in two minutes"));
    cancel.cancel();
    connection
        .await
        .expect("the connection task ends without a panic");
    let most = message_sizes.iter().max().copied().unwrap_or(0);
    let batched = message_sizes.iter().filter(|size| **size > 1).count();
    eprintln!(
        "{n_frames} frames in {} messages, {batched} of more than one, at most {most}",
        message_sizes.len()
    );
    assert!(most <= FRAMES_PER_MESSAGE, "{most} frames in one message");
    assert!(
        message_sizes.len() as u64 <= N_FRAMES / 2,
        "a burst goes a few frames a message: {} messages for {n_frames} frames",
        message_sizes.len()
    );
    fake.shutdown().await;
}
