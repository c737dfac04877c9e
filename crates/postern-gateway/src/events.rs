//! The call event: one JSON object per call, allowed or denied, appended to
//! `<data_dir>/events.jsonl` and kept in a bounded in-memory ring for the admin API.
//!
//! The schema is documented in `docs/EVENTS.md`; fields are only ever added. Events never hold a
//! secret, a raw path or a body: the path is the operation's template.
//!
//! Writing is off the request path: the data plane sends the event on a bounded channel and a
//! single writer task serializes, appends and rotates. A full channel applies back-pressure rather
//! than dropping; an I/O failure is counted and logged, and writing resumes when the disk recovers.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Version of the event schema; bumped only for incompatible changes.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// How many recent events the admin API can return.
pub const RECENT_EVENTS_CAPACITY: usize = 10_000;

/// One call, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct CallEvent {
    pub schema_version: u32,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub request_id: String,
    pub integration: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<String>,
    pub method: String,
    /// The operation's path template, never the raw path.
    pub path: Option<String>,
    pub status: u16,
    pub decision: Decision,
    pub reason: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
    pub upstream_addr: Option<String>,
    pub source_ip: String,
    /// How the caller was identified: `token`, `mtls` or absent.
    pub auth: Option<&'static str>,
    /// Downstream protocol: `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The Cedar policy that decided (`grant-N`, or a custom policy's id); absent when no
    /// policy applied (not granted) or the call was refused before authorization.
    pub policy: Option<String>,
    /// Set when the vendor answered with a redirect whose Location leaves the upstream origin.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redirect_off_origin: bool,
    /// Set when the response body stopped early (client went away, limit hit, upstream reset).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// Counters the writer keeps; exported to `/metrics`.
#[derive(Debug, Default)]
pub struct EventStats {
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
}

enum Command {
    Record(Box<CallEvent>),
    Flush(oneshot::Sender<()>),
}

/// Handle used by the data plane to record events.
#[derive(Clone)]
pub struct EventSink {
    sender: mpsc::Sender<Command>,
    recent: Arc<Mutex<VecDeque<Arc<str>>>>,
    pub stats: Arc<EventStats>,
}

/// Where and how events are written.
#[derive(Debug, Clone)]
pub struct EventFileOptions {
    pub path: PathBuf,
    pub max_file_bytes: u64,
    pub max_files: u32,
}

impl EventSink {
    /// Opens (creating) the event file and starts the writer task. The returned join handle ends
    /// after every sender is dropped and the queue is drained.
    pub fn start(
        options: EventFileOptions,
    ) -> std::io::Result<(EventSink, tokio::task::JoinHandle<()>)> {
        let writer = RotatingWriter::open(options)?;
        let (sender, receiver) = mpsc::channel(16_384);
        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(1024)));
        let stats = Arc::new(EventStats::default());
        let task = tokio::task::spawn_blocking({
            let recent = recent.clone();
            let stats = stats.clone();
            move || writer_loop(writer, receiver, recent, stats)
        });
        Ok((
            EventSink {
                sender,
                recent,
                stats,
            },
            task,
        ))
    }

    /// Queues an event. Waits when the writer is behind (back-pressure, never a silent drop).
    pub async fn record(&self, event: CallEvent) {
        if self
            .sender
            .send(Command::Record(Box::new(event)))
            .await
            .is_err()
        {
            tracing::error!("event writer has stopped; event not recorded");
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues an event from synchronous code (a body's `Drop`): waits only if the queue is full.
    pub fn record_now(&self, event: CallEvent) {
        match self.sender.try_send(Command::Record(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                let sender = self.sender.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(async move {
                            let _ = sender.send(command).await;
                        });
                    }
                    Err(_) => {
                        let _ = sender.blocking_send(command);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("event writer has stopped; event not recorded");
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every event queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The most recent events, oldest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Arc<str>> {
        let recent = self.recent.lock().expect("recent events lock");
        let skip = recent.len().saturating_sub(limit);
        recent.iter().skip(skip).cloned().collect()
    }
}

fn writer_loop(
    mut writer: RotatingWriter,
    mut receiver: mpsc::Receiver<Command>,
    recent: Arc<Mutex<VecDeque<Arc<str>>>>,
    stats: Arc<EventStats>,
) {
    let mut line = Vec::with_capacity(512);
    while let Some(command) = receiver.blocking_recv() {
        let mut pending_flush = Vec::new();
        let mut batch = Vec::new();
        let mut next = Some(command);
        // Drain what is queued so one flush covers a batch.
        while let Some(command) = next.take() {
            match command {
                Command::Record(event) => batch.push(event),
                Command::Flush(done) => pending_flush.push(done),
            }
            if batch.len() >= 4096 {
                break;
            }
            next = receiver.try_recv().ok();
        }
        let mut lines: Vec<Arc<str>> = Vec::with_capacity(batch.len());
        for event in batch {
            line.clear();
            if serde_json::to_writer(&mut line, &event).is_err() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            line.push(b'\n');
            match writer.write(&line, &stats) {
                Ok(()) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, "could not append to the event file");
                }
            }
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            lines.push(Arc::from(text.as_ref()));
        }
        if let Err(error) = writer.flush() {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "could not flush the event file");
        }
        {
            let mut recent = recent.lock().expect("recent events lock");
            for line in lines {
                if recent.len() == RECENT_EVENTS_CAPACITY {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
        }
        for done in pending_flush {
            let _ = done.send(());
        }
    }
    let _ = writer.flush();
}

/// Appends to `events.jsonl`; past `max_file_bytes` it shifts `events.jsonl.N` up by one
/// (dropping the oldest beyond `max_files`) and starts a new file.
struct RotatingWriter {
    options: EventFileOptions,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingWriter {
    fn open(options: EventFileOptions) -> std::io::Result<Self> {
        if let Some(parent) = options.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(&options.path)?;
        let size = file.metadata()?.len();
        Ok(RotatingWriter {
            options,
            file: BufWriter::with_capacity(256 * 1024, file),
            size,
        })
    }

    fn write(&mut self, line: &[u8], stats: &EventStats) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.options.max_file_bytes {
            self.rotate()?;
            stats.rotations.fetch_add(1, Ordering::Relaxed);
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let keep = self.options.max_files.max(1);
        let path = &self.options.path;
        let _ = std::fs::remove_file(rotated_name(path, keep));
        for index in (1..keep).rev() {
            let from = rotated_name(path, index);
            if from.exists() {
                std::fs::rename(&from, rotated_name(path, index + 1))?;
            }
        }
        std::fs::rename(path, rotated_name(path, 1))?;
        self.file = BufWriter::with_capacity(256 * 1024, open_append(path)?);
        self.size = 0;
        Ok(())
    }
}

fn rotated_name(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    options.open(path)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T09:12:03.123Z`.
pub fn rfc3339_millis(at: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}
