//! Live anomaly detection: every recorded call is handed to the `postern-detect` engine on its
//! own thread, off the request path, through a bounded queue. A full queue drops the event for
//! detection only (the call, its event line and audit entry are unaffected) and the drop is
//! counted in `postern_detector_dropped_total` — never silently. Alerts are appended to
//! `<data_dir>/alerts.jsonl`, kept for `GET /v1/alerts`, and counted by kind. The engine's
//! baselines are snapshotted to `<data_dir>/detector-snapshot.json` every minute and at shutdown,
//! and restored at start, so a restart does not forget them.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_detect::engine::{DetectEvent, Engine, EngineConfig};

use crate::metrics::Metrics;

pub const ALERTS_FILE: &str = "alerts.jsonl";
pub const SNAPSHOT_FILE: &str = "detector-snapshot.json";
const QUEUE: usize = 65_536;
const RECENT: usize = 1_000;
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

pub struct Detector {
    sender: SyncSender<DetectEvent>,
    stop: Arc<AtomicBool>,
    recent: Arc<Mutex<VecDeque<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Detector {
    pub fn start(data_dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Detector>> {
        let snapshot_path = data_dir.join(SNAPSHOT_FILE);
        let engine = match std::fs::read(&snapshot_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(snapshot) => Engine::restore(snapshot),
                Err(error) => {
                    tracing::warn!(%error, path = %snapshot_path.display(), "detector snapshot unreadable; starting with empty baselines");
                    Engine::new(EngineConfig::default())
                }
            },
            Err(_) => Engine::new(EngineConfig::default()),
        };
        let alerts = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join(ALERTS_FILE))?;
        let (sender, receiver) = sync_channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(RECENT)));
        let thread = std::thread::Builder::new()
            .name("postern-detector".to_string())
            .spawn({
                let (stop, recent, metrics) = (stop.clone(), recent.clone(), metrics.clone());
                move || {
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
    alerts: std::fs::File,
    snapshot_path: PathBuf,
    stop: Arc<AtomicBool>,
    recent: Arc<Mutex<VecDeque<String>>>,
    metrics: Arc<Metrics>,
) {
    let mut alerts = std::io::BufWriter::new(alerts);
    let mut last_snapshot = Instant::now();
    loop {
        match receiver.recv_timeout(Duration::from_millis(250)) {
            Ok(event) => {
                let now = event.time_unix_ms;
                for alert in engine.observe(&event, now) {
                    metrics.observe_alert(alert.kind.as_str());
                    if let Ok(line) = serde_json::to_string(&alert) {
                        let _ = writeln!(alerts, "{line}");
                        let mut recent = recent.lock().expect("alerts lock");
                        if recent.len() == RECENT {
                            recent.pop_front();
                        }
                        recent.push_back(line);
                    }
                }
                if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                    let _ = alerts.flush();
                    write_snapshot(&engine, &snapshot_path);
                    last_snapshot = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let _ = alerts.flush();
        if last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            write_snapshot(&engine, &snapshot_path);
            last_snapshot = Instant::now();
        }
        if stop.load(Ordering::Acquire) {
            // Drain what is already queued, then stop.
            while let Ok(event) = receiver.try_recv() {
                let now = event.time_unix_ms;
                for alert in engine.observe(&event, now) {
                    metrics.observe_alert(alert.kind.as_str());
                    if let Ok(line) = serde_json::to_string(&alert) {
                        let _ = writeln!(alerts, "{line}");
                    }
                }
            }
            break;
        }
    }
    let _ = alerts.flush();
    write_snapshot(&engine, &snapshot_path);
}

fn write_snapshot(engine: &Engine, path: &Path) {
    let bytes = match serde_json::to_vec(&engine.snapshot()) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "could not serialize the detector snapshot");
            return;
        }
    };
    let tmp = path.with_extension("json.tmp");
    if let Err(error) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)) {
        tracing::error!(%error, path = %path.display(), "could not write the detector snapshot");
    }
}
