//! `postern creds …` and `postern callers rotate|revoke`: operate on the vault in `data_dir`.
//! Secret values come from stdin or `--from-file`, never from argv, and are never printed.
//! A running `postern serve` notices every change within a quarter second.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use postern_vault::{SecretState, Vault};
use zeroize::Zeroizing;

use crate::ExitCode;

/// Where the vault is: `--data-dir`, else the config's `data_dir`.
#[derive(clap::Args, Clone)]
pub struct VaultLocation {
    /// The TOML configuration file (its data_dir holds the vault and the other stores).
    #[arg(long, short, env = "POSTERN_CONFIG", default_value = "postern.toml")]
    config: PathBuf,
    /// Use this data directory instead of the config's data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum CredsCommand {
    /// Store a new credential. The value is read from stdin (or --from-file), never from argv.
    Set {
        /// The credential's name in the vault (what an integration's credential `secret` names).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// A label shown in `creds list` (e.g. static, oauth2_client_secret, tls_client_cert).
        #[arg(long, default_value = "static")]
        kind: String,
        #[command(flatten)]
        location: VaultLocation,
    },
    /// List credentials: metadata only (kind, state, created, last rotated, last used, age).
    List {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: VaultLocation,
    },
    /// Replace a credential's value; the previous one is kept for --rollback-window-seconds.
    Rotate {
        /// The credential's name in the vault (what an integration's credential `secret` names).
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// How long `creds rollback` can restore the previous value (0 to 31536000, a year).
        #[arg(long, default_value_t = 86_400,
              value_parser = clap::value_parser!(i64).range(0..=postern_vault::MAX_ROLLBACK_WINDOW_SECONDS))]
        rollback_window_seconds: i64,
        #[command(flatten)]
        location: VaultLocation,
    },
    /// Restore the previous value (inside its rollback window).
    Rollback {
        /// The credential's name in the vault (what an integration's credential `secret` names).
        name: String,
        #[command(flatten)]
        location: VaultLocation,
    },
    /// Revoke a credential: a running gateway stops injecting it within a second (it checks
    /// the vault every 250 ms); calls answer 503 credential_revoked.
    Revoke {
        /// The credential's name in the vault (what an integration's credential `secret` names).
        name: String,
        #[command(flatten)]
        location: VaultLocation,
    },
    /// Show a credential's history (set, rotate, rollback, revoke).
    History {
        /// The credential's name in the vault (what an integration's credential `secret` names).
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: VaultLocation,
    },
}

struct Opened {
    vault: Vault,
    max_age_days: u64,
    config: Option<postern_config::Config>,
}

/// Opens the vault for a command that only reads or changes what is in it: where there is
/// none, says so (exit 1) instead of making an empty one (a mistyped `--data-dir` would look
/// like every credential gone).
fn open_existing(location: &VaultLocation) -> Result<Opened, ExitCode> {
    open_with(location, true)
}

fn open(location: &VaultLocation) -> Result<Opened, ExitCode> {
    open_with(location, false)
}

/// Where the vault is, and the config that says so (when it loads), before anything is opened.
struct Located {
    data_dir: PathBuf,
    config: Option<postern_config::Config>,
}

fn locate(location: &VaultLocation) -> Result<Located, ExitCode> {
    let config = match postern_config::load(&location.config) {
        Ok(config) => Some(config),
        Err(errors) if location.data_dir.is_none() => {
            eprintln!("{errors}");
            eprintln!("postern: the config names the data_dir holding the vault; fix it or pass --data-dir");
            return Err(ExitCode::InvalidConfig);
        }
        Err(_) => None,
    };
    let data_dir = match (&location.data_dir, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.gateway.data_dir.clone(),
        (None, None) => unreachable!("handled above"),
    };
    Ok(Located { data_dir, config })
}

fn open_with(location: &VaultLocation, must_exist: bool) -> Result<Opened, ExitCode> {
    let located = locate(location)?;
    if must_exist && !located.data_dir.join(postern_vault::VAULT_FILE).exists() {
        eprintln!(
            "error: there is no vault in {} (`postern creds set` or `postern serve` makes it); check --data-dir or the config's data_dir",
            located.data_dir.display()
        );
        return Err(ExitCode::Failure);
    }
    open_located(located)
}

fn open_located(Located { data_dir, config }: Located) -> Result<Opened, ExitCode> {
    match Vault::open(&data_dir) {
        Ok(vault) => Ok(Opened {
            max_age_days: config
                .as_ref()
                .map_or(postern_config::DEFAULT_CREDENTIAL_MAX_AGE_DAYS, |c| {
                    c.gateway.credential_max_age_days
                }),
            vault,
            config,
        }),
        Err(error) => {
            eprintln!("error: {error}");
            Err(ExitCode::Failure)
        }
    }
}

/// Reads a value to store and checks it against the config before the vault is opened, so a
/// refused value leaves no new, empty vault behind.
fn located_value(
    location: &VaultLocation,
    from_file: Option<&Path>,
    name: &str,
) -> Result<(Opened, Zeroizing<Vec<u8>>), ExitCode> {
    let located = locate(location)?;
    let value = read_value(from_file)?;
    refuse_unusable(located.config.as_ref(), name, &value)?;
    Ok((open_located(located)?, value))
}

impl VaultLocation {
    /// `--data-dir`, else the config's `data_dir`; `what` names the store for the error.
    pub fn data_dir(&self, what: &str) -> Result<PathBuf, ExitCode> {
        self.data_dir_and_config(what).map(|(dir, _)| dir)
    }

    /// The data directory, and the config it was read from (`None` with `--data-dir`, which
    /// reads no config).
    pub fn data_dir_and_config(
        &self,
        what: &str,
    ) -> Result<(PathBuf, Option<postern_config::Config>), ExitCode> {
        if let Some(dir) = &self.data_dir {
            return Ok((dir.clone(), None));
        }
        match postern_config::load(&self.config) {
            Ok(config) => Ok((config.gateway.data_dir.clone(), Some(config))),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!(
                    "postern: {what} is in the config's data_dir, and the config above could not be read; pass --config FILE, or --data-dir DIR"
                );
                Err(ExitCode::InvalidConfig)
            }
        }
    }
}

/// Opens the vault named by `--config`/`--data-dir` (for other subcommands).
pub fn open_vault(location: &VaultLocation) -> Result<Vault, ExitCode> {
    open(location).map(|opened| opened.vault)
}

/// The largest value taken (as the admin API's): a file or pipe that goes on (`/dev/zero`, the
/// wrong file) is refused after this much, not read into memory to its end.
const MAX_VALUE_BYTES: u64 = 64 * 1024;

fn read_value(from_file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, ExitCode> {
    // Room for the largest value and one byte more, at once: a growing buffer would leave
    // copies of the secret behind in memory it gave back, which the zeroizing never reaches.
    let mut value = Zeroizing::new(Vec::with_capacity(MAX_VALUE_BYTES as usize + 1));
    let limit = MAX_VALUE_BYTES + 1;
    let result = match from_file {
        Some(path) => {
            std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut value))
        }
        // At a terminal, one line, not shown as it is typed (as a password prompt); piped,
        // everything on stdin (a PEM file, say).
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password("Enter the value (not shown), then Enter: ")
                .map(|line| {
                    let line = Zeroizing::new(line);
                    value.extend_from_slice(line.as_bytes());
                    value.len()
                })
                .and_then(|read| match discard_pending_terminal_input()? {
                    false => Ok(read),
                    true => Err(std::io::Error::other(
                        "more than one line was entered (a pasted PEM file or JSON document?), and none of it was stored; the lines after the first were discarded, not left for the shell — give such a value with --from-file or on a pipe",
                    )),
                })
        }
        None => std::io::stdin().take(limit).read_to_end(&mut value),
    };
    if let Err(error) = result {
        eprintln!("error: reading the value: {error}");
        return Err(ExitCode::Failure);
    }
    if value.len() as u64 > MAX_VALUE_BYTES {
        eprintln!(
            "error: the value is over 64 KiB (the admin API's limit too); no credential is that large: check what was piped or named with --from-file"
        );
        return Err(ExitCode::Failure);
    }
    while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        value.pop();
    }
    if value.is_empty() {
        eprintln!("error: the value is empty; pipe it on stdin or use --from-file");
        return Err(ExitCode::Failure);
    }
    Ok(value)
}

/// After one line was read at the terminal: whether more input waits behind it, or arrives
/// within 100 ms (a multi-line value pasted: the terminal delivers it in pieces), which is then
/// discarded. Left there, the shell would read the rest of the secret once postern exits: shown,
/// run as commands, kept in its history. The terminal is read without its line discipline
/// meanwhile, so a last line with no line break counts too.
fn discard_pending_terminal_input() -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let tty = std::fs::File::open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    let check = |result: libc::c_int| match result {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: termios is plain data, filled by tcgetattr before use; `fd` is open throughout.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    check(unsafe { libc::tcgetattr(fd, &mut saved) })?;
    let mut raw = saved;
    // No signals either: a Ctrl-C now is input like the rest (discarded, refused), and cannot
    // end postern with the terminal left this way.
    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    // SAFETY: `raw` is a termios tcgetattr filled, changed in its flags.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) })?;
    let mut ready = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
    let polled = loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        // SAFETY: one valid pollfd, for the length given.
        let polled = unsafe { libc::poll(&mut ready, 1, left.as_millis() as libc::c_int) };
        let interrupted = polled == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted {
            break polled;
        }
    };
    let pending = polled > 0 && ready.revents & libc::POLLIN != 0;
    // Discarded whatever the outcome, and the terminal restored before any error is told.
    // SAFETY: `fd` is the open terminal; `saved` is what tcgetattr read from it.
    let flushed = check(unsafe { libc::tcflush(fd, libc::TCIFLUSH) });
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) })?;
    check(polled)?;
    flushed?;
    Ok(pending)
}

/// Refuses a value that an integration of the config injecting the credential `name` could not
/// use (not UTF-8, a line break in a header credential…), naming the integration and why, never
/// the value: stored, it would leave those calls answering `503 credential_unavailable`, as the
/// admin API's `422 credential_unusable` prevents. Without a config that loads, nothing is
/// known to check against (`--data-dir` alone).
fn refuse_unusable(
    config: Option<&postern_config::Config>,
    name: &str,
    value: &[u8],
) -> Result<(), ExitCode> {
    let Some(config) = config else {
        return Ok(());
    };
    for integration in &config.integrations {
        if let Some(why) = postern_gateway::runtime::unusable_value(integration, name, value) {
            eprintln!(
                "error: integration {} could not use this value of {name}: {why}; nothing was stored",
                integration.name
            );
            return Err(ExitCode::Failure);
        }
    }
    Ok(())
}

fn format_time(ms: Option<i64>) -> String {
    match ms {
        None => "-".to_string(),
        Some(ms) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            postern_gateway::events::rfc3339_millis(at)[..19].replace('T', " ")
        }
    }
}

pub fn run(command: CredsCommand) -> ExitCode {
    match run_inner(command) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(command: CredsCommand) -> Result<ExitCode, ExitCode> {
    let now = postern_gateway::now_ms();
    let fail = |error: postern_vault::VaultError| {
        eprintln!("error: {error}");
        ExitCode::Failure
    };
    match command {
        CredsCommand::Set {
            name,
            from_file,
            kind,
            location,
        } => {
            // Before the value is asked for and the vault opened (or made): nothing is left
            // behind.
            if !postern_vault::valid_name(&name) {
                return Err(fail(postern_vault::VaultError::InvalidName(name)));
            }
            if !postern_vault::valid_kind(&kind) {
                return Err(fail(postern_vault::VaultError::InvalidKind(kind)));
            }
            let (opened, value) = located_value(&location, from_file.as_deref(), &name)?;
            let version = opened.vault.set(&name, &kind, &value, now).map_err(fail)?;
            println!("credential {name} stored (version {version})");
        }
        CredsCommand::Rotate {
            name,
            from_file,
            rollback_window_seconds,
            location,
        } => {
            let (opened, value) = located_value(&location, from_file.as_deref(), &name)?;
            let version = opened
                .vault
                .rotate(&name, &value, rollback_window_seconds * 1000, now)
                .map_err(fail)?;
            println!(
                "credential {name} rotated to version {version}; the previous value can be restored with `postern creds rollback {name}` for {rollback_window_seconds} s"
            );
        }
        CredsCommand::Rollback { name, location } => {
            let opened = open_existing(&location)?;
            let version = opened.vault.rollback(&name, now).map_err(fail)?;
            println!("credential {name} rolled back to version {version}");
        }
        CredsCommand::Revoke { name, location } => {
            let opened = open_existing(&location)?;
            opened.vault.revoke(&name, now).map_err(fail)?;
            println!(
                "credential {name} revoked; calls that need it now answer 503 credential_revoked"
            );
        }
        CredsCommand::List { json, location } => {
            let opened = open_existing(&location)?;
            let list = opened.vault.list().map_err(fail)?;
            let used_by = |name: &str| -> Vec<String> {
                opened
                    .config
                    .iter()
                    .flat_map(|c| c.integrations.iter())
                    .filter(|i| {
                        matches!(&i.credential, Some(c) if c.source == postern_config::SecretSource::Vault(name.to_string()))
                    })
                    .map(|i| i.name.clone())
                    .collect()
            };
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|m| {
                        let age = m.age_days(now);
                        serde_json::json!({
                            "name": m.name, "kind": m.kind, "state": m.state, "version": m.current_version,
                            "created_ms": m.created_ms, "last_rotated_ms": m.last_rotated_ms,
                            "last_used_ms": m.last_used_ms, "rollback_until_ms": m.rollback_until_ms,
                            "age_days": age,
                            "over_max_age": m.state == SecretState::Active && age > opened.max_age_days as i64,
                            "used_by": used_by(&m.name),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"credentials": items, "max_age_days": opened.max_age_days})
                );
            } else {
                // The name and kind columns as wide as their longest value.
                let name_width = list.iter().map(|m| m.name.len()).max().unwrap_or(0).max(24);
                let kind_width = list.iter().map(|m| m.kind.len()).max().unwrap_or(0).max(10);
                println!(
                    "{:<name_width$} {:<kind_width$} {:<8} {:>3} {:<19} {:<19} {:<19} {:>5}  USED BY",
                    "NAME", "KIND", "STATE", "V", "CREATED", "LAST ROTATED", "LAST USED", "AGE"
                );
                for m in &list {
                    let age = m.age_days(now);
                    let flag = if m.state == SecretState::Active && age > opened.max_age_days as i64
                    {
                        format!("{age}d !")
                    } else {
                        format!("{age}d")
                    };
                    println!(
                        "{:<name_width$} {:<kind_width$} {:<8} {:>3} {:<19} {:<19} {:<19} {:>5}  {}",
                        m.name,
                        // Escaped: older versions stored kinds unchecked.
                        m.kind.escape_debug().to_string(),
                        match m.state {
                            SecretState::Active => "active",
                            SecretState::Revoked => "revoked",
                        },
                        m.current_version,
                        format_time(Some(m.created_ms)),
                        format_time(m.last_rotated_ms),
                        format_time(m.last_used_ms),
                        flag,
                        used_by(&m.name).join(",")
                    );
                }
                if list.iter().any(|m| {
                    m.state == SecretState::Active && m.age_days(now) > opened.max_age_days as i64
                }) {
                    println!(
                        "! older than credential_max_age_days ({}): rotate with `postern creds rotate NAME`",
                        opened.max_age_days
                    );
                }
            }
        }
        CredsCommand::History {
            name,
            json,
            location,
        } => {
            let opened = open_existing(&location)?;
            let history = opened.vault.history(&name).map_err(fail)?;
            if json {
                println!("{}", serde_json::json!({"name": name, "history": history}));
            } else {
                // Control characters escaped: the rows are read from a file something else
                // may have written.
                for entry in history {
                    println!(
                        "{}  {:<9} {:<4} {}",
                        format_time(Some(entry.time_ms)),
                        entry.action.escape_debug().to_string(),
                        entry.version.map(|v| format!("v{v}")).unwrap_or_default(),
                        entry.detail.unwrap_or_default().escape_debug()
                    );
                }
            }
        }
    }
    Ok(ExitCode::Ok)
}

/// `postern callers rotate NAME`: revoke every token of the caller and issue a new one.
pub fn callers_rotate(name: &str, location: &VaultLocation, json: bool) -> ExitCode {
    callers_change(name, location, json, true)
}

/// `postern callers revoke NAME`: revoke every token of the caller.
pub fn callers_revoke(name: &str, location: &VaultLocation, json: bool) -> ExitCode {
    callers_change(name, location, json, false)
}

fn callers_change(name: &str, location: &VaultLocation, json: bool, issue_new: bool) -> ExitCode {
    let opened = match open(location) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let Some(config) = &opened.config else {
        eprintln!("error: callers are declared in the config; pass --config");
        return ExitCode::InvalidConfig;
    };
    let Some(caller) = config.callers.iter().find(|c| c.name == name) else {
        let known: Vec<&str> = config.callers.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "error: no caller {name:?} in the config (known: {})",
            known.join(", ")
        );
        return ExitCode::Failure;
    };
    // A token issued for a caller the config does not let authenticate by token (a SPIFFE ID
    // alone) would not be accepted: the gateway counts vault tokens only for callers whose
    // tokens live there.
    if issue_new && caller.token_sha256.is_none() && !caller.token_store {
        eprintln!(
            "error: caller {name:?} authenticates by its client certificate (spiffe_id) only, so a token issued for it would not be accepted; add `token_store = true` to it in the config to give it vault tokens"
        );
        return ExitCode::InvalidConfig;
    }
    let mut config_hashes = Vec::new();
    if let Some(hash) = &caller.token_sha256 {
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(hash, &mut bytes).is_ok() {
            config_hashes.push(bytes);
        }
    }
    let now = postern_gateway::now_ms();
    // A rotation is one transaction: a running gateway sees the old tokens and the new one
    // change together, never the caller with no valid token.
    let token = issue_new.then(|| postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX));
    let changed = match &token {
        Some(token) => opened.vault.rotate_caller(name, &config_hashes, token, now),
        None => opened.vault.revoke_caller(name, &config_hashes, now),
    };
    let revoked = match changed {
        Ok(count) => count,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::Failure;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"caller": name, "revoked_tokens": revoked, "token": token})
        );
    } else {
        println!("caller {name}: {revoked} token(s) revoked; a running gateway refuses them within a second");
        if let Some(token) = token {
            println!("new token (shown once; the vault keeps only its SHA-256):");
            println!("token: {token}");
        }
    }
    ExitCode::Ok
}

/// `postern callers import`: copy the config's caller token hashes into the vault, so the config
/// can drop them (`token_store = true` instead of `token_sha256`).
pub fn callers_import(location: &VaultLocation, json: bool) -> ExitCode {
    let opened = match open(location) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let Some(config) = &opened.config else {
        eprintln!("error: callers are declared in the config; pass --config");
        return ExitCode::InvalidConfig;
    };
    let now = postern_gateway::now_ms();
    let mut imported = Vec::new();
    for caller in &config.callers {
        let Some(hash) = &caller.token_sha256 else {
            continue;
        };
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(hash, &mut bytes).is_err() {
            continue;
        }
        match opened
            .vault
            .import_caller_token_hash(&caller.name, &bytes, now)
        {
            Ok(added) => {
                // Already there may mean revoked there (`callers revoke`): that token no longer
                // works, and moving to token_store would leave the caller with none.
                let revoked = !added
                    && opened.vault.caller_tokens().is_ok_and(|tokens| {
                        tokens.iter().any(|t| t.token_sha256 == bytes && t.revoked)
                    });
                imported.push((caller.name.clone(), added, revoked));
            }
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::Failure;
            }
        }
    }
    if json {
        let items: Vec<_> = imported
            .iter()
            .map(|(name, added, revoked)| {
                serde_json::json!({"caller": name, "imported": added, "revoked": revoked})
            })
            .collect();
        println!("{}", serde_json::json!({"callers": items}));
    } else {
        for (name, added, revoked) in &imported {
            let state = match (added, revoked) {
                (true, _) => "token hash moved into the vault".to_string(),
                (false, false) => "already in the vault".to_string(),
                (false, true) => format!(
                    "its token was revoked in the vault; issue a new one with `postern callers rotate {name}` before using token_store"
                ),
            };
            println!("caller {name}: {state}");
        }
        if imported.iter().any(|(_, _, revoked)| !revoked) {
            println!(
                "You can now replace `token_sha256 = ...` with `token_store = true` in the config (not for a caller whose token was revoked)."
            );
        }
    }
    ExitCode::Ok
}
