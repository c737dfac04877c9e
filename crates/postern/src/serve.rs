//! `postern serve` and `postern check`: load the config, run the gateway, reload on SIGHUP and
//! on file change, stop on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use postern_gateway::runtime::{BuildInputs, ClientCache, LimiterCache, Runtime, TokenSourceCache};
use postern_gateway::RunningGateway;
use tokio::signal::unix::{signal, SignalKind};

use crate::ExitCode;

/// Keeps the process's memory from other processes of its user and from core dumps
/// (`PR_SET_DUMPABLE` 0): it holds the vendors' secrets, the vault's master key and the tokens'
/// hashes, and `/proc/<pid>/environ` holds `from_env` credentials. Then only root may attach a
/// debugger or read `environ`, `mem` and `maps`, and a crash writes no core. `POSTERN_DUMPABLE=1`
/// leaves the process as it was started (to debug it or collect its cores); a warning says so.
pub fn keep_memory_private() {
    if std::env::var_os("POSTERN_DUMPABLE").is_some_and(|value| value == "1") {
        tracing::warn!(
            "POSTERN_DUMPABLE=1: this process's memory, vendor secrets included, can be read by its user's other processes and written to core dumps"
        );
        return;
    }
    // SAFETY: prctl with PR_SET_DUMPABLE takes a plain integer and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not keep this process's memory from core dumps and its user's other processes"
        );
    }
}

pub async fn serve(path: PathBuf) -> ExitCode {
    keep_memory_private();
    let config = match postern_config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("postern: the configuration is invalid; nothing was started");
            return ExitCode::InvalidConfig;
        }
    };
    if !crate::allocator_returns_memory() {
        tracing::warn!(
            "this build's allocator keeps the memory it frees (mimalloc arena eager commit is on): memory stays at its peak; set MIMALLOC_ARENA_EAGER_COMMIT=0 for this process, or build with -DMI_DEFAULT_ARENA_EAGER_COMMIT=0 in CFLAGS (.cargo/config.toml)"
        );
    }
    if let Some(warning) = postern_gateway::listener::raise_open_file_limit() {
        tracing::warn!("{warning}");
    }
    let triggers = Triggers::arm(&path, &config.gateway);
    // Kept to place a problem that starting finds in the config (a `ca_file` that is not PEM).
    let places = config.places();
    let gateway = match RunningGateway::start(config).await {
        Ok(gateway) => gateway,
        Err(error) => match located(&path, &places, &error) {
            Some(errors) => {
                eprintln!("{errors}");
                eprintln!("postern: the configuration is invalid; nothing was started");
                return ExitCode::InvalidConfig;
            }
            None => {
                eprintln!("error: {error:#}");
                return ExitCode::Failure;
            }
        },
    };
    // For a person reading text logs; JSON logs carry the same in their "postern is serving".
    if !crate::json_logs() {
        eprintln!(
            "postern: gateway on http://{}  admin on http://{}  data in {}",
            gateway.listen_addr,
            gateway.admin_addr,
            gateway.data_dir.display()
        );
    }
    run_until_stopped(&gateway, &path, triggers).await;
    tracing::info!("shutting down: waiting for in-flight calls");
    gateway.shutdown().await;
    tracing::info!("stopped");
    ExitCode::Ok
}

/// What reloads or stops a running gateway: the config file's changes, the listener's TLS
/// files' changes (a rotated certificate, a new CA bundle or revocation list), SIGHUP, SIGTERM
/// and SIGINT. Armed before the gateway starts listening, so that a change made as soon as it
/// answers is not missed, and a SIGHUP then does not end the process.
pub struct Triggers {
    changed: Arc<Changed>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The listener's TLS files as the running config names them, and their watcher: armed
    /// again when a reload names others.
    tls_files: Vec<PathBuf>,
    tls_watcher: Option<notify::RecommendedWatcher>,
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Triggers {
    /// Armed for the config file at `path` and the TLS files its `gateway` section names.
    pub fn arm(path: &Path, gateway: &postern_config::GatewayConfig) -> Triggers {
        let changed = Arc::new(Changed::default());
        let mut triggers = Triggers {
            _watcher: watch_files(&[path.to_path_buf()], changed.clone(), Change::Config),
            changed,
            tls_files: Vec::new(),
            tls_watcher: None,
            hangup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        };
        triggers.watch_tls_files(gateway, false);
        triggers
    }

    /// Watches the listener's TLS files that `gateway` names (none on a plain listener): a
    /// change to one reads them again, so a certificate rotated in place (cert-manager, SPIRE,
    /// certbot) is served from the next handshake on. Armed again when a reload names other
    /// files, or when arming failed before; then (`catch_up`) they are read once more as they
    /// stand, since they were read before they were watched.
    fn watch_tls_files(&mut self, gateway: &postern_config::GatewayConfig, catch_up: bool) {
        let files: Vec<PathBuf> = [
            &gateway.tls_cert,
            &gateway.tls_key,
            &gateway.client_ca,
            &gateway.client_crl,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        if files == self.tls_files {
            return;
        }
        if files.is_empty() {
            self.tls_watcher = None;
            self.tls_files = files;
            return;
        }
        // A watcher that cannot be armed is tried again after the next reload.
        let Some(watcher) = watch_files(&files, self.changed.clone(), Change::TlsFiles) else {
            return;
        };
        if catch_up {
            self.changed.note(Change::TlsFiles);
        }
        self.tls_watcher = Some(watcher);
        self.tls_files = files;
    }
}

/// A watched file that changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Change {
    /// The config file.
    Config,
    /// One of the listener's TLS files the running config names.
    TlsFiles,
}

impl Change {
    /// The `trigger` a reload it starts is logged with.
    fn trigger(self) -> &'static str {
        match self {
            Change::Config => "file change",
            Change::TlsFiles => "TLS file change",
        }
    }
}

/// The watched files' changes not yet handled: noted by the watchers, taken by
/// [`run_until_stopped`]. Flags, not a queue: any number of changes of a kind is one, so a
/// burst of one kind (a certificate written in several steps) never crowds out the other.
#[derive(Default)]
struct Changed {
    config: AtomicBool,
    tls_files: AtomicBool,
    noted: tokio::sync::Notify,
}

impl Changed {
    fn note(&self, change: Change) {
        let flag = match change {
            Change::Config => &self.config,
            Change::TlsFiles => &self.tls_files,
        };
        flag.store(true, Ordering::SeqCst);
        self.noted.notify_one();
    }

    /// What the changes noted so far ask for; none are noted after.
    fn take(&self) -> Asked {
        Asked {
            reload: self
                .config
                .swap(false, Ordering::SeqCst)
                .then(|| Change::Config.trigger()),
            tls_files: self.tls_files.swap(false, Ordering::SeqCst),
        }
    }
}

/// What one round of triggers asks for.
#[derive(Default)]
struct Asked {
    /// A reload of the config file (SIGHUP, or the file changed), under this trigger.
    reload: Option<&'static str>,
    /// The listener's TLS files are to be read again (one changed, or SIGHUP on a TLS
    /// listener): by the reload, or, when there is none or it is refused, alone with the
    /// running config.
    tls_files: bool,
}

/// Serves reload triggers until SIGINT or SIGTERM.
pub async fn run_until_stopped(gateway: &RunningGateway, path: &Path, mut triggers: Triggers) {
    loop {
        triggers.watch_tls_files(&gateway.shared().runtime.load().config.gateway, true);
        let asked = tokio::select! {
            _ = triggers.hangup.recv() => Asked {
                reload: Some("SIGHUP"),
                tls_files: gateway.shared().runtime.load().config.gateway.tls_cert.is_some(),
            },
            () = triggers.changed.noted.notified() => {
                match triggers.settle().await {
                    Some(asked) => asked,
                    None => break,
                }
            }
            _ = triggers.terminate.recv() => break,
            _ = triggers.interrupt.recv() => break,
        };
        // A refused config keeps the running one, whose TLS files are still read: a rotated
        // certificate must not wait on an unrelated edit being mended.
        let reloaded = asked
            .reload
            .is_some_and(|trigger| reload(gateway, path, trigger));
        if asked.tls_files && !reloaded {
            let trigger = match asked.reload {
                Some("SIGHUP") => "SIGHUP",
                _ => Change::TlsFiles.trigger(),
            };
            reload_listener_tls(gateway, trigger);
        }
    }
}

/// How long the config file must go unchanged before a change to it is loaded.
const QUIET: Duration = Duration::from_millis(500);
/// The longest a change waits for the file to go quiet: a file rewritten without pause is
/// loaded as it stands then (and again after its next change).
const SETTLE_MAX: Duration = Duration::from_secs(5);

impl Triggers {
    /// Waits until the watched files (the config, its TLS files) have had no change for
    /// [`QUIET`] (each change starts the
    /// wait again), at most [`SETTLE_MAX`]: editors and tools write a file in several steps,
    /// and a half written file must not be applied because it happens to be valid (a file
    /// written whole under another name and renamed into place is never seen half written).
    /// `None` if SIGTERM or SIGINT came meanwhile: stop, without the reload. Else what the
    /// changes noted until then ask for.
    async fn settle(&mut self) -> Option<Asked> {
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        loop {
            let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
            tokio::select! {
                _ = self.terminate.recv() => return None,
                _ = self.interrupt.recv() => return None,
                _ = tokio::time::sleep_until(quiet_until) => break,
                () = self.changed.noted.notified() => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Some(self.changed.take())
    }
}

/// Reloads the config file; `true` if the reload applied.
fn reload(gateway: &RunningGateway, path: &Path, trigger: &str) -> bool {
    match postern_config::load(path) {
        Ok(config) => match (config.places(), gateway.reload(config)) {
            (_, Ok(notes)) => {
                tracing::info!(trigger, path = %path.display(), "configuration reloaded");
                for note in notes {
                    tracing::warn!(note = %note, "after reload");
                }
                return true;
            }
            (places, Err(error)) => match located(path, &places, &error) {
                Some(errors) => {
                    tracing::error!(trigger, errors = %errors, "configuration rejected; keeping the running one")
                }
                None => {
                    tracing::error!(trigger, error = %format!("{error:#}"), "configuration rejected; keeping the running one")
                }
            },
        },
        Err(errors) => {
            gateway.count_reload(false);
            tracing::error!(trigger, errors = %errors, "configuration rejected; keeping the running one")
        }
    }
    false
}

/// Reads the listener's TLS files the running config names again, nothing else; `trigger`:
/// what asked for it (a change to one of them, or SIGHUP), for the log.
fn reload_listener_tls(gateway: &RunningGateway, trigger: &str) {
    match gateway.reload_listener_tls() {
        Ok(notes) => {
            tracing::info!(trigger, "listener TLS files reloaded");
            for note in notes {
                tracing::warn!(note = %note, "after reload");
            }
        }
        Err(error) => {
            tracing::error!(trigger, error = %format!("{error:#}"), "the listener's TLS files could not be applied; the running ones stay")
        }
    }
}

/// Watches each file's directory (editors replace files), and, when the file is a symbolic
/// link, the directory of the file it leads to (a Kubernetes ConfigMap or Secret swaps a link
/// beside it, `..data`); notes `change` when what a path leads to changed: another file,
/// another size or another modification time.
fn watch_files(
    paths: &[PathBuf],
    changed: Arc<Changed>,
    change: Change,
) -> Option<notify::RecommendedWatcher> {
    let trigger = change.trigger();
    let mut absolutes = Vec::new();
    let mut directories: Vec<PathBuf> = Vec::new();
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for path in paths {
        let absolute = std::path::absolute(path).ok()?;
        let target = std::fs::canonicalize(&absolute).ok();
        for file in [Some(absolute.clone()), target].into_iter().flatten() {
            if let Some(directory) = file.parent().map(Path::to_path_buf) {
                if !directories.contains(&directory) {
                    directories.push(directory);
                }
            }
            names.extend(file.file_name().map(ToOwned::to_owned));
        }
        absolutes.push(absolute);
    }
    let fingerprints =
        |paths: &[PathBuf]| -> Vec<_> { paths.iter().map(|path| file_fingerprint(path)).collect() };
    let seen = std::sync::Mutex::new(fingerprints(&absolutes));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if !matches!(
            event.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(_)
                | notify::EventKind::Remove(_)
        ) {
            return;
        }
        // The file itself (by its name or its target's), or, through a link, whatever now
        // leads to another file or one changed. A file being replaced is missing for a
        // moment: the event of the new one signals.
        let named = event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| names.iter().any(|n| n == name))
        });
        let mut seen = seen.lock().expect("watch lock");
        let mut moved = false;
        for (now, seen) in fingerprints(&absolutes).into_iter().zip(seen.iter_mut()) {
            if now.is_some() {
                moved |= now != *seen;
                *seen = now;
            }
        }
        if (named && !matches!(event.kind, notify::EventKind::Remove(_))) || moved {
            changed.note(change);
        }
    })
    .map_err(|error| tracing::warn!(%error, trigger, "cannot watch the file; SIGHUP still reloads"))
    .ok()?;
    for directory in &directories {
        if let Err(error) = watcher.watch(directory, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(%error, directory = %directory.display(), trigger, "cannot watch the directory; SIGHUP still reloads");
            return None;
        }
    }
    Some(watcher)
}

/// What a watched path (the config file, a TLS file) leads to, symbolic links followed: (file, device and inode, size,
/// modification time). `None` while there is no file there.
fn file_fingerprint(path: &Path) -> Option<(PathBuf, u64, u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt as _;
    let target = std::fs::canonicalize(path).ok()?;
    let metadata = std::fs::metadata(&target).ok()?;
    Some((
        target,
        metadata.dev(),
        metadata.ino(),
        metadata.len(),
        metadata.modified().ok()?,
    ))
}

/// `error`, when it is a problem with one of the config's values
/// ([`postern_config::KeyProblem`]), as a diagnostic placed at that value's line and column.
fn located(
    path: &Path,
    places: &postern_config::Places,
    error: &anyhow::Error,
) -> Option<postern_config::ConfigErrors> {
    error
        .downcast_ref::<postern_config::KeyProblem>()
        .map(|problem| places.errors(path, problem))
}

/// Prints `errors` as `check` does (JSON on stdout, else text on stderr).
fn report_invalid(errors: &postern_config::ConfigErrors, json: bool) {
    if json {
        let list: Vec<_> = errors
            .errors
            .iter()
            .map(|d| serde_json::json!({"line": d.line, "column": d.column, "message": d.message, "fix": d.fix}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"valid": false, "path": errors.path, "errors": list})
        );
    } else {
        eprintln!("{errors}");
    }
}

pub fn check(path: &Path, json: bool, show_policies: bool) -> ExitCode {
    let config = match postern_config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            report_invalid(&errors, json);
            return ExitCode::InvalidConfig;
        }
    };
    // Compile it the way `serve` would (Cedar policies, templates, TLS files) without binding.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let places = config.places();
    let compiled = runtime.block_on(async {
        let listener_tls = postern_gateway::tls::listener_config(&config.gateway)?;
        Runtime::build(
            config,
            &BuildInputs {
                admin_token_sha256: [0u8; 32],
                limiters: &LimiterCache::default(),
                clients: &ClientCache::default(),
                token_sources: &TokenSourceCache::default(),
                vault: None,
                reuse: None,
                listener_tls: listener_tls.map(std::sync::Arc::new),
            },
        )
    });
    match compiled {
        Ok(compiled) => {
            let config = &compiled.config;
            // Each at its key's line and column where it is about one.
            let mut warnings: Vec<(String, Option<(usize, usize)>)> = compiled
                .placed_warnings()
                .into_iter()
                .map(|(message, key)| (message, places.locate(&key)))
                .collect();
            // The interception CA already in data_dir (read, never made here) against the
            // config's names: a mismatch turns interception off at start.
            warnings.extend(
                postern_gateway::intercept::existing_ca_problem(
                    &config.gateway.data_dir,
                    &config.proxy.intercept_ca_names,
                )
                .map(|message| (message, None)),
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "valid": true,
                        "path": path,
                        "callers": config.callers.len(),
                        "integrations": config.integrations.len(),
                        "grants": config.grants.len(),
                        "warnings": warnings.iter().map(|(message, at)| serde_json::json!({
                            "message": message,
                            "line": at.map(|(line, _)| line),
                            "column": at.map(|(_, column)| column),
                        })).collect::<Vec<_>>(),
                        "cedar": if show_policies { Some(compiled.policy.cedar_text()) } else { None },
                    })
                );
            } else {
                let count = |n: usize, one: &str| match n {
                    1 => format!("1 {one}"),
                    n => format!("{n} {one}s"),
                };
                println!(
                    "{}: ok ({}, {}, {})",
                    path.display(),
                    count(config.callers.len(), "caller"),
                    count(config.integrations.len(), "integration"),
                    count(config.grants.len(), "grant")
                );
                for (warning, at) in &warnings {
                    match at {
                        Some((line, column)) => {
                            println!("{}:{line}:{column}: warning: {warning}", path.display())
                        }
                        None => println!("warning: {warning}"),
                    }
                }
                if show_policies {
                    println!("\n{}", compiled.policy.cedar_text());
                }
            }
            ExitCode::Ok
        }
        Err(error) => {
            // Placed at the key it is about when it says which; else at 0:0, no place.
            let errors = located(path, &places, &error).unwrap_or_else(|| postern_config::ConfigErrors {
                path: path.to_path_buf(),
                errors: vec![postern_config::Diagnostic {
                    line: 0,
                    column: 0,
                    message: format!("{error:#}"),
                    fix: "see the message; `postern check` reads the files the config names as `postern serve` would".to_string(),
                }],
            });
            report_invalid(&errors, json);
            ExitCode::InvalidConfig
        }
    }
}

#[cfg(test)]
mod tests {
    /// `serve` keeps its memory from core dumps and from its user's other processes: the
    /// kernel then reports the process as not dumpable. (This test's own process is made so;
    /// nothing else in it attaches to itself or dumps.)
    #[test]
    fn serve_makes_its_process_not_dumpable() {
        // SAFETY: PR_GET_DUMPABLE takes no pointer and returns the flag.
        let dumpable = || unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        if std::env::var_os("POSTERN_DUMPABLE").is_some_and(|value| value == "1") {
            eprintln!("skipped: POSTERN_DUMPABLE=1 is set for this test run");
            return;
        }
        assert_eq!(dumpable(), 1, "a process starts dumpable");
        super::keep_memory_private();
        assert_eq!(dumpable(), 0);
    }
}
