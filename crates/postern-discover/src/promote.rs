//! Drafts a `[[integrations]]` stanza from a discovered host, for `postern discover promote`.
//!
//! The draft is meant to be edited: owner, vendor and credential are placeholders marked
//! `TODO`; the operations are every endpoint seen, with the counts in a comment above each.
//! What the draft guarantees is that the parts derived from traffic are valid for the config:
//! the name is `[a-z0-9][a-z0-9_-]{0,62}`, operation ids are unique `[a-z0-9_]{1,64}`, methods
//! are ones the config allows (others are listed as comments), and each path template has
//! distinct placeholder names (`{id}`, `{id2}`, …). A template cut short (it ends with
//! [`crate::template::TRUNCATED`]) is listed as a comment too: what followed is not known.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::template::{PLACEHOLDER, TRUNCATED};
use crate::{DiscoveredHost, Scheme};

/// Umbrella domains where the registrable name says little (`sqs.us-east-1.amazonaws.com`):
/// the name is then `<first label>-<umbrella>`.
const UMBRELLA_DOMAINS: &[&str] = &[
    "amazonaws",
    "googleapis",
    "azure",
    "windows",
    "cloudfront",
    "herokuapp",
    "azurewebsites",
];

/// Labels that are not the vendor (`api.stripe.com`, `www.example.com`).
const GENERIC_LABELS: &[&str] = &["api", "apis", "www", "app", "hooks", "rest", "gateway"];

/// A ready-to-edit `[[integrations]]` stanza for `host` (TOML, ends with a newline).
pub fn draft_integration(host: &DiscoveredHost) -> String {
    let name = integration_name(&host.host);
    let mut out = String::new();
    let _ = write_draft(&mut out, host, &name);
    out
}

fn write_draft(out: &mut String, host: &DiscoveredHost, name: &str) -> std::fmt::Result {
    let authority = host.authority();
    writeln!(
        out,
        "# Drafted by `postern discover promote` from traffic to {authority}:"
    )?;
    writeln!(
        out,
        "# {} calls ({} blocked), {} bytes out, {} bytes in, {} endpoints, seen {} .. {}.",
        host.calls,
        host.blocked_calls,
        host.bytes_out,
        host.bytes_in,
        host.endpoints.len(),
        rfc3339(host.first_seen_ms),
        rfc3339(host.last_seen_ms),
    )?;
    if !host.callers.is_empty() {
        let mut callers: Vec<&str> = host.callers.iter().map(String::as_str).take(10).collect();
        if host.callers.len() > 10 {
            callers.push("…");
        }
        writeln!(out, "# Callers: {}", comment_text(&callers.join(", ")))?;
    }
    if host.endpoints_truncated > 0 {
        writeln!(
            out,
            "# {} calls went to endpoints not listed here (the per-host endpoint cap was reached).",
            host.endpoints_truncated
        )?;
    }
    writeln!(
        out,
        "# Review it: fill in the TODOs, keep only the operations your services need, store the\n\
         # credential (`postern creds set {}`), then grant callers in [[grants]].",
        secret_name(name)
    )?;
    writeln!(out, "[[integrations]]")?;
    writeln!(out, "name = {}", toml_string(name))?;
    writeln!(
        out,
        "vendor = {}   # TODO: the vendor's name",
        toml_string(&vendor_name(name))
    )?;
    writeln!(
        out,
        "owner = \"TODO@example.com\"   # TODO: who answers for this integration"
    )?;
    let upstream_host = if host.host.contains(':') {
        format!("[{}]", host.host)
    } else {
        host.host.clone()
    };
    // The scheme the calls were seen to use (TLS wins: the vendor offers it); where none was
    // seen, port 80 is taken for plain HTTP and any other for https, and the draft says so.
    let seen_https = host.schemes.contains(&Scheme::Https);
    let seen_http = host.schemes.contains(&Scheme::Http);
    let plaintext = |why: &str| {
        Some(format!(
            "allow_plaintext = true   # TODO: {why}; use https if the vendor offers it"
        ))
    };
    let (scheme, assumed) = match (seen_https, seen_http, host.port) {
        (true, _, _) => (Scheme::Https, None),
        (false, true, _) => (Scheme::Http, plaintext("its calls were plain HTTP")),
        (false, false, 80) => (
            Scheme::Http,
            plaintext("plain HTTP assumed on port 80 (no call showed its scheme)"),
        ),
        (false, false, 443) => (Scheme::Https, None),
        (false, false, port) => (
            Scheme::Https,
            Some(format!("# TODO: https assumed on port {port} (no call showed its scheme); if the host speaks plain HTTP there, use \"http://{upstream_host}:{port}\" and allow_plaintext = true")),
        ),
    };
    let upstream = match host.port == scheme.default_port() {
        true => format!("{}://{upstream_host}", scheme.as_str()),
        false => format!("{}://{upstream_host}:{}", scheme.as_str(), host.port),
    };
    if seen_https && seen_http {
        writeln!(
            out,
            "# Some calls to this host were plain HTTP: once they go through this integration, they use https."
        )?;
    }
    writeln!(out, "upstream = {}", toml_string(&upstream))?;
    if let Some(assumed) = assumed {
        writeln!(out, "{assumed}")?;
    }
    // What the config takes as a `hosts` entry (names and IPv4 addresses); anything else (an
    // IPv6 address, an imported name the config refuses) is commented out: the integration is
    // reached by path only, until the vendor's name is put there.
    match postern_config::check_host_pattern(&host.host) {
        Ok(()) => {
            writeln!(out, "hosts = [{}]", toml_string(&host.host))?;
            writeln!(out, "intercept = true")?;
        }
        Err(why) => {
            let why = if host.host.contains(':') {
                "IPv6 addresses cannot be `hosts` entries"
            } else {
                why
            };
            writeln!(
                out,
                "# hosts = [{}]   # TODO: {why}; put the vendor's host name here to reach it through the proxy",
                toml_string(&host.host)
            )?;
            writeln!(out, "# intercept = true")?;
        }
    }
    writeln!(
        out,
        "credential = {{ kind = \"bearer\", secret = {} }}",
        toml_string(&secret_name(name))
    )?;
    writeln!(
        out,
        "# credential kinds: bearer; basic (+ username); header (+ name = \"X-Api-Key\"); query (+ param);\n\
         # oauth2 (+ token_url, client_id, client_secret). The value: secret = a vault name, or from_env / from_file."
    )?;
    writeln!(out, "operations = [")?;
    if host.endpoints.is_empty() {
        writeln!(
            out,
            "  # TODO: no endpoint was visible (TLS pass-through or CONNECT tunnels only);\n  \
             # list the operations, e.g. {{ id = \"get_thing\", method = \"GET\", path = \"/v1/things/{{id}}\" }},"
        )?;
    }
    let mut endpoints: Vec<_> = host.endpoints.iter().collect();
    endpoints.sort_by(|a, b| (&a.template, &a.method).cmp(&(&b.template, &b.method)));
    let mut ids = BTreeSet::new();
    for endpoint in endpoints {
        let status = endpoint
            .last_status
            .map_or_else(|| "none".to_owned(), |status| status.to_string());
        let counts = format!(
            "{} call{} ({} blocked), last status {status}, last seen {}",
            endpoint.calls,
            if endpoint.calls == 1 { "" } else { "s" },
            endpoint.blocked_calls,
            rfc3339(endpoint.last_seen_ms)
        );
        if !postern_config::ALLOWED_METHODS.contains(&endpoint.method.as_str()) {
            writeln!(
                out,
                "  # {} {}: {counts}; method not allowed in operations",
                comment_text(&endpoint.method),
                comment_text(&endpoint.template)
            )?;
            continue;
        }
        if endpoint.template.ends_with(TRUNCATED) {
            writeln!(
                out,
                "  # {} {}: {counts}; path cut short, write this operation by hand",
                comment_text(&endpoint.method),
                comment_text(&endpoint.template)
            )?;
            continue;
        }
        let path = name_placeholders(&endpoint.template);
        let id = unique_id(&operation_id(&endpoint.method, &path), &mut ids);
        writeln!(out, "  # {counts}")?;
        writeln!(
            out,
            "  {{ id = {}, method = {}, path = {} }},",
            toml_string(&id),
            toml_string(&endpoint.method),
            toml_string(&path)
        )?;
    }
    writeln!(out, "]")
}

/// `api.stripe.com` → `stripe`, `hooks.slack.com` → `slack`, `api.example.co.uk` → `example`,
/// `sqs.us-east-1.amazonaws.com` → `sqs-amazonaws`, `10.0.0.7` → `ip-10-0-0-7`.
pub fn integration_name(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return sanitize_name(&format!("ip-{host}"));
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    let suffix_labels = match labels.as_slice() {
        [.., second, last]
            if last.len() == 2
                && ["co", "com", "net", "org", "gov", "ac", "edu", "ne", "or"].contains(second) =>
        {
            2
        }
        _ => 1,
    };
    let name = if labels.len() > suffix_labels {
        let registrable = labels[labels.len() - suffix_labels - 1];
        let first = labels
            .iter()
            .find(|label| !GENERIC_LABELS.contains(label))
            .copied()
            .unwrap_or(registrable);
        if UMBRELLA_DOMAINS.contains(&registrable) && first != registrable {
            format!("{first}-{registrable}")
        } else {
            registrable.to_owned()
        }
    } else {
        host.to_owned()
    };
    sanitize_name(&name)
}

/// `[a-z0-9][a-z0-9_-]{0,62}`; `discovered` if nothing is left.
fn sanitize_name(name: &str) -> String {
    let mut sanitized: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    sanitized = sanitized
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect();
    if sanitized.is_empty() {
        "discovered".to_owned()
    } else {
        sanitized
    }
}

/// `stripe` → `Stripe`.
fn vendor_name(name: &str) -> String {
    let mut characters = name.chars();
    characters
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + characters.as_str())
        .unwrap_or_default()
}

/// `stripe` → `STRIPE_KEY`.
fn secret_name(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}_KEY")
}

/// `/v1/customers/{id}/sources/{id}` → `/v1/customers/{id}/sources/{id2}`.
pub fn name_placeholders(template: &str) -> String {
    let mut named = String::with_capacity(template.len() + 4);
    let mut rest = template;
    let mut count = 0;
    while let Some(at) = rest.find(PLACEHOLDER) {
        named.push_str(&rest[..at]);
        count += 1;
        if count == 1 {
            named.push_str(PLACEHOLDER);
        } else {
            let _ = write!(named, "{{id{count}}}");
        }
        rest = &rest[at + PLACEHOLDER.len()..];
    }
    named.push_str(rest);
    named
}

/// `GET /v1/charges/{id}` → `get_v1_charges_id`; `/` → `get_root`. At most 64 characters.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for character in path.chars() {
        let character = character.to_ascii_lowercase();
        if character.is_ascii_alphanumeric() {
            id.push(character);
        } else if !id.ends_with('_') {
            id.push('_');
        }
    }
    let mut id = id.trim_end_matches('_').to_owned();
    if !id.contains('_') {
        id.push_str("_root");
    }
    id.truncate(64);
    id.trim_end_matches('_').to_owned()
}

fn unique_id(base: &str, taken: &mut BTreeSet<String>) -> String {
    let mut id = base.to_owned();
    let mut suffix = 1;
    while taken.contains(&id) {
        suffix += 1;
        let tail = format!("_{suffix}");
        let mut stem = base.to_owned();
        stem.truncate(64 - tail.len());
        id = stem + &tail;
    }
    taken.insert(id.clone());
    id
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Text safe inside a `#` comment (no line breaks or control characters).
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let check = |host: &str, expect: &str| assert_eq!(integration_name(host), expect, "{host}");
        check("api.stripe.com", "stripe");
        check("api.openai.com", "openai");
        check("hooks.slack.com", "slack");
        check("api.twilio.com", "twilio");
        check("api.github.com", "github");
        check("api.example.co.uk", "example");
        check("sqs.us-east-1.amazonaws.com", "sqs-amazonaws");
        check(
            "generativelanguage.googleapis.com",
            "generativelanguage-googleapis",
        );
        check("localhost", "localhost");
        check("10.0.0.7", "ip-10-0-0-7");
        check("2001:db8::1", "ip-2001-db8--1");
        check("My_Vendor.IO", "my_vendor");
    }

    #[test]
    fn ids_and_placeholders() {
        assert_eq!(
            name_placeholders("/v1/customers/{id}/sources/{id}"),
            "/v1/customers/{id}/sources/{id2}"
        );
        assert_eq!(
            name_placeholders("/2010-04-01/Accounts/{id}/Messages/{id}.json"),
            "/2010-04-01/Accounts/{id}/Messages/{id2}.json"
        );
        assert_eq!(operation_id("GET", "/v1/charges/{id}"), "get_v1_charges_id");
        assert_eq!(
            operation_id("POST", "/2010-04-01/Accounts/{id}/Messages.json"),
            "post_2010_04_01_accounts_id_messages_json"
        );
        assert_eq!(operation_id("GET", "/"), "get_root");
        assert_eq!(
            operation_id("GET", &format!("/{}", "a".repeat(100))).len(),
            64
        );
        let mut taken = BTreeSet::new();
        assert_eq!(unique_id("get_a", &mut taken), "get_a");
        assert_eq!(unique_id("get_a", &mut taken), "get_a_2");
        assert_eq!(unique_id(&"x".repeat(64), &mut taken).len(), 64);
        assert_eq!(
            unique_id(&"x".repeat(64), &mut taken),
            format!("{}_2", "x".repeat(62))
        );
    }

    /// A draft is a config `postern check` takes, for a host name, an IPv6 address and an
    /// imported name the config refuses as a `hosts` entry alike (those two are left as a
    /// comment).
    #[test]
    fn drafts_pass_the_config_check() {
        for (host, hosts_line) in [
            ("api.stripe.com", "hosts = [\"api.stripe.com\"]"),
            ("2001:db8::1", "# hosts = [\"2001:db8::1\"]"),
            ("api-.example.com", "# hosts = [\"api-.example.com\"]"),
        ] {
            let mut inventory = crate::Inventory::new();
            let observation = crate::Observation {
                host: host.into(),
                port: 443,
                scheme: None,
                caller: Some("checkout".into()),
                method: Some("GET".into()),
                path: Some("/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15".into()),
                status: Some(200),
                bytes_out: 1,
                bytes_in: 1,
                time_ms: 1,
                blocked: false,
                source: crate::ObservationSource::Proxy,
            };
            inventory.record(&observation);
            // A path too long for a template: its endpoint is listed, as a comment.
            inventory.record(&crate::Observation {
                path: Some("/x".repeat(40)),
                ..observation
            });
            let draft = draft_integration(inventory.hosts().next().unwrap());
            assert!(draft.contains(hosts_line), "{draft}");
            assert!(
                draft.contains("/x/{...}: 1 call (0 blocked), last status 200"),
                "{draft}"
            );
            let text = format!(
                "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n\n{draft}"
            );
            if let Err(errors) = postern_config::parse(&text, std::path::Path::new("postern.toml"))
            {
                panic!("{errors}\n---\n{text}");
            }
        }
    }

    #[test]
    fn strings_and_comments_are_escaped() {
        assert_eq!(toml_string(r#"/a"b\c"#), r#""/a\"b\\c""#);
        assert_eq!(comment_text("a\nb"), "a?b");
    }

    /// The scheme the calls were seen to use sets the upstream's; where none was seen, the
    /// port decides and the draft says what it assumed.
    #[test]
    fn the_upstream_scheme_is_the_one_seen_else_assumed_from_the_port() {
        let draft = |port: u16, schemes: &[Option<crate::Scheme>]| {
            let mut inventory = crate::Inventory::new();
            for scheme in schemes {
                inventory.record(&crate::Observation {
                    host: "localhost".into(),
                    port,
                    scheme: *scheme,
                    caller: Some("app".into()),
                    method: Some("GET".into()),
                    path: Some("/items/123".into()),
                    status: Some(200),
                    bytes_out: 10,
                    bytes_in: 20,
                    time_ms: 0,
                    blocked: false,
                    source: crate::ObservationSource::Proxy,
                });
            }
            draft_integration(inventory.get("localhost", port).unwrap())
        };
        use crate::Scheme::{Http, Https};
        for (port, schemes, upstream, note) in [
            (
                18102,
                vec![None],
                "https://localhost:18102",
                Some("# TODO: https assumed on port 18102"),
            ),
            (
                80,
                vec![None],
                "http://localhost",
                Some("plain HTTP assumed on port 80"),
            ),
            (443, vec![None], "https://localhost", None),
            (
                18102,
                vec![None, Some(Http)],
                "http://localhost:18102",
                Some("allow_plaintext = true   # TODO: its calls were plain HTTP"),
            ),
            (
                80,
                vec![Some(Http)],
                "http://localhost",
                Some("its calls were plain HTTP"),
            ),
            (
                443,
                vec![Some(Http)],
                "http://localhost:443",
                Some("its calls were plain HTTP"),
            ),
            (8443, vec![Some(Https)], "https://localhost:8443", None),
            (
                80,
                vec![Some(Https), Some(Http)],
                "https://localhost:80",
                Some("Some calls to this host were plain HTTP"),
            ),
        ] {
            let draft = draft(port, &schemes);
            assert!(
                draft.contains(&format!("upstream = \"{upstream}\"\n")),
                "{port} {schemes:?}: {draft}"
            );
            match note {
                Some(note) => assert!(draft.contains(note), "{port} {schemes:?}: {draft}"),
                None => assert!(
                    !draft.contains("TODO: https assumed") && !draft.contains("allow_plaintext"),
                    "{draft}"
                ),
            }
            let text = format!(
                "[gateway]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ndata_dir = \"d\"\n\n{draft}"
            );
            if let Err(errors) = postern_config::parse(&text, std::path::Path::new("postern.toml"))
            {
                panic!("{errors}\n---\n{text}");
            }
        }
    }
}
