//! `postern`: the binary. Parses flags, dispatches on the subcommand, and owns the exit-code
//! policy in one place (see `ExitCode` below and docs/CLI.md). Everything else is glue:
//! config → runtime → wiring → signals.

mod audit;
mod ca_cli;
mod creds;
mod demo;
mod detect_cli;
mod discover_cli;
mod scan_cli;
mod serve;

/// mimalloc: per-thread free lists instead of glibc malloc's arena locks and consolidation, which
/// cost 12–15% of the data plane's CPU in the benchmark profile. Built with arena eager commit off
/// (`.cargo/config.toml`), so memory it frees can go back to the system.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether the allocator can give back what it frees: `false` when eager arena commit is on, as
/// in a build that missed `.cargo/config.toml`'s define (a `CFLAGS` of one's own, a build from
/// outside the repository) or under `MIMALLOC_ARENA_EAGER_COMMIT=1`. `serve` warns then. (Arenas
/// on large or huge OS pages, which mimalloc never purges, are not looked at: both are off unless
/// set by `MIMALLOC_*` variables.)
fn allocator_returns_memory() -> bool {
    // Indexes in mimalloc.h's `mi_option_e`, the same in v2 and v3.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const ALLOW_LARGE_OS_PAGES: libmimalloc_sys::mi_option_t = 6;
    // SAFETY: each reads one option by its index; mimalloc initialises options on first use.
    let (eager, large_pages) = unsafe {
        (
            libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
            libmimalloc_sys::mi_option_is_enabled(ALLOW_LARGE_OS_PAGES),
        )
    };
    // mimalloc's own rule (arena.c): 1 commits eagerly; 2, its default, does on a system that
    // overcommits memory (Linux's `vm.overcommit_memory` 0 or 1, and where it cannot be read)
    // or with large OS pages allowed; any other value does not.
    match eager {
        1 => false,
        2 => {
            let overcommits = std::fs::read("/proc/sys/vm/overcommit_memory")
                .map_or(true, |value| {
                    matches!(value.first(), None | Some(b'0' | b'1'))
                });
            !(overcommits || large_pages)
        }
        _ => true,
    }
}

use std::path::PathBuf;
use std::process::ExitCode as ProcessExitCode;

use clap::{Parser, Subcommand};

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A runtime failure: could not bind, could not write data_dir, a self-check failed.
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The configuration is invalid.
    InvalidConfig = 3,
    /// `audit verify`: the log is corrupt or was tampered with; `audit proof|show|checkpoint
    /// --key`: the gateway's answer does not verify against the key.
    LogCorrupt = 4,
}

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "The security gateway and control plane for third-party API integrations",
    long_about = "Postern sits between your services and the vendor APIs they call (Stripe, Twilio, OpenAI, ...). \
It knows who is calling, allows only what was granted, injects the vendor credentials so apps never hold them, \
refuses to be turned against internal networks, and records every call.\n\n\
Exit codes: 0 success, 1 runtime failure, 2 bad command line, 3 invalid configuration, 4 audit log corrupt."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and admin listeners (reloads on SIGHUP and when the file changes).
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "POSTERN_CONFIG", default_value = "postern.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file; errors name line, column and a fix.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "POSTERN_CONFIG", default_value = "postern.toml")]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Also print the Cedar policies the grants compile to.
        #[arg(long)]
        show_policies: bool,
    },
    /// Manage caller identities.
    Callers {
        #[command(subcommand)]
        command: CallersCommand,
    },
    /// Manage vendor credentials in the encrypted vault (values from stdin, never argv).
    Creds {
        #[command(subcommand)]
        command: creds::CredsCommand,
    },
    /// Start a gateway, an example config and a local stand-in vendor, and show a granted call
    /// succeed and a denied call refused.
    Demo(demo::DemoArgs),
    /// The audit transparency log: verifier key, inclusion and consistency proofs, entries,
    /// offline verification (`verify` exits 4 when the log is corrupt or tampered with).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Scan a file (JSON, NDJSON or text) for PII and secrets; prints classes and byte offsets,
    /// never the values.
    Scan(scan_cli::ScanArgs),
    /// Which data classes went to which vendor, from which caller, on which day.
    Dataflow(scan_cli::DataflowArgs),
    /// Run the anomaly-detection engine over recorded events (events.jsonl), as fast as it can.
    Replay(detect_cli::ReplayArgs),
    /// Simulate multi-integration API traffic with labelled incidents, run the detection engine
    /// over it and score its alerts: recall, time to detect, precision, false alerts per day.
    Simulate(detect_cli::SimulateArgs),
    /// The inventory of unregistered (rogue) outbound APIs: list, show, import access logs or
    /// HAR files, and draft an [[integrations]] stanza from what was seen.
    Discover {
        #[command(subcommand)]
        command: discover_cli::DiscoverCommand,
    },
    /// The forward proxy's TLS interception CA: `export` prints it for trust stores.
    Ca {
        #[command(subcommand)]
        command: ca_cli::CaCommand,
    },
    /// Benchmarks of Postern's engines against public datasets.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Score the detector on the Numenta Anomaly Benchmark (all three profiles) and report points/s.
    Nab(detect_cli::NabArgs),
}

#[derive(Subcommand)]
enum CallersCommand {
    /// Generate a new caller token: printed once, with the sha256 to put in the config.
    Token {
        /// The caller's name, as in [[callers]] name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every token of a caller and issue a new one (forced re-authentication).
    Rotate {
        /// The caller's name, as in [[callers]] name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: creds::VaultLocation,
    },
    /// Copy the config's caller token hashes into the vault (then use `token_store = true`).
    Import {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: creds::VaultLocation,
    },
    /// Revoke every token of a caller: a running gateway refuses its calls (401) within a
    /// second (it checks the vault every 250 ms; calls in flight finish).
    Revoke {
        /// The caller's name, as in [[callers]] name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: creds::VaultLocation,
    },
}

fn main() -> ProcessExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if !matches!(cli.command, Command::Serve { .. } | Command::Demo(_)) {
        // A command whose output is piped into `head` ends quietly when the reader leaves, as
        // Unix tools do (Rust ignores SIGPIPE, and `println!` then panics on the closed pipe).
        // Not the servers: a peer that hangs up must not stop them.
        // SAFETY: restores the default disposition of one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let code = match cli.command {
        Command::Serve { config } => run_async(serve::serve(config)),
        Command::Check {
            config,
            json,
            show_policies,
        } => serve::check(&config, json, show_policies),
        Command::Callers {
            command: CallersCommand::Token { name, json },
        } => callers_token(&name, json),
        Command::Callers {
            command:
                CallersCommand::Rotate {
                    name,
                    json,
                    location,
                },
        } => creds::callers_rotate(&name, &location, json),
        Command::Callers {
            command:
                CallersCommand::Revoke {
                    name,
                    json,
                    location,
                },
        } => creds::callers_revoke(&name, &location, json),
        Command::Callers {
            command: CallersCommand::Import { json, location },
        } => creds::callers_import(&location, json),
        Command::Creds { command } => creds::run(command),
        Command::Demo(args) => run_async(demo::run(args)),
        Command::Audit { command } => return audit::run(command),
        Command::Scan(args) => scan_cli::scan(args),
        Command::Dataflow(args) => scan_cli::dataflow(args),
        Command::Replay(args) => detect_cli::replay(args),
        Command::Simulate(args) => detect_cli::simulate(args),
        Command::Discover { command } => discover_cli::run(command),
        Command::Ca { command } => ca_cli::run(command),
        Command::Bench {
            command: BenchCommand::Nab(args),
        } => detect_cli::bench_nab(args),
    };
    ProcessExitCode::from(code as u8)
}

fn run_async<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("postern")
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::Failure
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal (https://no-color.org): a file or a collector
    // gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            builder.json().init()
        }
    }
}

/// Set when logs are JSON lines: stderr then carries nothing else (`serve`'s banner goes).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stderr carries JSON log lines only (`--log-format json`).
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

fn callers_token(name: &str, json: bool) -> ExitCode {
    if !postern_config::is_identifier(name) {
        eprintln!("error: caller name {name:?} is not one the config accepts: use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit");
        return ExitCode::Usage;
    }
    let token = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let hash = postern_gateway::token_sha256_hex(&token);
    if json {
        println!(
            "{}",
            serde_json::json!({"caller": name, "token": token, "token_sha256": hash})
        );
    } else {
        use std::io::IsTerminal as _;
        // Redirected (`>> postern.toml`), stdout gets only TOML: the token goes to stderr,
        // so it never lands in the config file and the file still parses.
        let terminal = std::io::stdout().is_terminal();
        println!("# The token is shown once. Give it to the `{name}` service as its API key;");
        println!("# Postern keeps only its SHA-256. Add this to the config:");
        println!();
        println!("[[callers]]");
        println!("name = \"{name}\"");
        println!("token_sha256 = \"{hash}\"");
        if terminal {
            println!();
            println!("token: {token}");
        } else {
            eprintln!("token: {token}");
        }
    }
    ExitCode::Ok
}
