//! The record of every call in the transparency log (`postern-ledger`): an intent entry that
//! must be durable before a call is forwarded (unless the integration says `audit =
//! "best_effort"`), and an outcome entry when the call ends. Refused calls get one outcome entry.
//! A `best_effort` intent is provisional: a call that ends before its intent's group commit is
//! written leaves only its outcome entry, which holds everything the intent did.
//!
//! No secret and no raw path, query or body enters the log: the raw request target appears only
//! as an HMAC-SHA256 under a per-deployment key kept outside the log (`<data_dir>/audit-hmac.key`;
//! deleting it erases what the HMACs stood for while every proof stays valid).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use postern_ledger::{Health, Ledger, LedgerOptions, Link};
use postern_tlog::{AuditRecordRef, Decision, KeyedHasher, RecordKind, RECORD_VERSION};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::context::CallContext;
use crate::workers::PerWorker;

/// Directory of the log inside `data_dir`.
pub const AUDIT_DIR: &str = "audit";
/// The per-deployment HMAC key, kept outside the log.
pub const AUDIT_HMAC_KEY_FILE: &str = "audit-hmac.key";

pub struct Audit {
    pub ledger: Ledger,
    /// The per-deployment HMAC key, prepared once (the raw key bytes are zeroized after
    /// loading); its state stands in for the key, so it is never logged or shared.
    hmac: KeyedHasher,
    pub timeout: Duration,
    /// One per data-plane worker, made on its first call: see [`IntentPipe`].
    pipes: PerWorker<IntentPipe>,
    /// Places for entries that found the ledger's queue full, each waiting in a task of its
    /// own ([`Audit::append_later`]): bounded, so a stalled disk cannot make every call hold
    /// a task and its entry in memory.
    overflow: Arc<tokio::sync::Semaphore>,
    /// Entries not written because the queue and its overflow were both full
    /// (`postern_audit_entries_dropped_total`).
    pub dropped: std::sync::atomic::AtomicU64,
}

/// Entries that may wait for room in the ledger's queue at once, beyond the queue itself.
const OVERFLOW_ENTRIES: usize = 65_536;

/// The intents a worker's calls are waiting on, handed to the ledger in runs by the worker's
/// [`run_pipe`] task: one round trip between the worker and the sequencer thread per run instead
/// of one per call (each cross-thread wake-up costs a syscall and often a context switch).
type IntentPipe = mpsc::UnboundedSender<(Vec<u8>, IndexReply)>;

/// Where a waiting call learns its entry's index (or why it has none).
type IndexReply = oneshot::Sender<Result<u64, String>>;

/// A worker's pipe task: takes every intent queued and appends them as one run, answering each
/// call with its own index (the run's first index plus its place in the run). Ends when the
/// pipe's sender is dropped.
///
/// A run is handed over as soon as it is taken, without waiting for the previous run's commit:
/// the sequencer holds a commit open under load (`min_commit_interval_us`) so the intents of
/// calls still arriving can join it, and a pipe that waited for its previous answer first made
/// each of them sit out that commit and the whole next interval.
async fn run_pipe(
    mut intents: mpsc::UnboundedReceiver<(Vec<u8>, IndexReply)>,
    ledger: Ledger,
    timeout: Duration,
) {
    let mut run = Vec::new();
    while intents
        .recv_many(&mut run, ledger.max_batch_entries())
        .await
        > 0
    {
        // The run's time starts now, before its task is first polled.
        let deadline = tokio::time::Instant::now() + timeout;
        let (entries, replies): (Vec<_>, Vec<IndexReply>) = run.drain(..).unzip();
        // A task of this worker's own appends the run and waits for its answer.
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let result = acknowledged(deadline, timeout, ledger.append_many(entries)).await;
            for (offset, reply) in (0u64..).zip(replies) {
                let _ = reply.send(match &result {
                    Ok(first) => Ok(first + offset),
                    Err(error) => Err(error.clone()),
                });
            }
        });
    }
}

/// An append's index, or why there is none: it failed, or was not durable by `deadline`
/// (`timeout`, `audit_timeout_ms`, after it was handed over).
async fn acknowledged(
    deadline: tokio::time::Instant,
    timeout: Duration,
    append: impl Future<Output = Result<u64, postern_ledger::LedgerError>>,
) -> Result<u64, String> {
    match tokio::time::timeout_at(deadline, append).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!(
            "the audit log did not acknowledge within audit_timeout_ms ({} ms)",
            timeout.as_millis()
        )),
    }
}

/// What a finished or refused call contributes to its audit entry.
pub struct Outcome<'a> {
    pub decision: Decision,
    pub reason: &'a str,
    pub status: u16,
    pub response_bytes: u64,
    pub intent_index: Option<u64>,
}

impl Audit {
    pub async fn open(
        data_dir: &Path,
        origin: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Audit>> {
        // The HMAC key first: a refused one stops the start before the log is opened (a
        // torn tail trimmed, a signing key made).
        let key_path = data_dir.join(AUDIT_HMAC_KEY_FILE);
        let hmac_key = match postern_keyfile::read_private_file(&key_path) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            Ok(_) => anyhow::bail!(
                "{} is shorter than 32 bytes; restore it from backup (or delete it to start a new key: old HMACs can then no longer be matched)",
                key_path.display()
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                crate::write_private_file(&key_path, &key)?;
                Zeroizing::new(key.to_vec())
            }
            Err(error) if postern_keyfile::is_not_private(&error) => anyhow::bail!(
                "{error}; the audit HMAC key must be readable by postern's user alone: `chown` it to that user and `chmod 600` it"
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", key_path.display()))
            }
        };
        let dir = data_dir.join(AUDIT_DIR);
        let origin = log_origin(&dir, origin, hostname)?;
        let (ledger, report) = Ledger::open(&dir, LedgerOptions::new(origin))
            .await
            .with_context(|| format!("opening the audit log in {}", dir.display()))?;
        if report.entries > 0
            && report
                .latest_checkpoint
                .as_ref()
                .is_none_or(|c| c.size == 0)
        {
            tracing::warn!(
                entries = report.entries,
                "the audit log holds entries and no signed checkpoint (its checkpoint files are missing, or the gateway stopped before its first); the next checkpoint signs the entries as they are now: `postern audit verify --key <verifier key>` against a copy taken before this start tells whether they were altered"
            );
        }
        if let Some(torn) = &report.torn_tail {
            tracing::warn!(
                ?torn,
                "the audit log had a torn tail (an unacknowledged partial write); it was truncated"
            );
        }
        let hmac = KeyedHasher::new(&hmac_key);
        drop(hmac_key);
        tracing::info!(entries = report.entries, verifier_key = %ledger.verifier_key(), "audit log open");
        Ok(Arc::new(Audit {
            ledger,
            hmac,
            timeout,
            pipes: PerWorker::new(),
            overflow: Arc::new(tokio::sync::Semaphore::new(OVERFLOW_ENTRIES)),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn health_problem(&self) -> Option<String> {
        match self.ledger.health() {
            Health::Healthy => None,
            Health::Unhealthy { reason } => Some(format!("audit log: {reason}")),
        }
    }

    /// The keyed hash a call's entries carry for its raw request target (path and query, a
    /// CONNECT authority, an absolute URI): the target itself never enters the log.
    pub fn target_hmac(&self, raw_target: &str) -> Arc<str> {
        Arc::from(
            self.hmac
                .hash_hex_into("target", raw_target.as_bytes(), &mut [0; 64]),
        )
    }

    /// The call's entry, encoded (borrowing the context: no owned record is built).
    pub fn record(
        &self,
        kind: RecordKind,
        context: &CallContext,
        outcome: Option<&Outcome<'_>>,
    ) -> Entry {
        let target = &*context.target_hmac;
        // The scan's classes are a sorted map: its keys are already sorted and unique. No scan,
        // no allocation (an empty Vec allocates nothing).
        let classes: Vec<&str> = context
            .request_scan
            .as_ref()
            .map(|scan| scan.classes.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let record = AuditRecordRef {
            version: RECORD_VERSION,
            kind,
            time_unix_ms: context
                .wall_start
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            request_id: &context.request_id,
            caller: context.caller.as_deref().unwrap_or(""),
            integration: context.integration.as_deref().unwrap_or(""),
            operation: context.operation_id.as_deref().unwrap_or(""),
            method: logged_method(context.method.as_ref()),
            path_template: context.path_template.as_deref().unwrap_or(""),
            decision: outcome.map_or(Decision::Allow, |o| o.decision),
            reason: Some(outcome.map_or("granted", |o| o.reason)),
            status: outcome.map(|o| o.status),
            request_bytes: Some(
                context
                    .request_body
                    .bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            response_bytes: outcome.map(|o| o.response_bytes),
            data_classes: &classes,
            intent_index: outcome.and_then(|o| o.intent_index),
            // A head hyper refused has no target to hash (`CallContext::malformed`).
            hmacs: if target.is_empty() {
                &[]
            } else {
                &[("target", target)]
            },
        };
        let bytes = record.encode().map_err(|error| {
            format!(
                "the audit entry of request {} cannot be encoded: {error}",
                context.request_id
            )
        });
        // An outcome says all its call's intent said, and more.
        let link = match kind {
            RecordKind::Outcome => Link::Supersedes(context.request_id.bits()),
            _ => Link::None,
        };
        Entry { bytes, link }
    }

    /// Appends and waits until the entry is durable (or the timeout passes).
    /// On a data-plane worker the entry goes through the worker's [`IntentPipe`].
    pub async fn append_durable(&self, entry: Entry) -> Result<u64, String> {
        let bytes = entry.bytes?;
        match self.pipe() {
            // The pipe's run waits under the timeout for all of its calls: no timer per call.
            Some(pipe) => {
                let (reply, answer) = oneshot::channel();
                let ended = || "the audit log's worker pipe ended".to_string();
                pipe.send((bytes, reply)).map_err(|_| ended())?;
                answer.await.map_err(|_| ended())?
            }
            None => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                acknowledged(deadline, self.timeout, self.ledger.append(bytes)).await
            }
        }
    }

    /// This worker's pipe (started on its first use), or `None` off the data plane.
    fn pipe(&self) -> Option<&IntentPipe> {
        self.pipes.on_worker(|| {
            let (pipe, intents) = mpsc::unbounded_channel();
            // On the worker's own runtime: the pipe's wake-ups never leave the thread.
            tokio::spawn(run_pipe(intents, self.ledger.clone(), self.timeout));
            pipe
        })
    }

    /// Appends without making the caller wait (refusals and outcomes): queued for the next group
    /// commit; when the queue is full, a task waits for room instead, up to
    /// [`OVERFLOW_ENTRIES`] of them; past that (the disk has not kept up for a long while) the
    /// entry is dropped, counted and logged, never silently.
    /// `request_id` names the call in the error logged if the entry cannot be written.
    pub fn append_later(self: &Arc<Self>, entry: Entry, request_id: &str) {
        let bytes = match entry.bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "audit entry not written");
                return;
            }
        };
        match self.ledger.append_detached_linked(bytes, entry.link) {
            Ok(()) => {}
            Err(postern_ledger::DetachedAppend::Full(bytes)) => {
                let Ok(place) = self.overflow.clone().try_acquire_owned() else {
                    let dropped = 1 + self
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Logged at the first drop and then at each power of two: not once per call
                    // while the disk stalls.
                    if dropped.is_power_of_two() {
                        tracing::error!(%request_id, dropped, "audit entries not written: the audit log's queue and its overflow are full (the disk has not kept up); see postern_audit_entries_dropped_total");
                    }
                    return;
                };
                let audit = self.clone();
                let request_id = request_id.to_string();
                tokio::spawn(async move {
                    let _place = place;
                    if let Err(error) = audit.ledger.append(bytes).await {
                        tracing::error!(%error, %request_id, "audit entry not written");
                    }
                });
            }
            Err(postern_ledger::DetachedAppend::Refused(error)) => {
                tracing::error!(%error, %request_id, "audit entry not written");
            }
        }
    }
}

/// One encoded audit entry (canonical bytes), or why it could not be encoded.
pub struct Entry {
    bytes: Result<Vec<u8>, String>,
    /// Links a call's outcome to its intent, by request id: a `best_effort` intent queued with
    /// [`Entry::provisional`] is left out of the log when its call's outcome is written in the
    /// same group commit (see [`Link`]).
    link: Link,
}

impl Entry {
    /// This intent, for an integration that does not wait for it (`best_effort`): if the
    /// call ends before the intent's group commit is written, the outcome entry replaces it.
    /// A call still running then keeps its intent, written as before.
    pub fn provisional(self, context: &CallContext) -> Entry {
        Entry {
            link: Link::Provisional(context.request_id.bits()),
            ..self
        }
    }
}

/// The method as the log records it: one of HTTP's registered methods (RFC 9110 and PATCH), or
/// `OTHER`. A method is the caller's free text, and the log is public and never forgets: a
/// made-up one (`SSN-123-45-6789`, 16 KiB of anything) must not be written into it.
fn logged_method(method: Option<&http::Method>) -> &'static str {
    use http::Method;
    match method {
        None => "",
        Some(method) => match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            Method::PATCH => "PATCH",
            _ => "OTHER",
        },
    }
}

/// The origin the log at `dir` is opened with: `configured` when set; else the one the log was
/// created with (its signing key's name), so a restart under another host name (a rescheduled
/// container) opens it; else, for a new log, `postern/<host name>`.
fn log_origin(
    dir: &Path,
    configured: Option<&str>,
    hostname: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Some(origin) = configured {
        return Ok(origin.to_string());
    }
    let stored = postern_ledger::stored_origin(dir)
        .with_context(|| format!("reading the audit log's origin in {}", dir.display()))?;
    Ok(stored.unwrap_or_else(|| format!("postern/{}", hostname())))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    use postern_tlog::{keyed_hash, AuditRecord};

    use super::*;
    use crate::context::ConnectionInfo;
    use crate::scan::ScanSummary;

    /// The owned record the gateway's entry stands for, built field by field from the context
    /// with `keyed_hash` from the key file: checks how `record` maps the call into an entry and
    /// that the prepared hasher gives the same HMAC (the encoder itself is tested in tlog).
    fn expected(
        key: &[u8],
        kind: RecordKind,
        context: &CallContext,
        raw_target: &str,
        outcome: Option<&Outcome<'_>>,
    ) -> Vec<u8> {
        AuditRecord {
            version: RECORD_VERSION,
            kind,
            time_unix_ms: context
                .wall_start
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            request_id: context.request_id.to_string(),
            caller: context.caller.as_deref().unwrap_or("").to_string(),
            integration: context.integration.as_deref().unwrap_or("").to_string(),
            operation: context.operation_id.as_deref().unwrap_or("").to_string(),
            method: logged_method(context.method.as_ref()).to_string(),
            path_template: context.path_template.as_deref().unwrap_or("").to_string(),
            decision: outcome.map_or(Decision::Allow, |o| o.decision),
            reason: Some(outcome.map_or("granted", |o| o.reason).to_string()),
            status: outcome.map(|o| o.status),
            request_bytes: Some(context.request_body.bytes.load(Ordering::Relaxed)),
            response_bytes: outcome.map(|o| o.response_bytes),
            data_classes: context
                .request_scan
                .as_ref()
                .map(|scan| scan.classes.keys().cloned().collect())
                .unwrap_or_default(),
            intent_index: outcome.and_then(|o| o.intent_index),
            hmacs: BTreeMap::from([(
                "target".to_string(),
                keyed_hash(key, "target", raw_target.as_bytes()),
            )]),
        }
        .encode()
        .unwrap()
    }

    /// An HMAC key others may read or change is refused with the fix before the log is opened
    /// (nothing is made in `audit/`), as is the log's signing key; private again, both open.
    #[tokio::test]
    async fn key_files_others_may_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(AUDIT_HMAC_KEY_FILE);
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let timeout = Duration::from_secs(5);
        let error = match Audit::open(dir.path(), Some("test/log"), timeout).await {
            Ok(_) => panic!("a key group members may read was used"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("mode 640") && error.contains("chmod 600"),
            "{error}"
        );
        assert!(
            !dir.path().join(AUDIT_DIR).exists(),
            "the log was not opened"
        );

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let audit = Audit::open(dir.path(), Some("test/log"), timeout)
            .await
            .unwrap();
        audit.ledger.close().await;
        let signing_key = dir.path().join(AUDIT_DIR).join("signing-key");
        std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = match Audit::open(dir.path(), Some("test/log"), timeout).await {
            Ok(_) => panic!("a signing key others may read was used"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("mode 644") && error.contains("chmod 600"),
            "{error}"
        );
    }

    /// Without `audit_origin`, a log keeps the origin it was created with: opened again under
    /// another host name, it still opens (its key is named for the first).
    #[tokio::test]
    async fn the_default_origin_is_the_one_the_log_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join(AUDIT_DIR);
        let first = super::log_origin(&audit_dir, None, || "pod-a".to_string()).unwrap();
        assert_eq!(first, "postern/pod-a");
        let (ledger, _) = Ledger::open(&audit_dir, LedgerOptions::new(first))
            .await
            .unwrap();
        ledger.close().await;
        let again = super::log_origin(&audit_dir, None, || "pod-b".to_string()).unwrap();
        assert_eq!(again, "postern/pod-a");
        let (ledger, _) = Ledger::open(&audit_dir, LedgerOptions::new(again))
            .await
            .unwrap();
        ledger.close().await;
        let configured =
            super::log_origin(&audit_dir, Some("audit.example/log"), || unreachable!()).unwrap();
        assert_eq!(configured, "audit.example/log");
    }

    /// Several intents queued before the pipe task runs (so `recv_many` takes them together):
    /// each call gets the index of its own entry. Then a run that fails answers every call
    /// with the error.
    #[tokio::test]
    async fn a_run_of_intents_answers_each_call_with_its_own_index() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(dir.path(), LedgerOptions::new("test/log"))
            .await
            .unwrap();
        ledger.append(b"before".to_vec()).await.unwrap();
        let (pipe, intents) = mpsc::unbounded_channel();
        let mut answers = Vec::new();
        for i in 0..5 {
            let (reply, answer) = oneshot::channel();
            pipe.send((format!("intent {i}").into_bytes(), reply))
                .unwrap();
            answers.push(answer);
        }
        let task = tokio::spawn(run_pipe(intents, ledger.clone(), Duration::from_secs(5)));
        for (i, answer) in answers.into_iter().enumerate() {
            let index = answer.await.unwrap().unwrap();
            assert_eq!(index, 1 + i as u64);
            assert_eq!(
                ledger.entry(index).unwrap(),
                format!("intent {i}").into_bytes()
            );
        }
        ledger.inject_write_failures(1);
        let (reply, answer) = oneshot::channel();
        pipe.send((b"fails".to_vec(), reply)).unwrap();
        assert!(answer.await.unwrap().unwrap_err().contains("injected"));
        drop(pipe);
        task.await.unwrap();
        ledger.close().await;
    }

    /// A ledger whose commits, under load, start no sooner than `hold` after the previous one,
    /// put under load by a first commit of two entries (so the next commit is held).
    async fn held_ledger(dir: &Path, hold: Duration) -> Ledger {
        let options = LedgerOptions {
            min_commit_interval_us: hold.as_micros() as u64,
            ..LedgerOptions::new("test/log")
        };
        let (ledger, _) = Ledger::open(dir, options).await.unwrap();
        ledger
            .append_many(vec![b"first".to_vec(), b"second".to_vec()])
            .await
            .unwrap();
        ledger
    }

    /// Queues one intent on the pipe; its answer and when it came.
    fn queue(
        pipe: &IntentPipe,
        entry: &str,
    ) -> impl Future<Output = (Result<u64, String>, std::time::Instant)> {
        let (reply, answer) = oneshot::channel();
        pipe.send((entry.as_bytes().to_vec(), reply)).unwrap();
        async move { (answer.await.unwrap(), std::time::Instant::now()) }
    }

    /// An intent queued while the pipe's previous run waits in a held commit joins that
    /// commit: the pipe hands it over at once instead of after the previous run's answer
    /// (which made it sit out the commit and the whole next interval).
    #[tokio::test]
    async fn a_run_queued_during_a_held_commit_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Duration::from_secs(3);
        let ledger = held_ledger(dir.path(), hold).await;
        let (pipe, intents) = mpsc::unbounded_channel();
        // Two intents in the first run, so the commit after it is held too.
        let queued = std::time::Instant::now();
        let first = tokio::spawn(queue(&pipe, "intent x"));
        let _also_first = tokio::spawn(queue(&pipe, "intent x2"));
        let task = tokio::spawn(run_pipe(intents, ledger.clone(), Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn(queue(&pipe, "intent y"));
        let (x, x_at) = first.await.unwrap();
        let (y, y_at) = second.await.unwrap();
        assert_eq!((x.unwrap(), y.unwrap()), (2, 4));
        // The first run's commit was held (else this test shows nothing about the pipe).
        assert!(
            x_at.duration_since(queued) > hold / 2,
            "the first run was not held: answered after {:?}",
            x_at.duration_since(queued)
        );
        // One commit answers both; separate ones would be `hold` apart.
        assert!(
            y_at.duration_since(x_at) < hold / 2,
            "the second intent waited {:?} longer than the first",
            y_at.duration_since(x_at)
        );
        drop(pipe);
        task.await.unwrap();
        ledger.close().await;
    }

    /// `audit_timeout_ms` is kept per run: a commit that does not come in time fails every
    /// call of the run with the reason.
    #[tokio::test]
    async fn a_run_not_durable_in_time_fails_each_of_its_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = held_ledger(dir.path(), Duration::from_secs(3)).await;
        let (pipe, intents) = mpsc::unbounded_channel();
        let one = queue(&pipe, "intent 1");
        let two = queue(&pipe, "intent 2");
        let task = tokio::spawn(run_pipe(
            intents,
            ledger.clone(),
            Duration::from_millis(200),
        ));
        let started = std::time::Instant::now();
        for (answer, _) in [one.await, two.await] {
            let error = answer.unwrap_err();
            assert!(
                error.contains("did not acknowledge within audit_timeout_ms (200 ms)"),
                "{error}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // The entries were queued all the same: they are written with the held commit.
        assert_eq!(ledger.flush().await.unwrap(), 4);
        drop(pipe);
        task.await.unwrap();
        ledger.close().await;
    }

    #[test]
    fn only_registered_methods_are_logged_as_they_are() {
        let method = |text: &str| http::Method::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(logged_method(Some(&http::Method::PATCH)), "PATCH");
        assert_eq!(logged_method(Some(&method("DELETE"))), "DELETE");
        for made_up in ["SSN-123-45-6789", "get", "PROPFIND"] {
            assert_eq!(logged_method(Some(&method(made_up))), "OTHER", "{made_up}");
        }
        assert_eq!(logged_method(None), "");
    }

    #[tokio::test]
    async fn audit_entries_match_the_owned_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), Some("test/log"), Duration::from_secs(5))
            .await
            .unwrap();
        let key = std::fs::read(dir.path().join(AUDIT_HMAC_KEY_FILE)).unwrap();
        let connection = ConnectionInfo::new(
            "127.0.0.1:9".parse().unwrap(),
            None,
            false,
            crate::deadline::InFlight::default(),
        );
        // No scan, no classes, a few classes, and many.
        for class_count in [None, Some(0), Some(3), Some(16), Some(40)] {
            let raw_target = "/things/42?secret=é\u{1}";
            let mut context = CallContext::new(
                &connection,
                &http::Method::POST,
                http::Version::HTTP_11,
                audit.target_hmac(raw_target),
            );
            context.caller = Some("checkout \"svc\"".into());
            context.integration = Some("acme".into());
            context.operation_id = Some("create_thing".into());
            context.path_template = Some("/things/{id}".into());
            context.request_body.bytes.store(512, Ordering::Relaxed);
            context.request_scan = class_count.map(|count| ScanSummary {
                classes: (0..count).map(|i| (format!("class_{i:02}"), i)).collect(),
                unapproved: Vec::new(),
                unscanned: None,
                redacted: false,
            });
            let intent = audit.record(RecordKind::Intent, &context, None);
            // An intent is written as it is unless queued as provisional; the call's outcome
            // supersedes it (by the request id's bits).
            let call_key = context.request_id.bits();
            assert_eq!(intent.link, Link::None);
            let intent = intent.provisional(&context);
            assert_eq!(intent.link, Link::Provisional(call_key));
            assert_eq!(
                intent.bytes.unwrap(),
                expected(&key, RecordKind::Intent, &context, raw_target, None),
                "{class_count:?}"
            );
            let outcome = Outcome {
                decision: Decision::Deny,
                reason: "operation_not_allowed",
                status: 403,
                response_bytes: 77,
                intent_index: Some(9),
            };
            let entry = audit.record(RecordKind::Outcome, &context, Some(&outcome));
            assert_eq!(entry.link, Link::Supersedes(call_key));
            assert_eq!(
                entry.bytes.unwrap(),
                expected(
                    &key,
                    RecordKind::Outcome,
                    &context,
                    raw_target,
                    Some(&outcome)
                ),
                "{class_count:?}"
            );
        }
        audit.ledger.close().await;
    }
}
