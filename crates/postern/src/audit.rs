//! `postern audit …`: the audit transparency log from the command line.
//!
//! `key`, `proof`, `checkpoint`, `consistency` and `show` ask the running gateway's admin API
//! (address and admin token from the config), or with `--offline` open the log in
//! `<data_dir>/audit` directly (only while no gateway holds it); with `--key`, `proof`, `show`
//! and `checkpoint` check what they are answered against the verifier key rather than trust it
//! (`checkpoint --state` also that the log only grew since the last run; `proof --state` and
//! `show --state` that the proof's checkpoint is consistent with the one that run saved, so a
//! key holder cannot show a receipt's checker another view of the log; the checkpoint is saved
//! once the result is out, never over a larger one another run saved meanwhile). `verify`
//! always reads the files offline and takes no lock. Exit codes: 0 ok, 1 failure, 3 invalid
//! config, 4 when the log is corrupt or was tampered with, or an answer does not verify
//! (docs/AUDIT.md).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode as ProcessExitCode;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use postern_ledger::{Ledger, LedgerOptions, VerifyError};
use postern_tlog::{leaf_hash, AuditRecord, Hash};

use crate::ExitCode;

/// The largest admin API answer `postern audit` reads (entries are at most 64 KiB, proofs a
/// few KiB): a larger one is an error, not held in memory.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// `postern audit verify`: the log is corrupt or was tampered with (distinct from 1, "could
/// not check").
pub const EXIT_LOG_CORRUPT: u8 = ExitCode::LogCorrupt as u8;

/// The log's directory inside `data_dir` (as `postern_gateway::audit::AUDIT_DIR`).
const AUDIT_DIR: &str = postern_gateway::audit::AUDIT_DIR;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Print the log's verifier key, `<origin>+<hex key id>+<base64 Ed25519 public key>`:
    /// what anyone needs to check checkpoints and proofs.
    Key {
        /// Print {"verifier_key", "origin"} as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Write a C2SP tlog-proof@v1 file for entry INDEX: its inclusion proof against the latest
    /// signed checkpoint, and that checkpoint.
    Proof {
        /// The entry's index (e.g. a response's Postern-Audit-Index).
        index: u64,
        /// Write the proof to this file instead of stdout (conventionally NAME.tlog-proof).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Check the proof before writing it: the checkpoint's signature with this verifier
        /// key (`postern audit key`, obtained independently) and the entry's inclusion in it.
        /// Exit 4 when it does not verify.
        #[arg(long)]
        key: Option<String>,
        /// A checkpoint saved by `postern audit checkpoint --key K --state FILE` (a monitor's):
        /// the proof's checkpoint must be consistent with it, or this is another view of the
        /// log (a split view). Exit 4 when it is not. Saves the proof's checkpoint there when
        /// it is the larger, once the proof is written (a failure to save is a warning).
        #[arg(long, requires = "key")]
        state: Option<PathBuf>,
        #[command(flatten)]
        source: Source,
    },
    /// Print the latest signed checkpoint. With --key, check its signature; with --state FILE
    /// as well, check that it is consistent with the checkpoint saved in FILE by the last run
    /// (the log only grew: nothing was rewritten or forked), then save it there.
    Checkpoint {
        /// The verifier key to check the checkpoint with (`postern audit key`, obtained
        /// independently).
        #[arg(long)]
        key: Option<String>,
        /// A file keeping the last checkpoint this command verified (created on first use).
        /// Exit 4 when the new checkpoint is not consistent with it.
        #[arg(long, requires = "key")]
        state: Option<PathBuf>,
        /// Print {"origin", "size", "root_hash", "verified", "consistent_with"} as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Print a consistency proof between two signed tree sizes (base64 hashes, one per line).
    Consistency {
        /// The older tree size (at least 1).
        old: u64,
        /// The newer tree size (at most the latest checkpoint's).
        new: u64,
        /// Print {"old", "new", "proof": [...]} as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Show one entry: the decoded audit record, its leaf hash, whether a checkpoint covers it.
    Show {
        /// The entry's index.
        index: u64,
        /// Check that a checkpoint signed with this verifier key includes the entry (its
        /// inclusion proof). Exit 4 when it does not verify, 1 while no checkpoint covers it.
        #[arg(long)]
        key: Option<String>,
        /// A checkpoint saved by `postern audit checkpoint --key K --state FILE`, as for
        /// `proof --state`: the checkpoint the entry is proved in must be consistent with it
        /// (exit 4 when it is not); saved there when it is the larger, once the entry is
        /// printed (a failure to save is a warning).
        #[arg(long, requires = "key")]
        state: Option<PathBuf>,
        /// Print the entry as JSON (the admin API's /v1/audit/entries/INDEX answer).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Check the whole log offline: every record's framing and CRC, the Merkle tree
    /// recomputed from the entries, every checkpoint's signature and that all checkpoints are
    /// consistent. Names the first bad entry. Exit 4 when the log is corrupt or tampered with.
    Verify {
        /// The gateway's data_dir (holding audit/), or the audit log directory itself.
        /// Default: the config's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The verifier key to check checkpoint signatures with (`postern audit key`).
        /// Default: derived from the log's own signing key — pass the key you obtained
        /// independently to also detect a replaced key.
        #[arg(long)]
        key: Option<String>,
        /// The TOML configuration file (for its data_dir when --data-dir is not given).
        #[arg(long, short, env = "POSTERN_CONFIG", default_value = "postern.toml")]
        config: PathBuf,
        /// Print the report (or the failure) as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the log is read from: the running gateway, or the files with `--offline`.
#[derive(clap::Args)]
pub struct Source {
    /// The TOML configuration file: admin_listen, data_dir and the admin token come from it.
    #[arg(long, short, env = "POSTERN_CONFIG", default_value = "postern.toml")]
    config: PathBuf,
    /// A file holding the admin token, for `show` (an entry's record is the admin's; the key,
    /// checkpoints and proofs are public). Default, with a config that does not set
    /// admin_token_sha256: <data_dir>/admin-token, when readable.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The gateway's admin API, e.g. http://gateway.internal:9090, instead of the config's
    /// admin_listen: for a monitor on another machine, with no config (`key`, `checkpoint`,
    /// `proof` and `consistency` need no admin token).
    #[arg(long, conflicts_with = "offline")]
    admin_url: Option<String>,
    /// Open the log in <data_dir>/audit directly instead of asking the running gateway.
    /// Works only while no gateway (or other postern command) holds the log.
    #[arg(long)]
    offline: bool,
    /// With --offline: this data_dir (or audit log directory) instead of the config's.
    #[arg(long, requires = "offline")]
    data_dir: Option<PathBuf>,
}

/// A failure: what to print and which exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            code: ExitCode::Failure as u8,
            message: message.into(),
        }
    }

    /// What the log or the gateway answered does not verify (exit 4).
    fn corrupt(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_LOG_CORRUPT,
            message: message.into(),
        }
    }
}

pub fn run(command: AuditCommand) -> ProcessExitCode {
    let result = match command {
        AuditCommand::Key { json, source } => key(&source, json),
        AuditCommand::Proof {
            index,
            out,
            key,
            state,
            source,
        } => proof(
            &source,
            index,
            out.as_deref(),
            key.as_deref(),
            state.as_deref(),
        ),
        AuditCommand::Checkpoint {
            key,
            state,
            json,
            source,
        } => checkpoint(&source, key.as_deref(), state.as_deref(), json),
        AuditCommand::Consistency {
            old,
            new,
            json,
            source,
        } => consistency(&source, old, new, json),
        AuditCommand::Show {
            index,
            key,
            state,
            json,
            source,
        } => show(&source, index, key.as_deref(), state.as_deref(), json),
        AuditCommand::Verify {
            data_dir,
            key,
            config,
            json,
        } => verify(data_dir.as_deref(), key.as_deref(), &config, json),
    };
    match result {
        Ok(()) => ProcessExitCode::from(ExitCode::Ok as u8),
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            ProcessExitCode::from(failure.code)
        }
    }
}

fn key(source: &Source, json: bool) -> Result<(), Failure> {
    let log = open(source)?;
    let read = log.verifier_key();
    log.close();
    let verifier_key = read?;
    if json {
        let origin = verifier_key.split('+').next().unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"verifier_key": verifier_key, "origin": origin})
        );
    } else {
        println!("{verifier_key}");
    }
    Ok(())
}

fn proof(
    source: &Source,
    index: u64,
    out: Option<&Path>,
    key: Option<&str>,
    state: Option<&Path>,
) -> Result<(), Failure> {
    let verifier = key.map(parse_verifier_key).transpose()?;
    // As for `checkpoint --state`: the saved checkpoint is read, and checked, first.
    let saved = saved_checkpoint(state, verifier.as_ref())?;
    let log = open(source)?;
    let read = log.proof_text(index).and_then(|text| {
        let Some(verifier) = &verifier else {
            return Ok((text, None));
        };
        let proof = covering_proof(&text, index, verifier)?;
        // A checkpoint signed with the key covers the entry: Postern serves it to anyone, so
        // it is asked without the admin token, whatever the answer.
        let entry = log.entry(index, true)?.bytes;
        let included = verify_inclusion(proof, index, &entry)?;
        if let Some(saved) = &saved {
            let what = format!("the checkpoint entry {index} is proved in");
            check_one_log(&log, saved, &included.checkpoint, &what)?;
        }
        Ok((text, Some(included)))
    });
    log.close();
    let (text, included) = read?;
    if let (Some(verifier), Some(included)) = (&verifier, &included) {
        eprintln!(
            "verified: entry {index} is in the checkpoint of size {} signed by {}{}",
            included.checkpoint.size,
            verifier.verifier_key(),
            consistent_with(saved.as_ref())
        );
    }
    match out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))?;
            eprintln!("wrote the proof of entry {index} to {}", path.display());
        }
        None => print!("{text}"),
    }
    // Saved once the verified proof is out: failing to save does not undo it.
    if let (Some(path), Some(verifier), Some(included)) = (state, &verifier, &included) {
        advance_state(path, verifier, saved.as_ref(), included)?;
    }
    Ok(())
}

/// A checkpoint an entry was proved to be in: as parsed, and its signed note as sent.
struct Included {
    checkpoint: postern_tlog::Checkpoint,
    note: String,
}

/// A tlog-proof of entry `index` whose checkpoint is signed with the key and holds the entry,
/// with that checkpoint opened (the inclusion itself is checked by [`verify_inclusion`] once
/// the entry is read: such an entry is one Postern serves to anyone, read without the admin
/// token). One that is not is exit 4.
fn covering_proof(
    text: &str,
    index: u64,
    verifier: &postern_tlog::NoteVerifier,
) -> Result<(postern_tlog::TlogProof, postern_tlog::Checkpoint), Failure> {
    let proof = postern_tlog::TlogProof::parse(text).map_err(|e| {
        Failure::corrupt(printable(&format!(
            "the proof of entry {index} is malformed: {e}"
        )))
    })?;
    if proof.index != index {
        return Err(Failure::corrupt(format!(
            "the proof asked for entry {index} is for entry {}",
            proof.index
        )));
    }
    let checkpoint = postern_tlog::Checkpoint::open(
        &proof.checkpoint_note,
        std::slice::from_ref(verifier),
        verifier.name(),
    )
    .map_err(|e| {
        Failure::corrupt(printable(&format!(
            "the proof of entry {index} does not verify against {}: {e}",
            verifier.verifier_key()
        )))
    })?;
    if index >= checkpoint.size {
        return Err(Failure::corrupt(format!(
            "the proof of entry {index} is in a checkpoint of size {}, which does not hold it",
            checkpoint.size
        )));
    }
    Ok((proof, checkpoint))
}

/// Checks that `entry` is at `index` in the checkpoint of a [`covering_proof`] (whose signature
/// that checked); a proof that does not verify is exit 4.
fn verify_inclusion(
    (proof, checkpoint): (postern_tlog::TlogProof, postern_tlog::Checkpoint),
    index: u64,
    entry: &[u8],
) -> Result<Included, Failure> {
    postern_tlog::verify_inclusion(
        index,
        checkpoint.size,
        &postern_tlog::leaf_hash(entry),
        &proof.inclusion_proof,
        &checkpoint.root_hash,
    )
    .map_err(|e| {
        Failure::corrupt(format!(
            "the proof of entry {index} does not verify against its checkpoint (size {}): {e}",
            checkpoint.size
        ))
    })?;
    Ok(Included {
        checkpoint,
        note: proof.checkpoint_note,
    })
}

fn parse_verifier_key(key: &str) -> Result<postern_tlog::NoteVerifier, Failure> {
    postern_tlog::NoteVerifier::from_verifier_key(key.trim()).map_err(|e| {
        Failure::new(format!(
            "--key is not a verifier key ({e}); pass what `postern audit key` printed: <origin>+<key id>+<public key>"
        ))
    })
}

fn checkpoint(
    source: &Source,
    key: Option<&str>,
    state: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    let verifier = key.map(parse_verifier_key).transpose()?;
    // The saved checkpoint is read, and checked, before the gateway is asked anything.
    let saved = match (state, &verifier) {
        (Some(path), Some(verifier)) => read_state(path, verifier)?,
        _ => None,
    };
    let log = open(source)?;
    let read = log.checkpoint_note().and_then(|note| {
        let Some(verifier) = &verifier else {
            return Ok((note, None));
        };
        let latest =
            postern_tlog::Checkpoint::open(&note, std::slice::from_ref(verifier), verifier.name())
                .map_err(|e| {
                    Failure::corrupt(printable(&format!(
                        "the latest checkpoint does not verify against {}: {e}",
                        verifier.verifier_key()
                    )))
                })?;
        if let Some(old) = &saved {
            if latest.size < old.size {
                return Err(Failure::corrupt(format!(
                    "the log went backwards: its latest checkpoint has size {}, the one saved in the state file {}",
                    latest.size, old.size
                )));
            }
            check_one_log(&log, old, &latest, "the latest checkpoint")?;
        }
        Ok((note, Some(latest)))
    });
    log.close();
    let (note, latest) = read?;
    if json {
        let parsed = match &latest {
            Some(checkpoint) => Some(checkpoint.clone()),
            // The note's text is everything up to its blank line, its own last newline kept.
            None => note.split_once("\n\n").and_then(|(text, _)| {
                postern_tlog::Checkpoint::parse_text(&format!("{text}\n")).ok()
            }),
        };
        println!(
            "{}",
            serde_json::json!({
                "origin": parsed.as_ref().map(|c| c.origin.clone()),
                "size": parsed.as_ref().map(|c| c.size),
                "root_hash": parsed.as_ref().map(|c| c.root_hash.to_base64()),
                "verified": latest.is_some(),
                "consistent_with": saved.as_ref().map(|c| c.size),
                "note": note,
            })
        );
    } else {
        print!("{note}");
        if let Some(latest) = &latest {
            eprintln!(
                "verified: size {} signed by {}{}",
                latest.size,
                verifier
                    .as_ref()
                    .map_or(String::new(), |v| v.verifier_key()),
                consistent_with(saved.as_ref())
            );
        }
    }
    // Saved once the result is out. Saving is what a monitor runs this for (a state never
    // saved would check nothing next time): failing to is exit 1, unlike for `proof` and
    // `show`.
    if let (Some(path), Some(verifier), Some(latest)) = (state, &verifier, &latest) {
        save_state(path, verifier, saved.as_ref(), latest, &note)?;
    }
    Ok(())
}

/// The checkpoint saved by the last `checkpoint --state` run, checked with the key (a state
/// file that does not verify is refused: it is not what this command saved).
fn read_state(
    path: &Path,
    verifier: &postern_tlog::NoteVerifier,
) -> Result<Option<postern_tlog::Checkpoint>, Failure> {
    let note = match std::fs::read(path) {
        Ok(note) => note,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::new(format!("reading {}: {e}", path.display()))),
    };
    let note = String::from_utf8(note).map_err(|_| {
        Failure::new(format!(
            "{} is not a checkpoint this command saved (not text); move it away to start afresh",
            path.display()
        ))
    })?;
    postern_tlog::Checkpoint::open(&note, std::slice::from_ref(verifier), verifier.name())
        .map(Some)
        .map_err(|e| {
            Failure::new(format!(
                "{} does not hold a checkpoint signed by {} ({e}); pass the key it was saved with, or move the file away to start afresh",
                path.display(),
                verifier.verifier_key()
            ))
        })
}

/// Replaces the state file whole.
fn write_state(path: &Path, note: &str) -> Result<(), Failure> {
    postern_keyfile::replace_file(path, note.as_bytes())
        .map_err(|e| Failure::new(format!("saving the checkpoint to {}: {e}", path.display())))
}

/// `proof --state` and `show --state`: the checkpoint saved in `state`, which must exist (with
/// nothing to compare with, the proof's checkpoint would be taken on trust).
fn saved_checkpoint(
    state: Option<&Path>,
    verifier: Option<&postern_tlog::NoteVerifier>,
) -> Result<Option<postern_tlog::Checkpoint>, Failure> {
    let (Some(path), Some(verifier)) = (state, verifier) else {
        return Ok(None);
    };
    match read_state(path, verifier)? {
        Some(saved) => Ok(Some(saved)),
        None => Err(Failure::new(format!(
            "{} does not exist: --state names the file `postern audit checkpoint --key K --state FILE` keeps, which the proof's checkpoint is checked against; run that first",
            path.display()
        ))),
    }
}

/// `proof --state` and `show --state`: saves the checkpoint the entry was proved in when it is
/// larger than the saved one (as [`save_state`]), as `checkpoint --state` saves the latest: the
/// next check starts from the largest tree seen. The verification stands whatever happens here:
/// a failure to save is a warning (exit 0), but for a fork the state file shows (exit 4).
fn advance_state(
    path: &Path,
    verifier: &postern_tlog::NoteVerifier,
    saved: Option<&postern_tlog::Checkpoint>,
    included: &Included,
) -> Result<(), Failure> {
    match save_state(path, verifier, saved, &included.checkpoint, &included.note) {
        Err(failure) if failure.code != EXIT_LOG_CORRUPT => {
            eprintln!(
                "warning: the checkpoint of size {} was verified but not saved: {}",
                included.checkpoint.size, failure.message
            );
            Ok(())
        }
        saved => saved,
    }
}

/// Saves `note`, the checkpoint `new` (verified with the key, and consistent with `earlier`:
/// what the state file held when this run read it, `None` when there was none), in the state
/// file when it is larger than the one there. The file is read again just before: another
/// run (a monitor's `checkpoint --state` from cron, a `proof --state`) may have saved a
/// checkpoint meanwhile, which is not overwritten by a smaller one, nor by one this run did not
/// check against it: when the file changed meanwhile to a smaller checkpoint than `new`, or was
/// removed, it is left as it is, with a warning (`new` was checked against what it held
/// before). The same size with another root, both signed with the key, is a fork (exit 4).
fn save_state(
    path: &Path,
    verifier: &postern_tlog::NoteVerifier,
    earlier: Option<&postern_tlog::Checkpoint>,
    new: &postern_tlog::Checkpoint,
    note: &str,
) -> Result<(), Failure> {
    // Runs that save at once take turns from the read to the replacement: without it, a run
    // with a smaller checkpoint could land after one with a larger.
    let _turn = lock_state(path)?;
    let now = read_state(path, verifier)?;
    let same = |a: &postern_tlog::Checkpoint, b: &postern_tlog::Checkpoint| {
        a.size == b.size && a.root_hash == b.root_hash
    };
    let unchanged = match (&now, earlier) {
        (None, None) => true,
        (Some(now), Some(earlier)) => same(now, earlier),
        _ => false,
    };
    match &now {
        Some(now) if now.size == new.size && now.root_hash != new.root_hash => {
            Err(Failure::corrupt(format!(
                "{} now holds a checkpoint of size {} with root {}, and the one this run verified has that size with root {}: two trees of one size, both signed with the key; the log was forked",
                path.display(),
                now.size,
                now.root_hash.to_base64(),
                new.root_hash.to_base64()
            )))
        }
        // It holds this checkpoint, or a larger one (perhaps saved meanwhile).
        Some(now) if now.size >= new.size => Ok(()),
        // Another run (`checkpoint --state`, `proof --state`, `show --state`) saved meanwhile.
        _ if !unchanged => {
            eprintln!(
                "warning: {} changed while this ran ({}), so the checkpoint of size {} (checked against what it held before) was not saved there",
                path.display(),
                now.map_or("it was removed".to_string(), |now| format!(
                    "it now holds a checkpoint of size {}",
                    now.size
                )),
                new.size
            );
            Ok(())
        }
        _ => write_state(path, note),
    }
}

/// An exclusive lock on `<state>.lock` (made 0600 beside the state file, and kept), held while
/// the returned file is open.
fn lock_state(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let failed = |e: std::io::Error| {
        Failure::new(format!(
            "locking {} to save the checkpoint: {e}",
            Path::new(&name).display()
        ))
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&name)
        .map_err(failed)?;
    file.lock().map_err(failed)?;
    Ok(file)
}

/// `; consistent with the saved checkpoint of size N`, when one was saved.
fn consistent_with(saved: Option<&postern_tlog::Checkpoint>) -> String {
    saved.map_or(String::new(), |old| {
        format!(
            "; consistent with the saved checkpoint of size {}",
            old.size
        )
    })
}

/// Checks that `seen` (`what`, e.g. "the latest checkpoint") and the checkpoint `saved` in the
/// state file, both signed with the key, are views of one log: the smaller tree a prefix of
/// the larger (the gateway's RFC 9162 consistency proof), equal sizes with equal roots. Every
/// tree extends the empty one (a checkpoint of size 0, which older versions signed at first
/// start, and which no consistency proof is asked for), whose root must be the empty tree's.
/// Not one log is exit 4: it was rewritten or forked, or `seen` is another view of it; so is a
/// gateway that no longer has the larger of the two trees (its latest checkpoint is smaller
/// than one signed with its key: the log went backwards).
fn check_one_log(
    log: &Log,
    saved: &postern_tlog::Checkpoint,
    seen: &postern_tlog::Checkpoint,
    what: &str,
) -> Result<(), Failure> {
    let (old, new) = if saved.size <= seen.size {
        (saved, seen)
    } else {
        (seen, saved)
    };
    let not_one_log = |why: String| {
        Failure::corrupt(format!(
            "{what} (size {}) is not consistent with the checkpoint saved in the state file (size {}): {why}; the log was rewritten or forked",
            seen.size, saved.size
        ))
    };
    if old.size == 0 {
        // Both, when both are of size 0.
        for empty in [old, new].into_iter().filter(|c| c.size == 0) {
            if empty.root_hash != postern_tlog::empty_root() {
                return Err(not_one_log(format!(
                    "the checkpoint of size 0 has root {}, not the empty tree's",
                    empty.root_hash.to_base64()
                )));
            }
        }
        return Ok(());
    }
    let proof = if old.size < new.size {
        match log.consistency_proof(old.size, new.size) {
            Ok(proof) => proof,
            Err(refused) if refused.beyond_latest => {
                let which = if new.size == saved.size {
                    format!(
                        "the checkpoint of size {} saved in the state file, which is larger than {what} (size {})",
                        saved.size, seen.size
                    )
                } else {
                    format!("{what} (size {}), which it signed", seen.size)
                };
                return Err(Failure::corrupt(format!(
                    "the gateway no longer has {which}: the log went backwards ({})",
                    refused.failure.message
                )));
            }
            Err(refused) => return Err(refused.failure),
        }
    } else {
        Vec::new()
    };
    postern_tlog::verify_consistency(old.size, new.size, &old.root_hash, &new.root_hash, &proof)
        .map_err(|e| not_one_log(e.to_string()))
}

fn consistency(source: &Source, old: u64, new: u64, json: bool) -> Result<(), Failure> {
    let log = open(source)?;
    let read = log.consistency(old, new);
    log.close();
    let hashes: Vec<String> = read?.iter().map(Hash::to_base64).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"old": old, "new": new, "proof": hashes})
        );
    } else {
        for hash in hashes {
            println!("{hash}");
        }
    }
    Ok(())
}

/// One entry as read from either source.
struct EntryView {
    index: u64,
    bytes: Vec<u8>,
    checkpoint_size: u64,
}

impl EntryView {
    /// The same shape as the admin API's `/v1/audit/entries/INDEX`.
    fn to_json(&self) -> serde_json::Value {
        let (record, decode_error) = match AuditRecord::decode(&self.bytes) {
            Ok(record) => (
                serde_json::to_value(&record).unwrap_or(serde_json::Value::Null),
                None,
            ),
            Err(e) => (serde_json::Value::Null, Some(e.to_string())),
        };
        serde_json::json!({
            "index": self.index,
            "leaf_hash": leaf_hash(&self.bytes).to_hex(),
            "entry_base64": base64::engine::general_purpose::STANDARD.encode(&self.bytes),
            "covered_by_checkpoint": self.index < self.checkpoint_size,
            "checkpoint_size": self.checkpoint_size,
            "record": record,
            "decode_error": decode_error,
        })
    }
}

fn show(
    source: &Source,
    index: u64,
    key: Option<&str>,
    state: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    let verifier = key.map(parse_verifier_key).transpose()?;
    let saved = saved_checkpoint(state, verifier.as_ref())?;
    let log = open(source)?;
    let read = read_shown(&log, index, verifier.as_ref(), saved.as_ref());
    log.close();
    let (view, included) = read?;
    let verified = included.as_ref().map(|included| &included.checkpoint);
    if json {
        let mut answer = view.to_json();
        answer["verified_in_checkpoint_size"] = verified.map(|c| c.size).into();
        if let Some(saved) = &saved {
            answer["consistent_with"] = saved.size.into();
        }
        println!("{answer}");
    } else {
        print_entry(&view, verified, verifier.as_ref(), saved.as_ref());
    }
    // Saved once the verified entry is out: failing to save does not undo it.
    if let (Some(path), Some(verifier), Some(included)) = (state, &verifier, &included) {
        advance_state(path, verifier, saved.as_ref(), included)?;
    }
    Ok(())
}

/// `show`'s entry, and with the key the checkpoint it is proved in (consistent with `saved`).
/// The proof is asked first: only it decides whether a checkpoint covers the entry, and when
/// one signed with the key does, the entry is one Postern serves to anyone, asked without the
/// admin token whatever the answer. Without a proof, the entry is asked as any other (the
/// token after a `401`), to tell one no checkpoint covers yet.
fn read_shown(
    log: &Log,
    index: u64,
    verifier: Option<&postern_tlog::NoteVerifier>,
    saved: Option<&postern_tlog::Checkpoint>,
) -> Result<(EntryView, Option<Included>), Failure> {
    let Some(verifier) = verifier else {
        return Ok((log.entry(index, false)?, None));
    };
    let proof = match log.proof_text(index) {
        Ok(text) => covering_proof(&text, index, verifier)?,
        Err(failure) => {
            let view = log.entry(index, false)?;
            if view.index >= view.checkpoint_size {
                return Err(Failure::new(format!(
                    "entry {index} is not yet covered by a signed checkpoint (latest size {}), so it cannot be verified; the gateway signs one every audit_checkpoint_interval_ms",
                    view.checkpoint_size
                )));
            }
            return Err(failure);
        }
    };
    let view = log.entry(index, true)?;
    let included = verify_inclusion(proof, index, &view.bytes)?;
    if let Some(saved) = saved {
        let what = format!("the checkpoint entry {index} is proved in");
        check_one_log(log, saved, &included.checkpoint, &what)?;
    }
    Ok((view, Some(included)))
}

/// `show`'s table.
fn print_entry(
    view: &EntryView,
    verified: Option<&postern_tlog::Checkpoint>,
    verifier: Option<&postern_tlog::NoteVerifier>,
    saved: Option<&postern_tlog::Checkpoint>,
) {
    let covered = if view.index < view.checkpoint_size {
        format!("yes (latest checkpoint size {})", view.checkpoint_size)
    } else {
        format!("not yet (latest checkpoint size {})", view.checkpoint_size)
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("index", view.index.to_string()),
        ("leaf_hash", leaf_hash(&view.bytes).to_hex()),
        ("checkpointed", covered),
    ];
    if let (Some(checkpoint), Some(verifier)) = (verified, verifier) {
        rows.push((
            "verified",
            format!(
                "yes (inclusion proof to the checkpoint of size {} signed by {}{})",
                checkpoint.size,
                verifier.verifier_key(),
                consistent_with(saved)
            ),
        ));
    }
    let show_opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    match AuditRecord::decode(&view.bytes) {
        Ok(r) => {
            rows.extend([
                ("version", r.version.to_string()),
                ("kind", format!("{:?}", r.kind).to_lowercase()),
                ("time_unix_ms", r.time_unix_ms.to_string()),
                ("request_id", r.request_id),
                ("caller", r.caller),
                ("integration", r.integration),
                ("operation", r.operation),
                ("method", r.method),
                ("path_template", r.path_template),
                ("decision", format!("{:?}", r.decision).to_lowercase()),
                ("reason", show_opt(r.reason)),
                ("status", show_opt(r.status.map(|s| s.to_string()))),
                (
                    "request_bytes",
                    show_opt(r.request_bytes.map(|s| s.to_string())),
                ),
                (
                    "response_bytes",
                    show_opt(r.response_bytes.map(|s| s.to_string())),
                ),
                (
                    "data_classes",
                    if r.data_classes.is_empty() {
                        "-".to_string()
                    } else {
                        r.data_classes.join(", ")
                    },
                ),
                (
                    "intent_index",
                    show_opt(r.intent_index.map(|s| s.to_string())),
                ),
            ]);
            for (name, value) in r.hmacs {
                rows.push(("hmac", format!("{name} {value}")));
            }
        }
        Err(e) => rows.push(("undecodable", e.to_string())),
    }
    for (name, value) in rows {
        let value = if value.is_empty() { "-" } else { &value };
        println!("{name:<16}{value}");
    }
}

fn verify(
    data_dir: Option<&Path>,
    key: Option<&str>,
    config: &Path,
    json: bool,
) -> Result<(), Failure> {
    let dir = match data_dir {
        Some(dir) => log_dir(dir),
        None => log_dir(&load_config(config)?.gateway.data_dir),
    };
    if !dir.join("log").is_dir() {
        let message = format!(
            "no audit log in {} (expected {}/log); pass the gateway's data_dir with --data-dir",
            dir.display(),
            dir.display()
        );
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": false, "dir": dir.display().to_string(), "corrupt": false, "error": message})
            );
        }
        return Err(Failure::new(message));
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("valid template"),
        );
        bar
    });
    let result = postern_ledger::verify_dir(&dir, key, |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(report) => {
            let latest = report.latest_checkpoint.as_ref();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "dir": dir.display().to_string(),
                        "entries": report.entries,
                        "segments": report.segments,
                        "root_hash": report.root_hash.to_base64(),
                        "checkpoints_verified": report.checkpoints_verified,
                        "latest_checkpoint_size": latest.map(|c| c.size),
                        "verifier_key": report.verifier_key,
                        "stored_hashes_checked": report.stored_hashes_checked,
                        "torn_tail": report.torn_tail.as_ref().map(|(path, offset)| serde_json::json!({"segment": path.display().to_string(), "offset": offset})),
                    })
                );
            } else {
                println!(
                    "ok: {} entries in {} segment(s), root {}",
                    report.entries,
                    report.segments,
                    report.root_hash.to_base64()
                );
                println!(
                    "{} checkpoint signature(s) verified and consistent{}",
                    report.checkpoints_verified,
                    latest.map_or(String::new(), |c| format!(
                        "; the latest covers {} entries",
                        c.size
                    ))
                );
                if latest.is_none() && report.entries > 0 {
                    println!(
                        "warning: no signed checkpoint covers these entries (a new log's first is written within seconds); pass --key to require one"
                    );
                }
                if let Some(c) = latest {
                    if c.size < report.entries {
                        println!(
                            "entries {}..{} are not yet covered by a signed checkpoint",
                            c.size, report.entries
                        );
                    }
                }
                println!("verifier key: {}", report.verifier_key);
                if let Some((segment, offset)) = &report.torn_tail {
                    println!(
                        "note: {} ends in a torn (unacknowledged) record at byte offset {offset}; the gateway truncates it when it opens the log",
                        segment.display()
                    );
                }
            }
            Ok(())
        }
        Err(error) => {
            let tampered = is_tampering(&error);
            let message = if tampered {
                format!("the audit log is corrupt or was tampered with: {error}")
            } else {
                format!("could not verify the audit log: {error}")
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "dir": dir.display().to_string(), "corrupt": tampered, "error": error.to_string()})
                );
            }
            Err(Failure {
                code: if tampered {
                    EXIT_LOG_CORRUPT
                } else {
                    ExitCode::Failure as u8
                },
                message,
            })
        }
    }
}

/// Whether a verification failure shows damage to the log (exit 4) rather than an inability
/// to check it (exit 1).
fn is_tampering(error: &VerifyError) -> bool {
    match error {
        VerifyError::Io { .. }
        | VerifyError::Unreadable(_)
        | VerifyError::NoKey(_)
        | VerifyError::BadKey(_) => false,
        VerifyError::BadRecord { .. }
        | VerifyError::SegmentGap { .. }
        | VerifyError::EntryMismatch { .. }
        | VerifyError::CheckpointSignature { .. }
        | VerifyError::CheckpointRootMismatch { .. }
        | VerifyError::CheckpointBeyondLog { .. }
        | VerifyError::CheckpointRollback { .. }
        | VerifyError::Unsigned { .. } => true,
    }
}

/// The gateway's data_dir holds the log in `audit/`; a directory that is itself a log (has
/// `log/`) is taken as is.
fn log_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(AUDIT_DIR);
    if nested.join("log").is_dir() || !dir.join("log").is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn load_config(path: &Path) -> Result<postern_config::Config, Failure> {
    // The errors carry their own `file:line:column: error:` prefixes: printed as they are, as
    // every other command prints them.
    postern_config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        Failure {
            code: ExitCode::InvalidConfig as u8,
            message: String::new(),
        }
    })
}

enum Log {
    Online(Admin),
    Offline(Offline),
}

fn open(source: &Source) -> Result<Log, Failure> {
    if source.offline {
        let dir = match &source.data_dir {
            Some(dir) => log_dir(dir),
            None => log_dir(&load_config(&source.config)?.gateway.data_dir),
        };
        return Offline::open(&dir).map(Log::Offline);
    }
    if let Some(url) = &source.admin_url {
        return Admin::at(url, source.admin_token_file.as_deref()).map(Log::Online);
    }
    let config = load_config(&source.config)?;
    Admin::new(&config, source.admin_token_file.as_deref()).map(Log::Online)
}

impl Log {
    /// The log's verifier key, `<origin>+<key id>+<public key>`.
    fn verifier_key(&self) -> Result<String, Failure> {
        match self {
            Log::Online(admin) => {
                let body = admin
                    .get_public("/v1/audit/key", "this route")
                    .map_err(|refused| refused.failure)?;
                Ok(String::from_utf8_lossy(&body).trim().to_string())
            }
            Log::Offline(offline) => Ok(offline.ledger.verifier_key()),
        }
    }

    /// Entry `index`'s tlog-proof@v1 text against the latest signed checkpoint.
    fn proof_text(&self, index: u64) -> Result<String, Failure> {
        match self {
            Log::Online(admin) => {
                let body = admin
                    .get_public(&format!("/v1/audit/proof/{index}"), "this route")
                    .map_err(|refused| refused.failure)?;
                String::from_utf8(body.to_vec())
                    .map_err(|_| Failure::new("the gateway answered a proof that is not text"))
            }
            Log::Offline(offline) => {
                let size = offline.ledger.size();
                if index >= size {
                    return Err(Failure::new(format!(
                        "entry {index} does not exist: the log has {size} entries"
                    )));
                }
                offline
                    .ledger
                    .tlog_proof(index)
                    .map(|p| p.encode())
                    .map_err(|e| {
                        Failure::new(format!("{e} (the gateway signs a checkpoint every audit_checkpoint_interval_ms while it runs)"))
                    })
            }
        }
    }

    /// Entry `index`'s bytes and the latest checkpoint's size. `covered`: a checkpoint signed
    /// with the key is known to cover it, so Postern serves it to anyone and the admin token is
    /// never sent; otherwise it is after a `401` ([`Admin::get_token_after_401`]).
    fn entry(&self, index: u64, covered: bool) -> Result<EntryView, Failure> {
        match self {
            Log::Online(admin) => {
                let path = format!("/v1/audit/entries/{index}");
                let body = if covered {
                    admin
                        .get_public(&path, "an entry a signed checkpoint covers")
                        .map_err(|refused| refused.failure)?
                } else {
                    admin.get_token_after_401(&path)?
                };
                let answer: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Failure::new(format!("the gateway's answer is not JSON: {e}")))?;
                let bytes = answer["entry_base64"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .ok_or_else(|| Failure::new("the gateway's answer has no entry_base64"))?;
                if answer["leaf_hash"].as_str() != Some(leaf_hash(&bytes).to_hex().as_str()) {
                    return Err(Failure::corrupt(
                        "the gateway's leaf_hash does not match the entry bytes it sent",
                    ));
                }
                Ok(EntryView {
                    index,
                    checkpoint_size: answer["checkpoint_size"].as_u64().unwrap_or(0),
                    bytes,
                })
            }
            Log::Offline(offline) => {
                let size = offline.ledger.size();
                if index >= size {
                    return Err(Failure::new(format!(
                        "entry {index} does not exist: the log has {size} entries"
                    )));
                }
                Ok(EntryView {
                    index,
                    checkpoint_size: offline.ledger.latest_checkpoint().map_or(0, |c| c.size),
                    bytes: offline
                        .ledger
                        .entry(index)
                        .map_err(|e| Failure::new(e.to_string()))?,
                })
            }
        }
    }

    /// The latest signed checkpoint note.
    fn checkpoint_note(&self) -> Result<String, Failure> {
        match self {
            Log::Online(admin) => {
                let body = admin
                    .get_public("/log/checkpoint", "this route")
                    .map_err(|refused| refused.failure)?;
                String::from_utf8(body.to_vec())
                    .map_err(|_| Failure::new("the gateway answered a checkpoint that is not text"))
            }
            Log::Offline(offline) => offline.ledger.checkpoint_text().ok_or_else(|| {
                Failure::new("the log has no signed checkpoint yet (the gateway signs its first once it holds an entry)")
            }),
        }
    }

    /// The consistency proof between two signed tree sizes.
    fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, Failure> {
        self.consistency_proof(old, new)
            .map_err(|refused| refused.failure)
    }

    /// [`Log::consistency`], telling when the log answered that `new` is beyond its latest
    /// signed checkpoint (the admin API's `404 not_checkpointed`).
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, NoProof> {
        let failed = |failure| NoProof {
            beyond_latest: false,
            failure,
        };
        match self {
            Log::Online(admin) => {
                let path = format!("/v1/audit/consistency?old={old}&new={new}");
                let body = admin
                    .get_public(&path, "this route")
                    .map_err(|refused| NoProof {
                        beyond_latest: refused.status == Some(http::StatusCode::NOT_FOUND)
                            && refused.code.as_deref() == Some("not_checkpointed"),
                        failure: refused.failure,
                    })?;
                String::from_utf8_lossy(&body)
                    .lines()
                    .map(|line| {
                        Hash::from_base64(line).ok_or_else(|| {
                            failed(Failure::new(format!(
                                "the gateway's consistency proof holds {:?}, not a base64 hash",
                                printable(line)
                            )))
                        })
                    })
                    .collect()
            }
            Log::Offline(offline) => {
                let signed = offline.ledger.latest_checkpoint().map_or(0, |c| c.size);
                if old == 0 || old > new {
                    Err(failed(Failure::new(format!(
                        "need 0 < OLD <= NEW (got {old}, {new})"
                    ))))
                } else if new > signed {
                    Err(NoProof {
                        beyond_latest: true,
                        failure: Failure::new(format!(
                            "tree size {new} is beyond the latest checkpoint (size {signed})"
                        )),
                    })
                } else {
                    offline
                        .ledger
                        .consistency_proof(old, new)
                        .map_err(|e| failed(Failure::new(e.to_string())))
                }
            }
        }
    }

    /// Lets go of the log (an offline log's lock).
    fn close(self) {
        if let Log::Offline(offline) = self {
            offline.close();
        }
    }
}

/// A consistency proof the log did not give; `beyond_latest` when it answered that the newer
/// size is beyond its latest signed checkpoint.
struct NoProof {
    beyond_latest: bool,
    failure: Failure,
}

/// The log opened directly (holds its lock until `close`).
struct Offline {
    runtime: tokio::runtime::Runtime,
    ledger: Ledger,
}

impl Offline {
    fn open(dir: &Path) -> Result<Offline, Failure> {
        let origin = postern_ledger::stored_origin(dir)
            .map_err(|e| Failure::new(e.to_string()))?
            .ok_or_else(|| {
                Failure::new(format!(
                    "no audit log in {} (no signing-key); pass the gateway's data_dir with --data-dir",
                    dir.display()
                ))
            })?;
        let runtime = current_thread_runtime()?;
        let ledger = runtime
            .block_on(Ledger::open(dir, LedgerOptions::new(origin)))
            .map_err(|e| Failure::new(e.to_string()))?
            .0;
        Ok(Offline { runtime, ledger })
    }

    fn close(self) {
        self.runtime.block_on(self.ledger.close());
    }
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))
}

/// The running gateway's admin API.
struct Admin {
    runtime: tokio::runtime::Runtime,
    base: String,
    /// Sent when known: only an entry's record needs it.
    token: Option<String>,
}

/// The admin token in `path`; `Ok(None)` when the file is missing and `required` is false.
fn read_token(path: &Path, required: bool) -> Result<Option<String>, Failure> {
    let token = match std::fs::read_to_string(path) {
        Ok(token) => token.trim().to_string(),
        // The default file may be missing, or the postern user's alone (mode 0600): the public
        // routes need no token.
        Err(e)
            if !required
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "reading the admin token {}: {e} (the gateway writes it on its first start)",
                path.display()
            )))
        }
    };
    if token.is_empty() {
        return Err(Failure::new(format!(
            "the admin token file {} is empty",
            path.display()
        )));
    }
    Ok(Some(token))
}

impl Admin {
    fn new(config: &postern_config::Config, token_file: Option<&Path>) -> Result<Admin, Failure> {
        let mut addr = config.gateway.admin_listen;
        if addr.port() == 0 {
            return Err(Failure::new(
                "admin_listen has port 0, so the gateway's admin port is not known; set a port in the config, or use --offline",
            ));
        }
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        // The token file given must be read; the default one only if it is there (the public
        // routes need none).
        let token = match (token_file, &config.gateway.admin_token_sha256) {
            (Some(path), _) => read_token(path, true)?,
            (None, Some(_)) => None,
            (None, None) => read_token(
                &config
                    .gateway
                    .data_dir
                    .join(postern_gateway::ADMIN_TOKEN_FILE),
                false,
            )?,
        };
        Ok(Admin {
            runtime: current_thread_runtime()?,
            base: format!("http://{addr}"),
            token,
        })
    }

    /// The admin API at `url` (`http://host:port`), without a config.
    fn at(url: &str, token_file: Option<&Path>) -> Result<Admin, Failure> {
        let base = url.trim_end_matches('/');
        // Echoed only when it holds nothing that could be a credential (a user name and
        // password, a query).
        let shown = match url.contains(['@', '?', '#']) {
            true => format!(
                "({} characters, holding user information or a query)",
                url.chars().count()
            ),
            false => format!("{url:?}"),
        };
        let parsed: http::Uri = base.parse().map_err(|e| {
            Failure::new(format!(
                "--admin-url {shown} is not a URL ({e}); give it as http://HOST:PORT"
            ))
        })?;
        if parsed.scheme_str() != Some("http")
            || parsed.authority().is_none_or(|a| a.as_str().contains('@'))
            || !parsed.path().trim_end_matches('/').is_empty()
            || parsed.query().is_some()
        {
            return Err(Failure::new(format!(
                "--admin-url {shown} is not of the form http://HOST:PORT (the admin listener serves plain HTTP, with no path)"
            )));
        }
        Ok(Admin {
            runtime: current_thread_runtime()?,
            base: base.to_string(),
            token: token_file
                .map(|path| read_token(path, true))
                .transpose()?
                .flatten(),
        })
    }

    /// `GET path`; the body of a 200 answer, else the API's error message. Only for an entry
    /// no signed checkpoint is known to cover (`/v1/audit/entries/INDEX`), the one route the
    /// admin API can want the admin token for; everything else `postern audit` asks is public
    /// (`public_audit` in postern-gateway's admin.rs, docs/ADMIN.md) and asked with
    /// [`Admin::get_public`]. Asked without the token first: it goes only where a `401` says it
    /// is needed (over plain HTTP, perhaps to another machine).
    fn get_token_after_401(&self, path: &str) -> Result<Bytes, Failure> {
        match self.get(path, false) {
            Err(refused)
                if refused.status == Some(http::StatusCode::UNAUTHORIZED)
                    && self.token.is_some() =>
            {
                self.get(path, true)
            }
            answer => answer,
        }
        .map_err(|mut refused| {
            if refused.status == Some(http::StatusCode::UNAUTHORIZED) && self.token.is_none() {
                refused
                    .failure
                    .message
                    .push_str(" (this needs the admin token: pass --admin-token-file FILE)");
            }
            refused.failure
        })
    }

    /// `GET path` without the admin token, whatever the answer: `what` Postern serves to
    /// anyone (a `401` is not how Postern answers it, and whoever sent one does not get the
    /// token).
    fn get_public(&self, path: &str, what: &str) -> Result<Bytes, Refused> {
        self.get(path, false).map_err(|mut refused| {
            if refused.status == Some(http::StatusCode::UNAUTHORIZED) {
                refused.failure.message.push_str(&format!(
                    " (Postern serves {what} to anyone, so the admin token is not sent for it: is this Postern's admin API?)"
                ));
            }
            refused
        })
    }

    /// `GET path`, with the admin token when `with_token`.
    fn get(&self, path: &str, with_token: bool) -> Result<Bytes, Refused> {
        let url = format!("{}{path}", self.base);
        let refused = |failure| Refused {
            status: None,
            code: None,
            failure,
        };
        let mut request = http::Request::get(&url);
        if let Some(token) = self.token.as_ref().filter(|_| with_token) {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| refused(Failure::new(format!("bad request {url}: {e}"))))?;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                let response = client.request(request).await?;
                let status = response.status();
                // An entry, a proof or a key is small: a larger answer is not held.
                let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            })
            .await
        });
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                return Err(refused(Failure::new(format!(
                    "cannot reach the gateway's admin API at {}: {} (is `postern serve` running? --offline reads the log directly when it is not)",
                    self.base,
                    error_chain(e.as_ref())
                ))))
            }
            Err(_) => {
                return Err(refused(Failure::new(format!(
                    "the gateway's admin API at {} did not answer within 30 s",
                    self.base
                ))))
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        // Whatever answered may not be Postern: what it says is printed without control
        // characters, and only so much of it.
        let error = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let message = error
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(Refused {
            status: Some(status),
            code: error
                .as_ref()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string)),
            failure: Failure::new(format!("{status} from {url}: {}", printable(&message))),
        })
    }
}

/// Why a request to the admin API failed: its status and error code, when it answered.
struct Refused {
    status: Option<http::StatusCode>,
    code: Option<String>,
    failure: Failure,
}

/// The most of a text from the gateway (an error message, a line it sent) that is printed.
const MAX_PRINTED_BYTES: usize = 2048;

/// `text`, from the gateway (or whatever answered at its address), fit to print on a terminal:
/// without control characters (line breaks kept) nor bidirectional overrides, and cut at
/// [`MAX_PRINTED_BYTES`] (saying how much more there was).
fn printable(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text
        .chars()
        .filter(|&c| {
            c == '\n'
                || !(c.is_control()
                    || matches!(
                        c,
                        '\u{200E}'
                            | '\u{200F}'
                            | '\u{061C}'
                            | '\u{2028}'
                            | '\u{2029}'
                            | '\u{202A}'..='\u{202E}'
                            | '\u{2066}'..='\u{2069}'
                    ))
        })
        .peekable();
    while let Some(&c) = chars.peek() {
        if out.len() + c.len_utf8() > MAX_PRINTED_BYTES {
            break;
        }
        // A line the server wrote is indented, so it cannot pass for one of the CLI's own.
        match c {
            '\n' => out.push_str("\n  | "),
            c => out.push(c),
        }
        chars.next();
    }
    let more: usize = chars.map(char::len_utf8).sum();
    if more > 0 {
        out.push_str(&format!("… ({more} bytes more)"));
    }
    out
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused `--admin-url` is echoed only when it holds no user information or query.
    #[test]
    fn a_refused_admin_url_is_not_echoed_with_its_credentials() {
        for url in [
            "http://admin:CANARY@127.0.0.1:9090",
            "http://127.0.0.1:9090/?token=CANARY",
        ] {
            let Err(failure) = Admin::at(url, None) else {
                panic!("{url} was taken")
            };
            assert!(!failure.message.contains("CANARY"), "{}", failure.message);
        }
        let Err(failure) = Admin::at("https://127.0.0.1:9090", None) else {
            panic!("https was taken")
        };
        assert!(
            failure.message.contains("\"https://127.0.0.1:9090\""),
            "{}",
            failure.message
        );
    }

    /// Two runs saving the state at once take turns: the second waits for the first's lock.
    #[test]
    fn saving_runs_take_turns_on_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let Ok(first) = lock_state(&state) else {
            panic!("locking the state")
        };
        let path = state.clone();
        let started = std::time::Instant::now();
        let second = std::thread::spawn(move || {
            let Ok(_turn) = lock_state(&path) else {
                panic!("locking the state")
            };
            started.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
        let waited = second.join().unwrap();
        assert!(
            waited >= std::time::Duration::from_millis(300),
            "{waited:?}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("state.lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
