//! Live anomaly detection: every recorded call is handed to the `postern-detect` engine on its
//! own thread, off the request path, through a bounded queue. A full queue drops the event for
//! detection only (the call, its event line and audit entry are unaffected) and the drop is
//! counted in `postern_detector_dropped_total` — never silently. Alerts are appended to
//! `<data_dir>/alerts.jsonl` (rotated by size the way `events.jsonl` is: `alerts.jsonl.1`,
//! `.2`, …), kept for `GET /v1/alerts`, and counted by kind. The engine's baselines are
//! snapshotted to `<data_dir>/detector-snapshot.json` every minute and at shutdown, and restored
//! at start, so a restart does not forget them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_detect::engine::{DetectEvent, Engine, EngineConfig};

use crate::events::{open_log, Rotation};
use crate::metrics::Metrics;

pub const ALERTS_FILE: &str = "alerts.jsonl";
pub const SNAPSHOT_FILE: &str = "detector-snapshot.json";
/// Calls queued for the detector, read every [`BATCH_WAIT`]: 16,384 is over 200 ms of calls at
/// 70k/s. The queue's room (160 bytes a call) is all written, and so resident, when it is made:
/// 2.5 MiB here (65,536 calls held 10 MiB of an idle gateway's memory).
const QUEUE: usize = 16_384;
/// How long the detector thread sleeps between batches (the added alert latency at most).
const BATCH_WAIT: Duration = Duration::from_millis(10);
const RECENT: usize = 1_000;
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

pub struct Detector {
    sender: SyncSender<DetectEvent>,
    stop: Arc<AtomicBool>,
    recent: Arc<Mutex<VecDeque<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

/// Where alerts go and when the file rotates.
#[derive(Debug, Clone)]
pub struct AlertFileOptions {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: u32,
}

impl Detector {
    /// Starts the detector thread (its snapshot in `data_dir`), appending alerts to
    /// `alert_file` (the gateway: `<data_dir>/alerts.jsonl`, rotated as `events.jsonl` is).
    pub fn start(
        data_dir: &Path,
        alert_file: AlertFileOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Detector>> {
        let snapshot_path = data_dir.join(SNAPSHOT_FILE);
        let engine = match std::fs::read(&snapshot_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(snapshot) => {
                    let snapshot: postern_detect::engine::EngineSnapshot = snapshot;
                    let (version, held) = (snapshot.version, snapshot.key_count());
                    let engine = Engine::restore_with(snapshot, EngineConfig::default());
                    if version != postern_detect::engine::SNAPSHOT_VERSION {
                        tracing::warn!(version, path = %snapshot_path.display(), "detector snapshot of another version; starting with empty baselines");
                    } else if engine.key_count() < held {
                        tracing::warn!(dropped = held - engine.key_count(), path = %snapshot_path.display(), "detector snapshot keys of another shape dropped; they are learned again");
                    }
                    engine
                }
                Err(error) => {
                    tracing::warn!(%error, path = %snapshot_path.display(), "detector snapshot unreadable; starting with empty baselines");
                    Engine::new(EngineConfig::default())
                }
            },
            Err(_) => Engine::new(EngineConfig::default()),
        };
        // The last run's alerts, read before the writer opens the file (which may end a torn
        // last line), so `/v1/alerts` still lists them after a restart.
        let mut earlier = VecDeque::with_capacity(RECENT);
        earlier.extend(crate::events::read_back(&alert_file.path, RECENT));
        let alerts = AlertWriter::open(alert_file)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let recent = Arc::new(Mutex::new(earlier));
        let thread = std::thread::Builder::new()
            .name("postern-detector".to_string())
            .spawn({
                let (stop, recent, metrics) = (stop.clone(), recent.clone(), metrics.clone());
                move || {
                    let _background = crate::workers::background_thread();
                    run(
                        engine,
                        receiver,
                        alerts,
                        snapshot_path,
                        stop,
                        recent,
                        metrics,
                    )
                }
            })?;
        Ok(Arc::new(Detector {
            sender,
            stop,
            recent,
            thread: Mutex::new(Some(thread)),
            metrics,
        }))
    }

    /// Hands a finished call to the engine without waiting.
    pub fn observe(&self, event: DetectEvent) {
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.detector_dropped.inc();
            }
        }
    }

    /// The most recent alerts (JSON lines), oldest first.
    pub fn recent(&self, limit: usize) -> Vec<String> {
        let recent = self.recent.lock().expect("alerts lock");
        recent
            .iter()
            .skip(recent.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Drains the queue, writes a final snapshot, stops the thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.lock().expect("detector lock").take() {
            let _ = thread.join();
        }
    }
}

fn run(
    mut engine: Engine,
    receiver: Receiver<DetectEvent>,
    mut alerts: AlertWriter,
    snapshot_path: PathBuf,
    stop: Arc<AtomicBool>,
    recent: Arc<Mutex<VecDeque<String>>>,
    metrics: Arc<Metrics>,
) {
    let mut last_snapshot = Instant::now();
    let observe = |engine: &mut Engine, alerts: &mut AlertWriter, event: DetectEvent| {
        let now = event.time_unix_ms;
        for alert in engine.observe(&event, now) {
            metrics.observe_alert(alert.kind.as_str());
            if let Ok(line) = serde_json::to_string(&alert) {
                alerts.append(&line);
                let mut recent = recent.lock().expect("alerts lock");
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
        }
    };
    // Batches, not a wake-up per event: the thread drains what is queued, then sleeps for
    // BATCH_WAIT. Senders never block or wake it (`try_send` on a queue nobody waits on), so
    // the request path pays no futex call for detection.
    loop {
        let mut handled = 0usize;
        let disconnected = loop {
            match receiver.try_recv() {
                Ok(event) => {
                    observe(&mut engine, &mut alerts, event);
                    handled += 1;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            let _ = alerts.flush();
            write_snapshot(&engine, &snapshot_path);
            last_snapshot = Instant::now();
        }
        if disconnected {
            break;
        }
        if handled == 0 {
            let _ = alerts.flush();
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        std::thread::sleep(BATCH_WAIT);
    }
    let _ = alerts.flush();
    write_snapshot(&engine, &snapshot_path);
}

/// Appends alert lines to `alerts.jsonl`; before a line that would take the file past
/// `max_file_bytes` it shifts `alerts.jsonl.N` up by one (dropping the oldest beyond
/// `max_files`), renames the file to `alerts.jsonl.1` and starts a new one — the convention
/// of `events.jsonl` (events.rs). Buffered; an IO error is logged and writing goes on.
struct AlertWriter {
    max_file_bytes: u64,
    rotation: Rotation,
    out: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    size: u64,
}

impl AlertWriter {
    fn open(options: AlertFileOptions) -> std::io::Result<Self> {
        let (file, size, _) = open_log(&options.path)?;
        Ok(AlertWriter {
            max_file_bytes: options.max_file_bytes,
            rotation: Rotation::new(options.path, options.max_files),
            out: BufWriter::new(file),
            size,
        })
    }

    fn append(&mut self, line: &str) {
        let line_bytes = line.len() as u64 + 1;
        let full = self.size > 0 && self.size + line_bytes > self.max_file_bytes;
        if full && self.rotation.due() {
            if let Err(error) = self.rotate() {
                // Keep appending to the file open now rather than lose alerts; rotating is
                // tried again after the retry interval.
                tracing::error!(%error, path = %self.rotation.path().display(), "could not rotate the alert file; appending to it until a rotation succeeds");
            }
        }
        match writeln!(self.out, "{line}") {
            Ok(()) => self.size += line_bytes,
            Err(error) => {
                tracing::error!(%error, path = %self.rotation.path().display(), "could not append to the alert file")
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out = BufWriter::new(self.rotation.rotate()?);
        self.size = 0;
        Ok(())
    }
}

fn write_snapshot(engine: &Engine, path: &Path) {
    let bytes = match serde_json::to_vec(&engine.snapshot()) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "could not serialize the detector snapshot");
            return;
        }
    };
    // A crash leaves the old snapshot or the new one, never an empty file (which would start
    // every baseline afresh).
    if let Err(error) = postern_keyfile::replace_file(path, &bytes) {
        tracing::error!(%error, path = %path.display(), "could not write the detector snapshot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::rotated_name;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn alert_line(index: usize) -> String {
        format!(
            r#"{{"time":"2026-11-28T00:00:00.000Z","integration":"acme","kind":"rate_spike","score":0.9,"observed":{index}.0,"baseline":1.0}}"#
        )
    }

    /// A rotation whose open fails keeps every alert (in the file moved to `.1`), pushes no
    /// kept file out, and the retry a second later only opens the new file.
    #[test]
    fn a_failed_alert_rotation_loses_nothing_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ALERTS_FILE);
        let line_bytes = alert_line(10).len() as u64 + 1;
        let options = AlertFileOptions {
            path: path.clone(),
            max_file_bytes: 2 * line_bytes,
            max_files: 3,
        };
        let mut writer = AlertWriter::open(options).unwrap();
        for index in 10..14 {
            writer.append(&alert_line(index));
        }
        // alerts.jsonl.1 holds 10, 11; alerts.jsonl 12, 13. The next rotation's open fails.
        writer.rotation.failing_opens = 1;
        for index in 14..18 {
            writer.append(&alert_line(index));
        }
        writer.flush().unwrap();
        assert!(!path.exists(), "moved away, its open failed");
        assert_eq!(
            lines(&rotated_name(&path, 1)),
            (12..18).map(alert_line).collect::<Vec<_>>(),
            "alerts went on into the open file"
        );
        assert_eq!(
            lines(&rotated_name(&path, 2)),
            (10..12).map(alert_line).collect::<Vec<_>>()
        );
        writer.rotation.retry_now();
        writer.append(&alert_line(18));
        writer.flush().unwrap();
        assert_eq!(lines(&path), vec![alert_line(18)]);
        assert_eq!(
            lines(&rotated_name(&path, 2)),
            (10..12).map(alert_line).collect::<Vec<_>>(),
            "the retry shifted nothing out"
        );
    }

    #[test]
    fn alert_file_rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ALERTS_FILE);
        // An alert left from before a restart: the size counts from it.
        std::fs::write(&path, format!("{}\n", alert_line(0))).unwrap();
        let line_bytes = alert_line(10).len() as u64 + 1;
        let options = AlertFileOptions {
            path: path.clone(),
            max_file_bytes: 3 * line_bytes,
            max_files: 2,
        };
        let mut writer = AlertWriter::open(options).unwrap();
        for index in 10..21 {
            writer.append(&alert_line(index));
        }
        writer.flush().unwrap();
        // 12 lines, 3 a file: the newest in alerts.jsonl, then .1, .2; the oldest dropped.
        assert_eq!(lines(&path), (18..21).map(alert_line).collect::<Vec<_>>());
        assert_eq!(
            lines(&rotated_name(&path, 1)),
            (15..18).map(alert_line).collect::<Vec<_>>()
        );
        assert_eq!(
            lines(&rotated_name(&path, 2)),
            (12..15).map(alert_line).collect::<Vec<_>>()
        );
        assert!(!rotated_name(&path, 3).exists());
        for index in [0, 1, 2] {
            let file = if index == 0 {
                path.clone()
            } else {
                rotated_name(&path, index)
            };
            let size = std::fs::metadata(&file).unwrap().len();
            assert!(size <= 3 * line_bytes, "{}: {size}", file.display());
            // Whole lines only.
            for line in lines(&file) {
                serde_json::from_str::<serde_json::Value>(&line).unwrap();
            }
        }
        // A line larger than the limit still goes in, alone in its file.
        writer.append(&"x".repeat(4 * line_bytes as usize));
        writer.flush().unwrap();
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(
            lines(&rotated_name(&path, 1)),
            (18..21).map(alert_line).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_detector_writes_rotated_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ALERTS_FILE);
        let options = AlertFileOptions {
            path: path.clone(),
            max_file_bytes: 300,
            max_files: 3,
        };
        let detector =
            Detector::start(dir.path(), options.clone(), Arc::new(Metrics::new())).unwrap();
        // A day of one call a minute from one caller, then callers never seen: each new
        // caller is one `new_caller` alert.
        let start_ms = 1_795_996_800_000i64;
        let event = |minute: i64, caller: &str| DetectEvent {
            time_unix_ms: start_ms + minute * 60_000,
            integration: Some("acme".into()),
            caller: Some(caller.into()),
            operation: Some("get".into()),
            status: 200,
            request_bytes: 10,
            response_bytes: 100,
            duration_ms: 5.0,
            source_ip: Some("10.0.0.1".into()),
            decision: Some("allow".into()),
            reason: Some("granted".into()),
            host: None,
        };
        for minute in 0..1_441 {
            detector.observe(event(minute, "checkout"));
        }
        for index in 0..12 {
            detector.observe(event(1_441 + index, &format!("intruder-{index}")));
        }
        detector.stop();
        let mut all: Vec<String> = Vec::new();
        for index in (1..=3).rev() {
            all.extend(lines(&rotated_name(&path, index)));
        }
        all.extend(lines(&path));
        assert!(std::fs::metadata(rotated_name(&path, 1)).is_ok(), "rotated");
        assert!(!rotated_name(&path, 4).exists());
        let callers: Vec<String> = all
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|alert| alert["kind"] == "new_caller")
            .map(|alert| alert["caller"].as_str().unwrap().to_owned())
            .collect();
        // The newest alerts are all there, oldest first; the oldest files were dropped.
        assert!(!callers.is_empty() && callers.len() < 12, "{callers:?}");
        let first = 12 - callers.len();
        assert_eq!(
            callers,
            (first..12)
                .map(|index| format!("intruder-{index}"))
                .collect::<Vec<_>>()
        );
        // After a restart, the list is what the last two files hold.
        let mut kept = lines(&rotated_name(&path, 1));
        kept.extend(lines(&path));
        let again = Detector::start(dir.path(), options, Arc::new(Metrics::new())).unwrap();
        assert!(!kept.is_empty());
        assert_eq!(again.recent(usize::MAX), kept);
        again.stop();
    }
}
