//! The admin listener: health, readiness, metrics, the read-only JSON API and the audit log.
//! Everything but `/healthz`, `/readyz`, the public transparency log under `/log/` and the
//! public audit routes ([`public_audit`]) needs `Authorization: Bearer <admin token>`.
//! Routes and payloads are documented in `docs/ADMIN.md` and (audit) `docs/AUDIT.md`.

use std::sync::Arc;

use crate::body::CallerBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::body::GatewayBody;
use crate::runtime::Injector;
use crate::Shared;

/// How long a credential change's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handle(shared: Arc<Shared>, request: Request<CallerBody>) -> Response<GatewayBody> {
    let path = request.uri().path().to_string();
    let path = path.as_str();
    // Authentication first for everything not public: without the token, no route's methods
    // (a 405's `Allow`) are told apart from a route that does not exist.
    let public =
        matches!(path, "/healthz" | "/readyz") || path.starts_with("/log/") || public_audit(path);
    let runtime = shared.runtime.load();
    // Asked only where it matters: every route but the public ones, and `/readyz`, which
    // says more to the admin (a `/healthz` probe pays for no hash).
    let authorized = (!public || path == "/readyz" || path.starts_with("/v1/audit/entries/"))
        && request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .is_some_and(|token| !token.is_empty() && runtime.is_admin_token(token.as_bytes()));
    if !public && !authorized {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "admin_unauthenticated", "message": "send Authorization: Bearer <admin token> (the token is in <data_dir>/admin-token unless admin_token_sha256 is configured)"}}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"postern-admin\""),
        );
        return response;
    }
    let allow = allowed_methods(path);
    let method = request.method();
    let allowed = match allow {
        "POST" => method == Method::POST,
        _ => method == Method::GET || method == Method::HEAD,
    };
    if !allowed {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"code": "method_not_allowed", "message": format!("use {allow} here (POST only to change a credential: /v1/credentials/NAME[/rotate|/rollback|/revoke])")}}),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    match path {
        "/healthz" => return text_response(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => return readiness(&shared, authorized),
        _ => {}
    }
    // The transparency log is public, like any tlog-tiles log: it holds no secret (entries
    // carry only names from the config and keyed hashes), and anyone may verify it.
    if let Some(resource) = path.strip_prefix("/log/") {
        let answer = log_resource(&shared, resource).await;
        return held(&shared.public_answers, answer, false);
    }
    if path == "/v1/credentials" || path.starts_with("/v1/credentials/") {
        return credentials(&shared, request).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/audit/") {
        let answer = audit_api(
            &shared,
            rest,
            request.uri().query().unwrap_or(""),
            authorized,
        )
        .await;
        return held(&shared.public_answers, answer, true);
    }
    match path {
        "/metrics" => text_response(
            StatusCode::OK,
            {
                let metrics = &shared.recorder.metrics;
                metrics.set_open(
                    shared.connection_slots.open(),
                    shared.tunnels.load(std::sync::atomic::Ordering::Relaxed),
                    shared
                        .websocket_sessions
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
                metrics.set_calls_open(shared.open_calls.snapshot());
                metrics.set_workers(&shared.worker_load);
                metrics.set_refused_per_source(shared.per_source.refused());
                metrics.set_closed_for_room(
                    shared.connection_slots.closed_for_room(),
                    shared.admin_slots.closed_for_room(),
                );
                metrics.set_listener_tls(
                    shared
                        .listener_tls_stale
                        .load(std::sync::atomic::Ordering::Relaxed),
                    shared
                        .runtime
                        .load()
                        .listener_tls
                        .as_ref()
                        .and_then(|tls| tls.not_after),
                );
                metrics.set_audit_dropped(
                    shared
                        .audit
                        .dropped
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
                metrics.encode(&shared.recorder.events.stats)
            },
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/v1/integrations" => {
            let list: Vec<_> = runtime
                .config
                .integrations
                .iter()
                .map(|integration| {
                    let compiled = runtime.integrations.get(&integration.name);
                    let credential_status = match compiled.map(|c| &c.credential) {
                        Some(Ok(Some(_))) => "loaded",
                        Some(Ok(None)) => "none",
                        Some(Err(_)) => "unavailable",
                        None => "unknown",
                    };
                    let injection = match compiled.map(|c| &c.credential) {
                        Some(Ok(Some(Injector::Header { name, .. }))) => {
                            json!({"header": name.as_str()})
                        }
                        Some(Ok(Some(Injector::Query { param, .. }))) => json!({"query": param}),
                        _ => json!(null),
                    };
                    json!({
                        "name": integration.name,
                        "vendor": integration.vendor,
                        "owner": integration.owner,
                        "purpose": integration.purpose,
                        "docs_url": integration.docs_url,
                        "upstream": integration.upstream.as_str(),
                        "credential": {
                            "kind": integration.credential.as_ref().map(|c| format!("{:?}", c.kind).to_lowercase()),
                            "status": credential_status,
                            "injected_as": injection,
                        },
                        "rate_limit": integration.rate_limit.map(|r| json!({"requests_per_second": r.requests_per_second, "burst": r.burst})),
                        "operations": integration.operations.iter().map(|o| json!({"id": o.id, "method": o.method, "path": o.path, "websocket": o.websocket})).collect::<Vec<_>>(),
                        "allow_private_networks": integration.allow_private_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                        "allow_plaintext": integration.allow_plaintext,
                        "hosts": integration.hosts,
                        "intercept": integration.intercept,
                        "grants": runtime.config.grants.iter().filter(|g| g.integration == integration.name).map(|g| json!({"caller": g.caller, "operations": g.operations})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_response(StatusCode::OK, json!({ "integrations": list }))
        }
        "/v1/discovered" => {
            let Some(limit) = limit(&request) else {
                return invalid_limit("/v1/discovered");
            };
            let limit = limit.min(DISCOVERED_LIMIT);
            let discovery = shared.discovery.clone();
            match blocking(move || discovery.list_top(limit)).await {
                Some(Ok((hosts, total))) => json_response(
                    StatusCode::OK,
                    json!({ "discovered": hosts, "total": total }),
                ),
                Some(Err(error)) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": {"code": "discovery_unavailable", "message": format!("{error:#}")}}),
                ),
                None => internal("the discovery task failed"),
            }
        }
        "/v1/alerts" => {
            let Some(limit) = limit(&request) else {
                return invalid_limit("/v1/alerts");
            };
            let limit = limit.min(1000);
            let lines = shared
                .recorder
                .detector
                .as_ref()
                .map(|d| d.recent(limit))
                .unwrap_or_default();
            let body = format!("{{\"alerts\":[{}]}}", lines.join(","));
            text_response(StatusCode::OK, body, "application/json")
        }
        "/v1/events" => {
            let Some(limit) = limit(&request) else {
                return invalid_limit("/v1/events");
            };
            let limit = limit.min(crate::events::RECENT_EVENTS_CAPACITY);
            shared.recorder.events.flush().await;
            let lines = shared.recorder.events.recent(limit);
            let mut body =
                String::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 16);
            body.push_str("{\"events\":[");
            for (index, line) in lines.iter().enumerate() {
                if index > 0 {
                    body.push(',');
                }
                body.push_str(line);
            }
            body.push_str("]}");
            text_response(StatusCode::OK, body, "application/json")
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "unknown admin route; see docs/ADMIN.md"}}),
        ),
    }
}

/// The methods a route takes (its `Allow`): `POST` for a credential change
/// (`/v1/credentials/NAME`, `…/rotate`, `…/rollback`, `…/revoke`), `GET, HEAD` for everything
/// else, the routes that do not exist included (they answer 404 to those).
fn allowed_methods(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v1/credentials/") else {
        return "GET, HEAD";
    };
    match rest.split_once('/') {
        None if !rest.is_empty() => "POST",
        Some((name, "rotate" | "rollback" | "revoke")) if !name.is_empty() => "POST",
        _ => "GET, HEAD",
    }
}

/// Most destinations `/v1/discovered` answers with at once (each may hold hundreds of
/// endpoints): the most-called first; `total` says how many there are.
const DISCOVERED_LIMIT: usize = 10_000;

/// The request's `limit=N` (100 without one); `None` when it is not a whole number.
fn limit(request: &Request<CallerBody>) -> Option<usize> {
    let value = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("limit=")));
    match value {
        Some(value) => value.parse().ok(),
        None => Some(100),
    }
}

fn invalid_limit(route: &str) -> Response<GatewayBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"code": "invalid_limit", "message": format!("limit must be a whole number, e.g. {route}?limit=50")}}),
    )
}

/// `/v1/credentials…`: list, history, and (POST) set, rotate, rollback, revoke.
/// A POST body is the raw secret value (at most 64 KiB); it is never echoed.
async fn credentials(shared: &Arc<Shared>, request: Request<CallerBody>) -> Response<GatewayBody> {
    use http_body_util::BodyExt as _;
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    // Once: `/v1/credentials/v1/credentials/x` names `v1`, not `x`.
    let rest = path
        .strip_prefix("/v1/credentials")
        .map_or("", |rest| rest.strip_prefix('/').unwrap_or(rest));
    let mut parts = rest.splitn(2, '/');
    let name = parts.next().unwrap_or("").to_string();
    let action = parts.next().unwrap_or("").to_string();
    let vault = shared.vault.clone();
    let now = crate::now_ms();
    let max_age = shared
        .credential_max_age_days
        .load(std::sync::atomic::Ordering::Relaxed) as i64;
    let error = |status: StatusCode, code: &str, message: String| {
        json_response(status, json!({"error": {"code": code, "message": message}}))
    };
    let vault_error = |e: postern_vault::VaultError| {
        let status = match e {
            postern_vault::VaultError::NotFound(_) => StatusCode::NOT_FOUND,
            postern_vault::VaultError::AlreadyExists(_)
            | postern_vault::VaultError::Revoked(_)
            | postern_vault::VaultError::NothingToRollBack(_)
            | postern_vault::VaultError::VersionMismatch { .. } => StatusCode::CONFLICT,
            postern_vault::VaultError::InvalidName(_)
            | postern_vault::VaultError::InvalidKind(_)
            | postern_vault::VaultError::EmptyValue => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, "vault", e.to_string())
    };
    // HEAD reads as GET does (its body is dropped on the way out); only POST changes anything.
    if method == Method::GET || method == Method::HEAD {
        return match (name.as_str(), action.as_str()) {
            ("", "") => match blocking(move || vault.list()).await {
                None => internal("listing the credentials failed; see postern's log"),
                Some(Ok(list)) => {
                    let items: Vec<_> = list
                        .iter()
                        .map(|m| {
                            let age = m.age_days(now);
                            json!({"name": m.name, "kind": m.kind, "state": m.state, "version": m.current_version,
                                   "created_ms": m.created_ms, "last_rotated_ms": m.last_rotated_ms,
                                   "last_used_ms": m.last_used_ms, "rollback_until_ms": m.rollback_until_ms,
                                   "age_days": age,
                                   "over_max_age": m.state == postern_vault::SecretState::Active && age > max_age})
                        })
                        .collect();
                    json_response(
                        StatusCode::OK,
                        json!({"credentials": items, "max_age_days": max_age}),
                    )
                }
                Some(Err(e)) => vault_error(e),
            },
            (_, "history") => {
                let read = name.clone();
                match blocking(move || vault.history(&read)).await {
                    None => internal("reading the credential's history failed; see postern's log"),
                    Some(Ok(history)) => {
                        json_response(StatusCode::OK, json!({"name": name, "history": history}))
                    }
                    Some(Err(e)) => vault_error(e),
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "use /v1/credentials or /v1/credentials/NAME/history".to_string(),
            ),
        };
    }
    // POST (the only other method `handle` lets through here): set (no action), rotate, rollback, revoke.
    // A body that does not come is not waited for longer than this (a request is not left
    // holding the admin listener's connection open by sending its head and nothing else).
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        http_body_util::Limited::new(request.into_body(), 64 * 1024).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(body)) => zeroize::Zeroizing::new(body.to_bytes().to_vec()),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s; send it with the request",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "a credential value is at most 64 KiB".to_string(),
            )
        }
    };
    let value: &[u8] = body.trim_ascii_end();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    // A value an integration injecting this credential could not use (a CR or LF in a header
    // credential, say) would take it down: refused before anything is stored.
    if action.is_empty() || action == "rotate" {
        let runtime = shared.runtime.load();
        let refused = runtime.integrations.values().find_map(|integration| {
            crate::runtime::unusable_value(&integration.config, &name, value)
                .map(|why| (integration.name.clone(), why))
        });
        if let Some((integration, why)) = refused {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "credential_unusable",
                format!("integration {integration} could not use this value of {name}: {why}; nothing was stored"),
            );
        }
    }
    enum Change {
        Set {
            kind: String,
        },
        Rotate {
            window_s: i64,
            expected: Option<u32>,
        },
        Rollback,
        Revoke,
    }
    let change = match action.as_str() {
        "" => Change::Set {
            kind: param("kind").unwrap_or_else(|| "static".to_string()),
        },
        "rotate" => {
            let window_s = match param("rollback_window_seconds").map(|v| v.parse::<i64>()) {
                None => 86_400,
                Some(Ok(seconds))
                    if (0..=postern_vault::MAX_ROLLBACK_WINDOW_SECONDS).contains(&seconds) =>
                {
                    seconds
                }
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_rollback_window",
                        format!(
                            "rollback_window_seconds must be a whole number of seconds from 0 to {} (a year)",
                            postern_vault::MAX_ROLLBACK_WINDOW_SECONDS
                        ),
                    )
                }
            };
            let expected = match param("expected_version").map(|v| v.parse::<u32>()) {
                None => None,
                Some(Ok(version)) => Some(version),
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_expected_version",
                        "expected_version must be the credential's current version, a whole number (GET /v1/credentials shows it)".to_string(),
                    )
                }
            };
            Change::Rotate { window_s, expected }
        }
        "rollback" => Change::Rollback,
        "revoke" => Change::Revoke,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/credentials/NAME[/rotate|/rollback|/revoke]".to_string(),
            )
        }
    };
    // The vault's SQLite (which may wait on another writer, up to its busy timeout) and the
    // runtime's rebuild, off the async threads.
    let applying = shared.clone();
    let changed = blocking(move || {
        let value: &[u8] = body.trim_ascii_end();
        let result = match change {
            Change::Set { kind } => vault
                .set(&name, &kind, value, now)
                .map(|v| json!({"name": name, "action": "set", "version": v})),
            Change::Rotate { window_s, expected } => vault
                .rotate_from(&name, expected, value, window_s * 1000, now)
                .map(|v| json!({"name": name, "action": "rotate", "version": v, "rollback_window_seconds": window_s})),
            Change::Rollback => vault
                .rollback(&name, now)
                .map(|v| json!({"name": name, "action": "rollback", "version": v})),
            Change::Revoke => vault
                .revoke(&name, now)
                .map(|_| json!({"name": name, "action": "revoke"})),
        };
        let applied = result.as_ref().ok().map(|_| {
            // Apply at once for calls that start after this answer.
            tracing::info!(credential = %name, action = %if action.is_empty() { "set" } else { action.as_str() }, "credential changed via the admin API");
            applying.refresh_from_vault()
        });
        (result, applied)
    })
    .await;
    match changed {
        Some((Ok(answer), Some(Err(e)))) => {
            tracing::error!(error = %format!("{e:#}"), "applying a credential change failed");
            // Stored, but not in use yet: the vault poller tries again every 250 ms.
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": {"code": "credential_change_not_applied", "message": "the change is stored in the vault, but applying it failed (see postern's log); calls go on with the previous credentials until it applies; do not repeat it (a repeated rotation would rotate again: pass expected_version to make a retry safe)", "stored": answer}}),
            )
        }
        Some((Ok(answer), _)) => json_response(StatusCode::OK, answer),
        Some((Err(e), _)) => vault_error(e),
        None => internal("the credential change's task failed; see postern's log"),
    }
}

/// `500 audit_read_failed`. These routes are public: the reason (which names files under
/// `data_dir`) goes to the gateway's log, not to the client.
fn audit_read_failed() -> Response<GatewayBody> {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": {"code": "audit_read_failed", "message": "the audit log could not be read; see the gateway's log"}}),
    )
}

/// Runs `work` (the vault's SQLite, a runtime rebuild) on tokio's blocking threads, not on
/// the async ones that serve the admin listener, the checkpointer and the event task:
/// `None` if it panicked.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// `500 internal`, saying what failed.
fn internal(message: &str) -> Response<GatewayBody> {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": {"code": "internal", "message": message}}),
    )
}

/// The most memory, in KiB, the public audit log's answers (`/log/…` and `/v1/audit/…`) hold
/// at once while their clients take them ([`Shared::public_answers`], [`held`]): 64 MiB, four
/// full entry bundles of the largest entries or hundreds of common ones. Past it a read answers
/// `503 log_reads_busy` (Retry-After 1) until answers already given are taken or dropped.
pub const PUBLIC_ANSWER_KIB: usize = 64 * 1024;

/// `answer`, holding its size in the public answers' budget until it is sent: an HTTP/2
/// client can ask for 128 answers a connection and take none (a zero window). The budget
/// bounds the bytes they hold; the idle limit cuts an answer that does not move
/// (`listener::Answers`). `503 log_reads_busy` (JSON, or text for `/log/`) when the budget
/// is spent.
fn held(
    budget: &Arc<tokio::sync::Semaphore>,
    answer: Response<GatewayBody>,
    json: bool,
) -> Response<GatewayBody> {
    let (parts, body) = answer.into_parts();
    let GatewayBody::Full(Some(bytes)) = body else {
        return Response::from_parts(parts, body);
    };
    let kib = u32::try_from(bytes.len().div_ceil(1024)).unwrap_or(u32::MAX);
    match budget.clone().try_acquire_many_owned(kib) {
        Ok(share) => Response::from_parts(parts, GatewayBody::held(bytes, share)),
        Err(_) => {
            const BUSY: &str = "the audit log's answers not yet taken by their clients hold the memory set aside for them; retry shortly";
            let mut response = match json {
                true => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": {"code": "log_reads_busy", "message": BUSY}}),
                ),
                false => text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{BUSY}\n"),
                    "text/plain; charset=utf-8",
                ),
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// Public `/log/` tile reads served at once ([`Shared::log_reads`]).
pub const LOG_READERS: usize = 8;
/// How long a tile read waits for a place before `503`.
const LOG_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `/log/checkpoint`, `/log/tile/<L>/<N>[.p/<W>]`, `/log/tile/entries/<N>[.p/<W>]` (C2SP
/// tlog-tiles), read-only. Only what the latest signed checkpoint covers is served, so every
/// tile a client fetches can be checked against a checkpoint it can get.
async fn log_resource(shared: &Arc<Shared>, resource: &str) -> Response<GatewayBody> {
    let ledger = shared.audit.ledger.clone();
    let not_found = |message: String| {
        let mut response = text_response(
            StatusCode::NOT_FOUND,
            message + "\n",
            "text/plain; charset=utf-8",
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    if resource == "checkpoint" {
        return match ledger.checkpoint_text() {
            Some(note) => {
                let mut response = text_response(StatusCode::OK, note, "text/plain; charset=utf-8");
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            None => not_found("no checkpoint has been signed yet; one is signed within audit_checkpoint_interval_ms of the first entry".to_string()),
        };
    }
    let tile = match postern_tlog::parse_tile_path(resource) {
        Ok(tile) => tile,
        Err(error) => {
            return not_found(format!(
                "{error}; see docs/AUDIT.md for the tlog-tiles paths"
            ))
        }
    };
    let signed_size = ledger.latest_checkpoint().map_or(0, |c| c.size);
    let (level, n, width) = match tile {
        postern_tlog::TileResource::Hashes(t) => (t.level, t.n, t.width),
        postern_tlog::TileResource::Entries(b) => (0, b.n, b.width),
    };
    let covered = postern_tlog::tile_width(level, n, signed_size).unwrap_or(0);
    if width > covered {
        return not_found(format!(
            "{resource} is not covered by the latest checkpoint (size {signed_size})"
        ));
    }
    let full = u64::from(width) == postern_tlog::TILE_WIDTH;
    let Some(place) = log_read_place(shared).await else {
        let mut response = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many audit log reads at once; retry shortly\n",
            "text/plain; charset=utf-8",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let read = tokio::task::spawn_blocking(move || {
        let _place = place;
        match tile {
            postern_tlog::TileResource::Hashes(t) => ledger.read_tile(t.level, t.n, t.width),
            postern_tlog::TileResource::Entries(b) => ledger.read_entries(b.n, b.width),
        }
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            let mut response = text_response(StatusCode::OK, bytes, "application/octet-stream");
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(if full {
                    "public, max-age=31536000, immutable"
                } else {
                    "public, max-age=60"
                }),
            );
            response
        }
        Ok(Err(postern_ledger::LedgerError::OutOfRange(message))) => not_found(message),
        Ok(Err(error)) => {
            tracing::error!(%error, resource, "reading the audit log failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the audit log could not be read; see the gateway's log\n",
                "text/plain; charset=utf-8",
            )
        }
        Err(_) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the audit log read task failed\n",
            "text/plain; charset=utf-8",
        ),
    }
}

/// A place among the audit log's readers ([`LOG_READ_WAIT`] at most to get one): anyone may
/// read the log, so at most `LOG_READERS` reads run at once, each holding its place until its
/// disk reads end (even if its asker has gone), and cannot take the blocking pool the
/// checkpointer and the vault use.
async fn log_read_place(shared: &Shared) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::time::timeout(LOG_READ_WAIT, shared.log_reads.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// The audit routes anyone may ask, as the tiles under `/log/` are: the verifier key, proofs
/// (only hashes and a signed checkpoint), and the entries a signed checkpoint covers (the same
/// bytes as the public entry bundles). A monitor on another machine checks the log without the
/// admin token. Entries no checkpoint covers yet are the admin's ([`audit_api`]).
fn public_audit(path: &str) -> bool {
    matches!(path, "/v1/audit/key" | "/v1/audit/consistency")
        || path.starts_with("/v1/audit/proof/")
        || path.starts_with("/v1/audit/entries/")
}

/// `/v1/audit/entries/<INDEX>`, `/v1/audit/proof/<INDEX>`, `/v1/audit/consistency?old=N&new=M`
/// and `/v1/audit/key`: public, but for entries no signed checkpoint covers yet, which need the
/// admin token (`authorized`).
async fn audit_api(
    shared: &Arc<Shared>,
    rest: &str,
    query: &str,
    authorized: bool,
) -> Response<GatewayBody> {
    let ledger = shared.audit.ledger.clone();
    // Anyone may ask for proofs: their disk reads take a place among the log's readers.
    let place = || async {
        match log_read_place(shared).await {
            Some(place) => Ok(place),
            None => {
                let mut response = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": {"code": "log_reads_busy", "message": "too many audit log reads at once; retry shortly"}}),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(response)
            }
        }
    };
    let error = |status: StatusCode, code: &str, message: String| {
        json_response(status, json!({"error": {"code": code, "message": message}}))
    };
    let parse_index = |text: &str| -> Option<u64> {
        if text.is_empty()
            || !text.bytes().all(|b| b.is_ascii_digit())
            || (text.len() > 1 && text.starts_with('0'))
        {
            return None;
        }
        text.parse().ok()
    };
    let (route, argument) = rest.split_once('/').unwrap_or((rest, ""));
    let size = ledger.size();
    let signed_size = ledger.latest_checkpoint().map_or(0, |c| c.size);
    match (route, argument) {
        ("key", "") => text_response(
            StatusCode::OK,
            format!("{}\n", ledger.verifier_key()),
            "text/plain; charset=utf-8",
        ),
        ("entries" | "proof", index) => {
            let Some(index) = parse_index(index) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_index",
                    format!("{index:?} is not an entry index: use a whole number, e.g. /v1/audit/{route}/0"),
                );
            };
            let is_proof = route == "proof";
            // Without the token, nothing is said of entries past the latest checkpoint, not even
            // how many there are.
            // (`authorized` is asked for entries only: a proof needs a checkpoint.)
            if is_proof && index >= signed_size {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_checkpointed",
                    format!("entry {index} is not covered by the latest checkpoint (size {signed_size}); ask again after the next one"),
                );
            }
            if !is_proof && index >= signed_size && !authorized {
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "admin_unauthenticated",
                    format!("entry {index} is not covered by a signed checkpoint yet (size {signed_size}): until it is, it is the admin's; send Authorization: Bearer <admin token>, or ask again after the next checkpoint"),
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"postern-admin\""),
                );
                return response;
            }
            if index >= size {
                return error(
                    StatusCode::NOT_FOUND,
                    "no_such_entry",
                    format!("entry {index} does not exist: the log has {size} entries"),
                );
            }
            let place = match place().await {
                Ok(place) => place,
                Err(busy) => return busy,
            };
            let read = tokio::task::spawn_blocking(move || {
                let _place = place;
                if is_proof {
                    ledger.tlog_proof(index).map(|proof| proof.encode().into_bytes())
                } else {
                    ledger.entry(index)
                }
            })
            .await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(postern_ledger::LedgerError::OutOfRange(message))) => {
                    return error(StatusCode::NOT_FOUND, "not_checkpointed", message)
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, index, "reading the audit log failed");
                    return audit_read_failed();
                }
                Err(_) => return audit_read_failed(),
            };
            if is_proof {
                return text_response(StatusCode::OK, bytes, "text/plain; charset=utf-8");
            }
            use base64::Engine as _;
            let (record, decode_error) = match postern_tlog::AuditRecord::decode(&bytes) {
                Ok(record) => (serde_json::to_value(&record).unwrap_or(serde_json::Value::Null), None),
                Err(e) => (serde_json::Value::Null, Some(e.to_string())),
            };
            json_response(
                StatusCode::OK,
                json!({
                    "index": index,
                    "leaf_hash": postern_tlog::leaf_hash(&bytes).to_hex(),
                    "entry_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                    "covered_by_checkpoint": index < signed_size,
                    "checkpoint_size": signed_size,
                    "record": record,
                    "decode_error": decode_error,
                }),
            )
        }
        ("consistency", "") => {
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                    .and_then(parse_index)
            };
            let (Some(old), Some(new)) = (param("old"), param("new")) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "give both tree sizes as whole numbers: /v1/audit/consistency?old=N&new=M".to_string(),
                );
            };
            if old == 0 || old > new {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_sizes",
                    format!("need 0 < old <= new (got old={old}, new={new}); every tree is consistent with the empty one"),
                );
            }
            if new > signed_size {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_checkpointed",
                    format!("tree size {new} is beyond the latest checkpoint (size {signed_size})"),
                );
            }
            let place = match place().await {
                Ok(place) => place,
                Err(busy) => return busy,
            };
            let read = tokio::task::spawn_blocking(move || {
                let _place = place;
                ledger.consistency_proof(old, new)
            })
            .await;
            match read {
                Ok(Ok(proof)) => {
                    let mut body = String::with_capacity(proof.len() * 45);
                    for hash in &proof {
                        body.push_str(&hash.to_base64());
                        body.push('\n');
                    }
                    text_response(StatusCode::OK, body, "text/plain; charset=utf-8")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, old, new, "reading the audit log failed");
                    audit_read_failed()
                }
                Err(_) => audit_read_failed(),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "audit routes: /v1/audit/entries/INDEX, /v1/audit/proof/INDEX, /v1/audit/consistency?old=N&new=M, /v1/audit/key".to_string(),
        ),
    }
}

/// Ready or not, for anyone (a load balancer's probe has no token); what is wrong only with
/// the admin token: the problems name integrations, files and variables of the config.
fn readiness(shared: &Shared, authorized: bool) -> Response<GatewayBody> {
    let runtime = shared.runtime.load();
    let mut problems: Vec<String> = runtime.problems.clone();
    if let Some(problem) = shared.audit.health_problem() {
        problems.push(problem);
    }
    if shared.is_draining() {
        problems.push("shutting down".to_string());
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match authorized {
        true => json!({"ready": problems.is_empty(), "problems": problems}),
        false => json!({
            "ready": problems.is_empty(),
            "problem_count": problems.len(),
            "detail": "send Authorization: Bearer <admin token> to see the problems",
        }),
    };
    json_response(status, body)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<GatewayBody> {
    text_response(status, body.to_string(), "application/json")
}

fn text_response(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A 404 quotes the path it was asked for: never sniffed into HTML by a browser.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A public answer holds its KiB of the budget until its client has taken it whole (or it
    /// is dropped), handed on in copies of at most a chunk; past the budget a read is `503`.
    #[tokio::test]
    async fn public_answers_hold_their_size_until_taken() {
        let budget = Arc::new(tokio::sync::Semaphore::new(300));
        let tile = Bytes::from(vec![7u8; 200 * 1024]);
        let answer = |bytes: &Bytes| {
            held(
                &budget,
                text_response(StatusCode::OK, bytes.clone(), "application/octet-stream"),
                false,
            )
        };
        let first = answer(&tile);
        assert_eq!(budget.available_permits(), 100);
        let refused = answer(&tile);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(budget.available_permits(), 100, "a refusal holds nothing");

        let mut body = first.into_body();
        let mut taken = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= crate::body::HeldBytes::CHUNK);
            taken.extend_from_slice(&data);
        }
        assert_eq!(taken, tile);
        assert_eq!(budget.available_permits(), 300, "given back once taken");

        let dropped = answer(&tile);
        assert_eq!(budget.available_permits(), 100);
        drop(dropped);
        assert_eq!(budget.available_permits(), 300, "given back when dropped");
    }
}
