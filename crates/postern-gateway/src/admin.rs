//! The admin listener: health, readiness, metrics and the read-only JSON API.
//! Everything but `/healthz` and `/readyz` needs `Authorization: Bearer <admin token>`.
//! Routes and payloads are documented in `docs/ADMIN.md`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::GatewayBody;
use crate::runtime::Injector;
use crate::Shared;

pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<GatewayBody> {
    let path = request.uri().path().to_string();
    let path = path.as_str();
    let is_credential_change = request.method() == Method::POST && path.starts_with("/v1/credentials/");
    if request.method() != Method::GET && request.method() != Method::HEAD && !is_credential_change {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"code": "method_not_allowed", "message": "use GET (POST only under /v1/credentials/NAME)"}}),
        );
    }
    match path {
        "/healthz" => return text_response(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => return readiness(&shared),
        _ => {}
    }
    let runtime = shared.runtime.load();
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|token| runtime.is_admin_token(token.trim().as_bytes()));
    if !authorized {
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
    if path == "/v1/credentials" || path.starts_with("/v1/credentials/") {
        return credentials(&shared, request).await;
    }
    match path {
        "/metrics" => text_response(
            StatusCode::OK,
            shared
                .recorder
                .metrics
                .encode(&shared.recorder.events.stats),
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
                        "operations": integration.operations.iter().map(|o| json!({"id": o.id, "method": o.method, "path": o.path})).collect::<Vec<_>>(),
                        "allow_private_networks": integration.allow_private_networks.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                        "allow_plaintext": integration.allow_plaintext,
                        "grants": runtime.config.grants.iter().filter(|g| g.integration == integration.name).map(|g| json!({"caller": g.caller, "operations": g.operations})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_response(StatusCode::OK, json!({ "integrations": list }))
        }
        "/v1/events" => {
            let limit = request
                .uri()
                .query()
                .and_then(|q| {
                    q.split('&')
                        .find_map(|pair| pair.strip_prefix("limit="))
                        .map(|v| v.parse::<usize>())
                })
                .unwrap_or(Ok(100));
            let Ok(limit) = limit else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"code": "invalid_limit", "message": "limit must be a whole number, e.g. /v1/events?limit=50"}}),
                );
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

/// `/v1/credentials…`: list, history, and (POST) set, rotate, rollback, revoke.
/// A POST body is the raw secret value (at most 64 KiB); it is never echoed.
async fn credentials(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<GatewayBody> {
    use http_body_util::BodyExt as _;
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    let rest = path.trim_start_matches("/v1/credentials").trim_start_matches('/');
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
            | postern_vault::VaultError::NothingToRollBack(_) => StatusCode::CONFLICT,
            postern_vault::VaultError::InvalidName(_) | postern_vault::VaultError::EmptyValue => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, "vault", e.to_string())
    };
    if method == Method::GET {
        return match (name.as_str(), action.as_str()) {
            ("", "") => match vault.list() {
                Ok(list) => {
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
                    json_response(StatusCode::OK, json!({"credentials": items, "max_age_days": max_age}))
                }
                Err(e) => vault_error(e),
            },
            (name, "history") => match vault.history(name) {
                Ok(history) => json_response(StatusCode::OK, json!({"name": name, "history": history})),
                Err(e) => vault_error(e),
            },
            _ => error(StatusCode::NOT_FOUND, "not_found", "use /v1/credentials or /v1/credentials/NAME/history".to_string()),
        };
    }
    // POST: set (no action), rotate, rollback, revoke.
    let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(body) => zeroize::Zeroizing::new(body.to_bytes().to_vec()),
        Err(_) => {
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
    let result = match action.as_str() {
        "" => vault
            .set(&name, param("kind").as_deref().unwrap_or("static"), value, now)
            .map(|v| json!({"name": name, "action": "set", "version": v})),
        "rotate" => {
            let window_s: i64 = param("rollback_window_seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(86_400);
            vault
                .rotate(&name, value, window_s * 1000, now)
                .map(|v| json!({"name": name, "action": "rotate", "version": v, "rollback_window_seconds": window_s}))
        }
        "rollback" => vault
            .rollback(&name, now)
            .map(|v| json!({"name": name, "action": "rollback", "version": v})),
        "revoke" => vault
            .revoke(&name, now)
            .map(|_| json!({"name": name, "action": "revoke"})),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "POST /v1/credentials/NAME[/rotate|/rollback|/revoke]".to_string(),
            )
        }
    };
    match result {
        Ok(answer) => {
            // Apply at once for calls that start after this answer.
            if let Err(e) = shared.refresh_from_vault() {
                tracing::error!(error = %format!("{e:#}"), "applying a credential change failed");
            }
            tracing::info!(credential = %name, action = %if action.is_empty() { "set" } else { action.as_str() }, "credential changed via the admin API");
            json_response(StatusCode::OK, answer)
        }
        Err(e) => vault_error(e),
    }
}

fn readiness(shared: &Shared) -> Response<GatewayBody> {
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
    json_response(
        status,
        json!({"ready": problems.is_empty(), "problems": problems}),
    )
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
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
