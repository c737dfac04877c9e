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
    let path = request.uri().path();
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"code": "method_not_allowed", "message": "the admin API is read-only here; use GET"}}),
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

fn readiness(shared: &Shared) -> Response<GatewayBody> {
    let runtime = shared.runtime.load();
    let mut problems: Vec<String> = runtime.problems.clone();
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
