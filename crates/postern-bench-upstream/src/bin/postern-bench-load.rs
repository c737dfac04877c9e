//! `postern-bench-load`: a closed-loop HTTP/1.1 load generator for `bench/proxy.sh`, which
//! needs what wrk cannot do: speak through a forward proxy (`CONNECT`, then plain HTTP or TLS
//! inside the tunnel).
//!
//! Each of `--connections` tasks sends a request, waits for the whole answer, and sends the next
//! one (closed loop, like wrk). Modes:
//!
//! - `direct`    — HTTP/1.1 keep-alive to `--target` (the upstream): `GET <path>`.
//! - `path`      — HTTP/1.1 keep-alive to Postern: `GET /<integration><path>` with
//!   `Authorization: Bearer <token>`.
//! - `tunnel`    — `CONNECT <host>` to Postern with `Proxy-Authorization: Basic base64(x:<token>)`,
//!   then plain HTTP/1.1 keep-alive requests inside the tunnel.
//! - `intercept` — the same `CONNECT`, then TLS inside the tunnel (trusting `--ca`, SNI = the
//!   host name of `--host`), then HTTP/1.1 keep-alive requests.
//!
//! `--fresh` opens a new connection (and tunnel, and TLS session) for every request, so the
//! figures are those of connection set-up. Latency is measured per request from the moment it
//! is sent (in `--fresh` mode: from the TCP connect) to the last byte of the answer; requests
//! completing during `--warmup` are not counted. `--pid` reports the CPU time (utime + stime
//! from `/proc/PID/stat`) another process spent during the measured window, per request.
//!
//! Output: a short text report, or one JSON object with `--json`. Errors (non-2xx answers,
//! including a refused CONNECT; IO errors; timeouts; bodies without `--expect`) are counted
//! separately and a run that had any says so (and exits 1 with `--strict`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

const USAGE: &str = "\
usage: postern-bench-load MODE --target ADDR [options]

MODE: direct | path | tunnel | intercept

  --target ADDR        where to connect: the upstream (direct) or Postern (other modes)
  --host HOST:PORT     CONNECT target (tunnel, intercept); its host name is the SNI and Host
  --token TOKEN        caller token: Authorization: Bearer (direct, path) or
                       Proxy-Authorization: Basic base64(x:TOKEN) (tunnel, intercept)
  --ca FILE            PEM CA to trust inside intercepted tunnels (postern ca export)
  --integration NAME   path-mode prefix (default bench)
  --path PATH          vendor path (default /v1/charges/ch_123)
  --connections N      concurrent closed-loop connections (default 64)
  --threads N          load generator threads (default 2)
  --duration S         measured seconds (default 10; decimals allowed)
  --warmup S           seconds run before measuring (default 2)
  --timeout S          per-request timeout, set-up included (default 5)
  --fresh              a new connection (tunnel, TLS session) for every request
  --tls-resume         allow TLS session resumption with --fresh (default: full handshakes)
  --requests N         stop after N requests in total (no warm-up); for sanity checks
  --expect TEXT        count a 2xx answer whose body lacks TEXT as an error
  --pid PID            report this process's CPU time per request (Postern)
  --upstream-pid PID   same for the upstream
  --clk-tck N          clock ticks per second of /proc/PID/stat (default 100, getconf CLK_TCK)
  --json               print one JSON object instead of text
  --strict             exit 1 if any request failed
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Path,
    Tunnel,
    Intercept,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        match text {
            "direct" => Some(Mode::Direct),
            "path" => Some(Mode::Path),
            "tunnel" => Some(Mode::Tunnel),
            "intercept" => Some(Mode::Intercept),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Path => "path",
            Mode::Tunnel => "tunnel",
            Mode::Intercept => "intercept",
        }
    }
}

struct Options {
    mode: Mode,
    target: SocketAddr,
    host: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
    integration: String,
    path: String,
    connections: usize,
    threads: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    fresh: bool,
    tls_resume: bool,
    requests: Option<u64>,
    expect: Option<String>,
    pid: Option<u32>,
    upstream_pid: Option<u32>,
    clk_tck: u64,
    json: bool,
    strict: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        args.next().ok_or_else(|| format!("{flag} needs a value"))
    }
    fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
        text.parse()
            .map_err(|_| format!("{flag}: {text:?} is not a valid number"))
    }
    fn seconds(text: &str, flag: &str) -> Result<Duration, String> {
        let secs: f64 = number(text, flag)?;
        if !(0.0..=3600.0).contains(&secs) {
            return Err(format!("{flag}: {secs} is outside 0..=3600 seconds"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    let mut mode = None;
    let mut target = None;
    let mut options = Options {
        mode: Mode::Direct,
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        host: None,
        token: None,
        ca: None,
        integration: "bench".to_string(),
        path: "/v1/charges/ch_123".to_string(),
        connections: 64,
        threads: 2,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        fresh: false,
        tls_resume: false,
        requests: None,
        expect: None,
        pid: None,
        upstream_pid: None,
        clk_tck: 100,
        json: false,
        strict: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = Some(value(&mut args, &arg)?),
            "--target" => {
                let text = value(&mut args, &arg)?;
                target = Some(
                    text.parse::<SocketAddr>()
                        .map_err(|_| format!("--target: {text:?} is not IP:PORT"))?,
                );
            }
            "--host" => options.host = Some(value(&mut args, &arg)?),
            "--token" => options.token = Some(value(&mut args, &arg)?),
            "--ca" => options.ca = Some(PathBuf::from(value(&mut args, &arg)?)),
            "--integration" => options.integration = value(&mut args, &arg)?,
            "--path" => options.path = value(&mut args, &arg)?,
            "--connections" => options.connections = number(&value(&mut args, &arg)?, &arg)?,
            "--threads" => options.threads = number(&value(&mut args, &arg)?, &arg)?,
            "--duration" => options.duration = seconds(&value(&mut args, &arg)?, &arg)?,
            "--warmup" => options.warmup = seconds(&value(&mut args, &arg)?, &arg)?,
            "--timeout" => options.timeout = seconds(&value(&mut args, &arg)?, &arg)?,
            "--fresh" => options.fresh = true,
            "--tls-resume" => options.tls_resume = true,
            "--requests" => options.requests = Some(number(&value(&mut args, &arg)?, &arg)?),
            "--expect" => options.expect = Some(value(&mut args, &arg)?),
            "--pid" => options.pid = Some(number(&value(&mut args, &arg)?, &arg)?),
            "--upstream-pid" => {
                options.upstream_pid = Some(number(&value(&mut args, &arg)?, &arg)?)
            }
            "--clk-tck" => options.clk_tck = number(&value(&mut args, &arg)?, &arg)?,
            "--json" => options.json = true,
            "--strict" => options.strict = true,
            "-h" | "--help" => return Err(String::new()),
            other if !other.starts_with('-') && mode.is_none() => mode = Some(other.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = mode.ok_or("MODE is missing")?;
    options.mode = Mode::parse(&mode).ok_or_else(|| format!("unknown MODE {mode:?}"))?;
    options.target = target.ok_or("--target is missing")?;
    if options.connections == 0 || options.threads == 0 || options.clk_tck == 0 {
        return Err("--connections, --threads and --clk-tck must be at least 1".to_string());
    }
    if options.duration.is_zero() || options.timeout.is_zero() {
        return Err("--duration and --timeout must be above 0".to_string());
    }
    if !options.path.starts_with('/') {
        return Err("--path must start with /".to_string());
    }
    if matches!(options.mode, Mode::Tunnel | Mode::Intercept) && options.host.is_none() {
        return Err(format!(
            "mode {} needs --host HOST:PORT",
            options.mode.as_str()
        ));
    }
    if options.mode == Mode::Intercept && options.ca.is_none() {
        return Err("mode intercept needs --ca FILE (postern ca export)".to_string());
    }
    if options.requests.is_some() {
        options.warmup = Duration::ZERO;
    }
    Ok(options)
}

/// What every connection task shares: the request to send and how to reach the server.
struct Plan {
    fresh: bool,
    target: SocketAddr,
    uri: Uri,
    host_header: HeaderValue,
    authorization: Option<HeaderValue>,
    /// The CONNECT request head (tunnel, intercept).
    connect_request: Option<Bytes>,
    /// TLS inside the tunnel (intercept).
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    measure_start: Instant,
    end: Instant,
    max_requests: Option<u64>,
    issued: AtomicU64,
    expect: Option<Vec<u8>>,
}

impl Plan {
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host_header.clone());
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        request
    }
}

/// `host:port` → (host name without brackets, port).
fn split_authority(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("--host {authority:?} needs a port (HOST:PORT)"))?;
    let port = port
        .parse()
        .map_err(|_| format!("--host {authority:?}: bad port"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

fn tls_connector(ca: &PathBuf, resume: bool) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca)
        .map_err(|error| format!("reading {}: {error}", ca.display()))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| format!("reading {}: {error}", ca.display()))?;
        roots
            .add(certificate)
            .map_err(|error| format!("{}: {error}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS set-up: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn build_plan(options: &Options, start: Instant) -> Result<Plan, String> {
    let invalid = |what: &str| format!("{what} cannot be sent as an HTTP header");
    let (uri, host_header) = match options.mode {
        Mode::Direct => (options.path.clone(), options.target.to_string()),
        Mode::Path => (
            format!("/{}{}", options.integration, options.path),
            options.target.to_string(),
        ),
        Mode::Tunnel | Mode::Intercept => {
            let authority = options.host.clone().unwrap_or_default();
            let (host, port) = split_authority(&authority)?;
            let header = if options.mode == Mode::Intercept && port == 443 {
                host
            } else {
                authority
            };
            (options.path.clone(), header)
        }
    };
    let uri: Uri = uri
        .parse()
        .map_err(|_| format!("{uri:?} is not a valid request path"))?;
    let host_header = HeaderValue::from_str(&host_header).map_err(|_| invalid("the host"))?;
    let authorization = match (options.mode, &options.token) {
        (Mode::Direct | Mode::Path, Some(token)) => Some(
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid("--token"))?,
        ),
        _ => None,
    };
    let mut connect_request = None;
    let mut tls = None;
    if let (Mode::Tunnel | Mode::Intercept, Some(authority)) = (options.mode, &options.host) {
        let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(token) = &options.token {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
            head.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
        }
        head.push_str("\r\n");
        connect_request = Some(Bytes::from(head));
        if options.mode == Mode::Intercept {
            let (host, _) = split_authority(authority)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
            let ca = options.ca.as_ref().ok_or("intercept needs --ca")?;
            tls = Some((tls_connector(ca, options.tls_resume)?, name));
        }
    }
    let measure_start = start + options.warmup;
    Ok(Plan {
        fresh: options.fresh,
        target: options.target,
        uri,
        host_header,
        authorization,
        connect_request,
        tls,
        timeout: options.timeout,
        measure_start,
        end: measure_start + options.duration,
        max_requests: options.requests,
        issued: AtomicU64::new(0),
        expect: options.expect.as_ref().map(|text| text.as_bytes().to_vec()),
    })
}

enum Failure {
    /// A non-2xx answer: to the request, or to the CONNECT.
    Status(u16, String),
    Io(String),
    Timeout,
    Body(String),
}

#[derive(Default)]
struct Stats {
    latencies_ns: Vec<u64>,
    non_2xx: BTreeMap<u16, u64>,
    io_errors: u64,
    timeouts: u64,
    body_mismatches: u64,
    warmup_errors: u64,
    connections_opened: u64,
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies_ns.extend(other.latencies_ns);
        for (status, count) in other.non_2xx {
            *self.non_2xx.entry(status).or_default() += count;
        }
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        self.body_mismatches += other.body_mismatches;
        self.warmup_errors += other.warmup_errors;
        self.connections_opened += other.connections_opened;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn errors(&self) -> u64 {
        self.non_2xx.values().sum::<u64>() + self.io_errors + self.timeouts + self.body_mismatches
    }
}

/// One closed-loop connection: request, whole answer, next request, until the end.
async fn worker(plan: Arc<Plan>) -> Stats {
    let mut stats = Stats::default();
    let mut client: Option<Client> = None;
    loop {
        if Instant::now() >= plan.end {
            break;
        }
        if let Some(max) = plan.max_requests {
            if plan.issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            plan.timeout,
            exchange(&plan, &mut client, &mut stats.connections_opened),
        )
        .await
        .unwrap_or(Err(Failure::Timeout));
        let finished = Instant::now();
        if matches!(outcome, Err(Failure::Io(_) | Failure::Timeout)) {
            client = None;
        } else if plan.fresh {
            // Close politely (TLS close_notify, FIN), outside the timed part.
            if let Some(done) = client.take() {
                let _ = tokio::time::timeout(plan.timeout, done.close()).await;
            }
        }
        if finished >= plan.end {
            break;
        }
        let measured = finished >= plan.measure_start;
        let failure = match outcome {
            Ok(()) => {
                if measured {
                    stats
                        .latencies_ns
                        .push((finished - started).as_nanos() as u64);
                }
                continue;
            }
            Err(failure) => failure,
        };
        let backoff = matches!(failure, Failure::Io(_));
        if measured {
            let message = match failure {
                Failure::Status(status, message) => {
                    *stats.non_2xx.entry(status).or_default() += 1;
                    message
                }
                Failure::Io(message) => {
                    stats.io_errors += 1;
                    message
                }
                Failure::Timeout => {
                    stats.timeouts += 1;
                    format!("no complete answer within {:?}", plan.timeout)
                }
                Failure::Body(message) => {
                    stats.body_mismatches += 1;
                    message
                }
            };
            stats.first_error.get_or_insert(message);
        } else {
            stats.warmup_errors += 1;
        }
        if backoff {
            // A refused connect fails at once: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stats
}

/// Any byte stream a client connection runs on: TCP, or TLS inside a tunnel.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type ClientConnection = Connection<TokioIo<Box<dyn Io>>, Empty<Bytes>>;

/// A client connection whose hyper state machine is driven inside the worker's own task (no
/// second task per connection, so no cross-task wake-up per request).
struct Client {
    sender: SendRequest<Empty<Bytes>>,
    connection: Pin<Box<ClientConnection>>,
}

impl Client {
    /// Drops the sender and lets the connection finish: hyper shuts the stream down.
    async fn close(self) {
        let Client { sender, connection } = self;
        drop(sender);
        let _ = connection.await;
    }
}

/// Sends one request on the kept connection, opening one (and its tunnel) first if needed.
async fn exchange(
    plan: &Plan,
    client: &mut Option<Client>,
    opened: &mut u64,
) -> Result<(), Failure> {
    if client
        .as_ref()
        .is_some_and(|current| current.sender.is_closed())
    {
        *client = None;
    }
    let current = match client {
        Some(current) => current,
        None => {
            let fresh = open(plan).await?;
            *opened += 1;
            client.insert(fresh)
        }
    };
    let Client { sender, connection } = current;
    let call = async {
        sender
            .ready()
            .await
            .map_err(|error| Failure::Io(format!("connection not usable: {error}")))?;
        let response = sender
            .send_request(plan.request())
            .await
            .map_err(|error| Failure::Io(format!("request failed: {error}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| Failure::Io(format!("reading the answer failed: {error}")))?
            .to_bytes();
        Ok::<_, Failure>((status, body))
    };
    let (status, body) = tokio::select! {
        answered = call => answered?,
        ended = connection.as_mut() => {
            return Err(Failure::Io(match ended {
                Ok(()) => "the server closed the connection".to_string(),
                Err(error) => format!("connection failed: {error}"),
            }));
        }
    };
    if !status.is_success() {
        return Err(Failure::Status(
            status.as_u16(),
            format!("answered {status}: {}", snippet(&body)),
        ));
    }
    if let Some(expect) = &plan.expect {
        if !body
            .windows(expect.len())
            .any(|window| window == expect.as_slice())
        {
            return Err(Failure::Body(format!(
                "answered {status} without the expected text: {}",
                snippet(&body)
            )));
        }
    }
    Ok(())
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.replace(['\r', '\n'], " ")
}

/// A new connection: TCP, then CONNECT and TLS as the mode says, then the HTTP/1.1 handshake.
async fn open(plan: &Plan) -> Result<Client, Failure> {
    let mut tcp = TcpStream::connect(plan.target)
        .await
        .map_err(|error| Failure::Io(format!("connect to {}: {error}", plan.target)))?;
    let _ = tcp.set_nodelay(true);
    if let Some(connect) = &plan.connect_request {
        establish_tunnel(&mut tcp, connect).await?;
    }
    let io: Box<dyn Io> = match &plan.tls {
        Some((connector, name)) => Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|error| {
                    Failure::Io(format!("TLS handshake inside the tunnel: {error}"))
                })?,
        ),
        None => Box::new(tcp),
    };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| Failure::Io(format!("HTTP/1.1 handshake: {error}")))?;
    Ok(Client {
        sender,
        connection: Box::pin(connection),
    })
}

/// Sends the CONNECT head and reads the answer's head; only `200` opens the tunnel.
async fn establish_tunnel(tcp: &mut TcpStream, connect: &[u8]) -> Result<(), Failure> {
    let io = |what: &str, error: std::io::Error| Failure::Io(format!("{what}: {error}"));
    tcp.write_all(connect)
        .await
        .map_err(|error| io("sending CONNECT", error))?;
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 2048];
    loop {
        let read = tcp
            .read(&mut buffer)
            .await
            .map_err(|error| io("reading the CONNECT answer", error))?;
        if read == 0 {
            return Err(Failure::Io(
                "the proxy closed the connection before answering CONNECT".to_string(),
            ));
        }
        head.extend_from_slice(&buffer[..read]);
        let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") else {
            if head.len() > 16 * 1024 {
                return Err(Failure::Io("CONNECT answer head over 16 KiB".to_string()));
            }
            continue;
        };
        let status_line =
            String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| Failure::Io(format!("bad CONNECT answer: {status_line:?}")))?;
        if status != 200 {
            return Err(Failure::Status(
                status,
                format!(
                    "CONNECT answered {status_line}: {}",
                    snippet(&head[end + 4..])
                ),
            ));
        }
        if head.len() > end + 4 {
            return Err(Failure::Io(
                "bytes after the CONNECT answer before the client spoke".to_string(),
            ));
        }
        return Ok(());
    }
}

/// utime + stime of a process (clock ticks), all its threads, live and exited.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

struct CpuSample {
    at: Instant,
    postern: Option<u64>,
    upstream: Option<u64>,
    this: Option<u64>,
}

impl CpuSample {
    fn now(options: &Options) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            postern: options.pid.and_then(|pid| cpu_ticks(&pid.to_string())),
            upstream: options
                .upstream_pid
                .and_then(|pid| cpu_ticks(&pid.to_string())),
            this: cpu_ticks("self"),
        }
    }
}

async fn run(options: &Options) -> Result<(Stats, CpuSample, CpuSample, u64), String> {
    let start = Instant::now();
    let plan = Arc::new(build_plan(options, start)?);
    let mut workers = JoinSet::new();
    for _ in 0..options.connections {
        workers.spawn(worker(plan.clone()));
    }
    tokio::time::sleep_until(plan.measure_start).await;
    let first = CpuSample::now(options);
    let mut last = None;
    let mut stats = Stats::default();
    // Each request is bounded by the timeout, so every worker ends soon after `end`.
    let give_up = plan.end + options.timeout + Duration::from_secs(2);
    let mut stuck = 0u64;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(worker_stats)) => stats.merge(worker_stats),
                Some(Err(error)) if error.is_cancelled() => stuck += 1,
                Some(Err(error)) => return Err(format!("a connection task failed: {error}")),
                None => break,
            },
            _ = tokio::time::sleep_until(plan.end), if last.is_none() => {
                last = Some(CpuSample::now(options));
            }
            _ = tokio::time::sleep_until(give_up) => workers.abort_all(),
        }
    }
    // Ended before `end` (--requests): the window closes now.
    let last = last.unwrap_or_else(|| CpuSample::now(options));
    Ok((stats, first, last, stuck))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            if problem.is_empty() {
                print!("{USAGE}");
                std::process::exit(0);
            }
            eprintln!("postern-bench-load: {problem}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut stats, first, last, stuck) = match runtime.block_on(run(&options)) {
        Ok(result) => result,
        Err(problem) => {
            eprintln!("postern-bench-load: {problem}");
            std::process::exit(1);
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    stats.latencies_ns.sort_unstable();
    stats.timeouts += stuck;
    let requests = stats.latencies_ns.len() as u64;
    let window = last.at.saturating_duration_since(first.at).as_secs_f64();
    let rate = if window > 0.0 {
        requests as f64 / window
    } else {
        0.0
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    let lat = &stats.latencies_ns;
    let mean_ns = lat.iter().sum::<u64>().checked_div(requests).unwrap_or(0);
    let tick_us = 1e6 / options.clk_tck as f64;
    let per_request = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if requests > 0 => {
            Some(b.saturating_sub(a) as f64 * tick_us / requests as f64)
        }
        _ => None,
    };
    let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if window > 0.0 => {
            Some(b.saturating_sub(a) as f64 * tick_us / 1e6 / window)
        }
        _ => None,
    };
    let postern_us = per_request(first.postern, last.postern);
    let upstream_us = per_request(first.upstream, last.upstream);
    let self_us = per_request(first.this, last.this);
    let errors = stats.errors();
    let status_counts: BTreeMap<String, u64> = stats
        .non_2xx
        .iter()
        .map(|(status, count)| (status.to_string(), *count))
        .collect();

    if options.json {
        let report = serde_json::json!({
            "mode": options.mode.as_str(),
            "fresh": options.fresh,
            "connections": options.connections,
            "threads": options.threads,
            "duration_s": window,
            "warmup_s": options.warmup.as_secs_f64(),
            "requests": requests,
            "requests_per_s": rate,
            "latency_us": {
                "p50": us(percentile(lat, 50.0)),
                "p90": us(percentile(lat, 90.0)),
                "p99": us(percentile(lat, 99.0)),
                "p999": us(percentile(lat, 99.9)),
                "mean": us(mean_ns),
                "max": us(lat.last().copied().unwrap_or(0)),
            },
            "errors": {
                "total": errors,
                "non_2xx": stats.non_2xx.values().sum::<u64>(),
                "status_counts": status_counts,
                "io": stats.io_errors,
                "timeouts": stats.timeouts,
                "body_mismatch": stats.body_mismatches,
                "during_warmup": stats.warmup_errors,
                "first": stats.first_error,
            },
            "connections_opened": stats.connections_opened,
            "cpu": {
                "pid": options.pid,
                "us_per_request": postern_us,
                "cores": cores(first.postern, last.postern),
                "upstream_pid": options.upstream_pid,
                "upstream_us_per_request": upstream_us,
                "load_generator_us_per_request": self_us,
                "load_generator_cores": cores(first.this, last.this),
                "clk_tck": options.clk_tck,
            },
        });
        println!("{report}");
    } else {
        println!(
            "mode {}{}: {} connections, {:.1} s measured after {:.1} s warm-up",
            options.mode.as_str(),
            if options.fresh {
                " (fresh connection per request)"
            } else {
                ""
            },
            options.connections,
            window,
            options.warmup.as_secs_f64()
        );
        println!(
            "requests     {requests} ({rate:.0}/s), connections opened {}",
            stats.connections_opened
        );
        println!(
            "latency      p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            us(percentile(lat, 50.0)),
            us(percentile(lat, 90.0)),
            us(percentile(lat, 99.0)),
            us(percentile(lat, 99.9)),
            us(lat.last().copied().unwrap_or(0))
        );
        if errors == 0 {
            println!("errors       none");
        } else {
            println!(
                "errors       {errors}: non-2xx {:?}, IO {}, timeouts {}, body mismatches {}; first: {}",
                stats.non_2xx,
                stats.io_errors,
                stats.timeouts,
                stats.body_mismatches,
                stats.first_error.as_deref().unwrap_or("")
            );
        }
        if let Some(pid) = options.pid {
            match postern_us {
                Some(value) => println!("CPU pid {pid}  {value:.1} µs/request"),
                None => println!("CPU pid {pid}  unknown (no /proc/{pid}/stat, or no request)"),
            }
        }
        if let Some(value) = upstream_us {
            println!("CPU upstream {value:.1} µs/request");
        }
        if let Some(value) = self_us {
            println!("CPU self     {value:.1} µs/request (this load generator)");
        }
    }
    if errors > 0 || stats.warmup_errors > 0 {
        eprintln!(
            "postern-bench-load: WARNING: this run had {errors} failed requests in the measured window and {} during warm-up; its figures are not clean",
            stats.warmup_errors
        );
    }
    if requests == 0 {
        eprintln!("postern-bench-load: no request succeeded in the measured window");
        std::process::exit(1);
    }
    if options.strict && errors > 0 {
        std::process::exit(1);
    }
}
