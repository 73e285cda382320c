//! The daemon as systemd runs it: the shipped unit passes
//! `systemd-analyze verify` and scores at most 2.0 in `systemd-analyze
//! security`; the binary speaks the notify protocol (READY=1 once
//! subscribed, STATUS=, WATCHDOG=1 keep-alives, STOPPING=1) and SIGHUP
//! stops it in order.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fake_binance::FakeExchange;

use crate::support::*;

/// The shipped unit with its `ExecStart` binary replaced by the one under
/// test, so `systemd-analyze verify` can check the command too.
fn unit_under_test(directory: &Path) -> std::path::PathBuf {
    let shipped = include_str!("../../systemd/binance-recorder.service");
    assert!(shipped.contains("/usr/local/bin/binance-recorder run"));
    let unit = shipped.replace(
        "/usr/local/bin/binance-recorder",
        env!("CARGO_BIN_EXE_binance-recorder"),
    );
    let path = directory.join("binance-recorder.service");
    std::fs::write(&path, unit).expect("unit written");
    path
}

fn systemd_analyze(arguments: &[&str], unit: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(arguments)
        .arg(unit)
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_shipped_unit_verifies_and_its_exposure_is_at_most_2() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let unit = unit_under_test(scratch.path());

    let (verified, text) = systemd_analyze(&["verify"], &unit);
    assert!(verified, "systemd-analyze verify: {text}");

    let (_, text) = systemd_analyze(&["security", "--offline=true", "--no-pager"], &unit);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            let rest = line.split("Overall exposure level for").nth(1)?;
            rest.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(exposure <= 2.0, "exposure {exposure} above 2.0: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_keepalives_and_stopping_and_sighup_stops_in_order() {
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let config_path = root.join("config.toml");
    std::fs::write(
        &config_path,
        recorder_toml(&fake, root, &["BTCUSDT", "ETHUSDT"], &["trade", "kline_1m"]),
    )
    .expect("config written");
    // The service manager's end of the notify socket.
    let socket_path = root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket binds");
    socket.set_nonblocking(true).expect("non-blocking socket");
    let mut heard: Vec<String> = Vec::new();
    let listen = |heard: &mut Vec<String>| {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            heard.extend(
                String::from_utf8_lossy(&buffer[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
    };

    let socket_text = socket_path.to_str().expect("UTF-8 path");
    // One second: a keep-alive every quarter of it while the pipeline moves.
    let recorder = RecorderProcess::start_with_env(
        &config_path,
        root,
        "warn",
        Stdio::inherit(),
        &[("NOTIFY_SOCKET", socket_text), ("WATCHDOG_USEC", "1000000")],
    );
    wait_until(
        Duration::from_secs(30),
        "READY=1, a STATUS= line and three keep-alives",
        || {
            listen(&mut heard);
            heard.iter().any(|line| line == "READY=1")
                && heard.iter().any(|line| line.starts_with("STATUS="))
                && heard.iter().filter(|line| *line == "WATCHDOG=1").count() >= 3
        },
    )
    .await;
    let ready_at = heard
        .iter()
        .position(|line| line == "READY=1")
        .expect("ready");
    let status = heard[ready_at..]
        .iter()
        .find(|line| line.starts_with("STATUS="))
        .expect("a status with READY=1");
    assert!(status.contains("4 streams"), "{status}");
    assert!(
        !status.contains("no subscribed link"),
        "READY=1 came once spot was subscribed: {status}"
    );

    recorder.stop_with_signal("HUP").await;
    listen(&mut heard);
    assert!(
        heard.iter().any(|line| line == "STOPPING=1"),
        "STOPPING=1 on the orderly stop: {heard:?}"
    );
}

fn run_script(script: &str, destdir: &Path, arguments: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/").to_owned() + script)
        .args(arguments)
        .env("DESTDIR", destdir)
        .env("BINARY", env!("CARGO_BIN_EXE_binance-recorder"))
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed: {text}");
    text
}

/// install.sh into a staging tree, twice (an upgrade): binary, unit and
/// config land, an operator's config is kept; uninstall.sh removes binary
/// and unit and leaves the config and the recorded data alone.
#[test]
fn install_is_idempotent_keeps_the_config_and_uninstall_keeps_the_data() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let stage = scratch.path();
    let text = run_script("install.sh", stage, &[]);
    assert!(text.contains("installed"), "{text}");
    let binary = stage.join("usr/local/bin/binance-recorder");
    let unit = stage.join("etc/systemd/system/binance-recorder.service");
    let config = stage.join("etc/binance-recorder/config.toml");
    for path in [&binary, &unit, &config] {
        assert!(path.is_file(), "{} installed", path.display());
    }
    // The operator edits the config and records data; then upgrades.
    std::fs::write(
        &config,
        include_str!("../../config.toml").replace("grace_ms = 10000", "grace_ms = 20000"),
    )
    .expect("config edited");
    let data = stage.join("var/lib/binance-recorder/data/parquet/market=spot/kept.parquet");
    std::fs::create_dir_all(data.parent().expect("parent")).expect("data folder");
    std::fs::write(&data, b"recorded").expect("data written");
    let text = run_script("install.sh", stage, &[]);
    assert!(text.contains("kept"), "{text}");
    let kept = std::fs::read_to_string(&config).expect("config read");
    assert!(kept.contains("grace_ms = 20000"), "operator's config kept");

    run_script("uninstall.sh", stage, &[]);
    run_script("uninstall.sh", stage, &[]);
    assert!(!binary.exists() && !unit.exists());
    assert!(config.is_file(), "config kept");
    assert_eq!(std::fs::read(&data).expect("data kept"), b"recorded");
}

/// A WAL disk that hangs in `sync_data` while `wedged` is set (a dead
/// disk, a stuck NFS mount), and counts the syncs it holds.
#[derive(Debug, Default)]
struct WedgeableDisk {
    wedged: std::sync::atomic::AtomicBool,
    n_held: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct WedgeableFile {
    file: Box<dyn binance_recorder::wal::WalFile>,
    disk: std::sync::Arc<WedgeableDisk>,
}

impl binance_recorder::wal::WalFile for WedgeableFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.disk.wedged.load(Ordering::SeqCst) {
            self.disk.n_held.fetch_add(1, Ordering::SeqCst);
            // The hang being simulated; released by the test.
            while self.disk.wedged.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(5));
            }
        }
        self.file.sync_data()
    }
}

#[derive(Debug, Default, Clone)]
struct WedgeableFs(std::sync::Arc<WedgeableDisk>);

impl FileFault for WedgeableFs {
    fn wrap(
        &self,
        file: Box<dyn binance_recorder::wal::WalFile>,
    ) -> Box<dyn binance_recorder::wal::WalFile> {
        Box::new(WedgeableFile {
            file,
            disk: self.0.clone(),
        })
    }
}

/// The watchdog's point: while the WAL cannot commit (a hung disk), the
/// keep-alives stop, so systemd kills and restarts the daemon; when the
/// disk answers again they resume.
///
/// Runs the recorder in this process with `NOTIFY_SOCKET` and
/// `WATCHDOG_USEC` set in its environment: the test command (nextest) runs
/// every test in its own process, so no other test sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_while_the_wal_is_wedged() {
    use std::sync::atomic::Ordering;
    let fake = FakeExchange::start(fake_config(60.0))
        .await
        .expect("fake starts");
    let scratch = tempfile::tempdir().expect("scratch directory");
    let root = scratch.path();
    let socket_path = root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket binds");
    socket.set_nonblocking(true).expect("non-blocking socket");
    let n_keepalives = || {
        let mut buffer = [0u8; 4096];
        let mut n = 0;
        while let Ok(length) = socket.recv(&mut buffer) {
            n += String::from_utf8_lossy(&buffer[..length])
                .lines()
                .filter(|line| *line == "WATCHDOG=1")
                .count();
        }
        n
    };
    std::env::set_var("NOTIFY_SOCKET", &socket_path);
    std::env::set_var("WATCHDOG_USEC", "1000000");
    let disk = WedgeableFs::default();
    let recorder = RunningRecorder::start_with_seams(
        &recorder_toml(&fake, root, &["BTCUSDT", "ETHUSDT"], &["trade"]),
        binance_recorder::recorder::Seams {
            wal_fs: std::sync::Arc::new(FaultyFs(disk.clone())),
            ..Default::default()
        },
    );
    let mut heard = 0;
    wait_until(Duration::from_secs(30), "two keep-alives", || {
        heard += n_keepalives();
        heard >= 2
    })
    .await;

    disk.0.wedged.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(30), "a WAL sync hangs", || {
        disk.0.n_held.load(Ordering::SeqCst) > 0
    })
    .await;
    // Keep-alives stop once the WAL has not committed for half the
    // interval (500 ms): drain what was sent before, then observe a window
    // of three intervals (an observation window, not a wait for an event).
    let hung_at = std::time::Instant::now();
    let mut after_half_interval = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    while hung_at.elapsed() < Duration::from_secs(3) {
        ticker.tick().await;
        let n = n_keepalives();
        if hung_at.elapsed() > Duration::from_millis(600) {
            after_half_interval += n;
        }
    }
    assert_eq!(after_half_interval, 0, "no keep-alive while the WAL hangs");

    disk.0.wedged.store(false, Ordering::SeqCst);
    let mut resumed = 0;
    wait_until(Duration::from_secs(30), "keep-alives resume", || {
        resumed += n_keepalives();
        resumed >= 2
    })
    .await;
    recorder.stop().await;
    fake.shutdown().await;
}
