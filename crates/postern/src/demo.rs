//! `postern demo`: a gateway on its embedded defaults, an example config, and a local stand-in
//! vendor ("Acme Payments") that only accepts its own key — which Postern injects. Shows a
//! granted call succeed and a denied call refused, then keeps serving with curl lines to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_gateway::RunningGateway;
use tokio::net::TcpListener;

use crate::ExitCode;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Directory for the demo's config, vendor key and data_dir (created; the config is rewritten).
    #[arg(long, default_value = "postern-demo")]
    dir: PathBuf,
    /// Run the self-check and exit (0 if the granted call succeeded and the denied ones were refused).
    #[arg(long)]
    check: bool,
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::Failure
        }
    }
}

async fn run_inner(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // Both ports are tried before anything is written, as `serve` binds before it writes.
    for (address, flag) in [
        (args.listen, "--listen"),
        (args.admin_listen, "--admin-listen"),
    ] {
        if let Err(error) = std::net::TcpListener::bind(address) {
            anyhow::bail!(
                "cannot listen on {address} ({error}); pass {flag} with a free address, such as {flag} 127.0.0.1:18080"
            );
        }
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::path::absolute(&args.dir)?;
    let vendor_key = format!("sk_demo_{}", &postern_gateway::new_token("")[..24]);
    let key_path = dir.join("vendor-key");
    let _ = std::fs::remove_file(&key_path);
    postern_gateway::write_private_file(&key_path, vendor_key.as_bytes())?;

    let vendor_addr = start_vendor(vendor_key.clone()).await?;
    let token = postern_gateway::new_token(postern_gateway::CALLER_TOKEN_PREFIX);
    let config_text = format!(
        r#"# Written by `postern demo`. Edit it while the demo runs: Postern reloads on save.
[gateway]
listen = "{listen}"
admin_listen = "{admin}"
data_dir = "data"

[[callers]]
name = "checkout"
token_sha256 = "{hash}"

[[integrations]]
name = "acme"
vendor = "Acme Payments (local stand-in)"
owner = "payments@example.com"
upstream = "http://{vendor_addr}"
allow_plaintext = true                      # the stand-in vendor is local plain HTTP
allow_private_networks = ["127.0.0.1/32"]   # ... on loopback, which the SSRF guard refuses otherwise
hosts = ["api.acme.test"]                   # forward-proxy mode: HTTPS_PROXY calls to this name
                                            # are intercepted and sent to `upstream` (never resolved)
credential = {{ kind = "bearer", from_file = "vendor-key" }}
rate_limit = {{ requests_per_second = 50, burst = 100 }}
operations = [
  {{ id = "create_charge", method = "POST",   path = "/v1/charges" }},
  {{ id = "get_charge",    method = "GET",    path = "/v1/charges/{{id}}" }},
  {{ id = "refund_charge", method = "DELETE", path = "/v1/charges/{{id}}" }},
]

[[grants]]
caller = "checkout"
integration = "acme"
operations = ["create_charge", "get_charge"]   # refund_charge is not granted
"#,
        listen = args.listen,
        admin = args.admin_listen,
        hash = postern_gateway::token_sha256_hex(&token),
    );
    let config_path = dir.join("postern.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = match postern_config::load(&config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::InvalidConfig);
        }
    };
    // A try-out's few connections need no warning about the limit.
    let _ = postern_gateway::listener::raise_open_file_limit();
    let gateway = RunningGateway::start(config).await?;
    let base = format!("http://{}", gateway.listen_addr);

    println!("Postern demo");
    println!("  gateway         {base}");
    println!("  admin           http://{}", gateway.admin_addr);
    println!("  stand-in vendor http://{vendor_addr}  (accepts only its own key, which Postern holds and injects)");
    println!("  config          {}", config_path.display());
    println!(
        "  events          {}",
        gateway
            .data_dir
            .join(postern_gateway::EVENTS_FILE)
            .display()
    );
    println!();
    println!("Self-check:");
    let checks = [
        (
            "granted call",
            "POST",
            "/acme/v1/charges",
            Some(token.as_str()),
            200u16,
        ),
        (
            "granted call",
            "GET",
            "/acme/v1/charges/ch_demo_1",
            Some(token.as_str()),
            200,
        ),
        (
            "not granted",
            "DELETE",
            "/acme/v1/charges/ch_demo_1",
            Some(token.as_str()),
            403,
        ),
        (
            "unknown operation",
            "GET",
            "/acme/v1/customers",
            Some(token.as_str()),
            403,
        ),
        ("no caller token", "POST", "/acme/v1/charges", None, 401),
    ];
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut all_ok = true;
    for (label, method, path, token, expected) in checks {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = if method == "POST" {
            "amount=500&currency=usd"
        } else {
            ""
        };
        let response = client
            .request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let summary = summarize(&body);
        let ok = status == expected;
        all_ok &= ok;
        println!(
            "  {} {label:<18} {method:<6} {path:<28} -> {status} {summary}",
            if ok { "ok  " } else { "FAIL" }
        );
    }
    println!();
    if args.check {
        gateway.shutdown().await;
        return Ok(if all_ok {
            ExitCode::Ok
        } else {
            ExitCode::Failure
        });
    }
    // Armed only now: until here, Ctrl-C stops the demo at once.
    let triggers = crate::serve::Triggers::arm(
        &config_path,
        &gateway.shared().runtime.load().config.gateway,
    );
    println!("Try it (Ctrl-C to stop):");
    println!("  export TOKEN={token}");
    println!("  curl -s -X POST {base}/acme/v1/charges -H \"Authorization: Bearer $TOKEN\" -d amount=500");
    println!("  curl -s -X DELETE {base}/acme/v1/charges/ch_1 -H \"Authorization: Bearer $TOKEN\"   # 403 not_granted");
    println!("  curl -s {base}/acme/v1/charges/ch_1                                      # 401 no caller");
    println!("As an HTTPS proxy (apps keep the vendor's own URL; trust Postern's CA):");
    // Started by `cargo run` (which sets CARGO), the same way; else the installed binary.
    let postern = match std::env::var_os("CARGO") {
        Some(_) => "cargo run --release --",
        None => "postern",
    };
    let ca_pem = dir.join("postern-ca.pem");
    println!(
        "  {postern} ca export --data-dir {} > {}",
        gateway.data_dir.display(),
        ca_pem.display()
    );
    println!("  curl -s --proxy {base} --proxy-user checkout:$TOKEN --cacert {} -X POST https://api.acme.test/v1/charges -d amount=500", ca_pem.display());
    println!(
        "  curl -s 'http://{}/v1/events?limit=5' -H @<(printf 'Authorization: Bearer %s\\n' \"$(cat {})\")   # bash/zsh",
        gateway.admin_addr,
        gateway
            .data_dir
            .join(postern_gateway::ADMIN_TOKEN_FILE)
            .display()
    );
    crate::serve::run_until_stopped(&gateway, &config_path, triggers).await;
    tracing::info!("shutting down: waiting for in-flight calls");
    gateway.shutdown().await;
    tracing::info!(dir = %dir.display(), "stopped; the demo's config, key and events stay in its directory");
    Ok(ExitCode::Ok)
}

fn summarize(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    if let Some(code) = value.pointer("/error/code").and_then(|c| c.as_str()) {
        return code.to_string();
    }
    value.to_string().chars().take(60).collect()
}

/// The stand-in vendor: answers like a payments API, but only to its own key.
async fn start_vendor(key: String) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let expected = format!("Bearer {key}");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let expected = expected.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let authorized = request
                            .headers()
                            .get("authorization")
                            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                        async move { Ok::<_, Infallible>(vendor_answer(authorized, &request)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn vendor_answer<B>(authorized: bool, request: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = if !authorized {
        (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": {"type": "invalid_request_error", "message": "Invalid API key provided"}}),
        )
    } else {
        let path = request.uri().path();
        match (request.method().as_str(), path) {
            ("POST", "/v1/charges") => (
                StatusCode::OK,
                serde_json::json!({"id": "ch_demo_1", "object": "charge", "amount": 500, "currency": "usd", "status": "succeeded"}),
            ),
            ("GET", p) if p.starts_with("/v1/charges/") => (
                StatusCode::OK,
                serde_json::json!({"id": &p["/v1/charges/".len()..], "object": "charge", "status": "succeeded"}),
            ),
            ("DELETE", p) if p.starts_with("/v1/charges/") => (
                StatusCode::OK,
                serde_json::json!({"id": &p["/v1/charges/".len()..], "object": "refund"}),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}}),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}
