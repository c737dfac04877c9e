//! nginx `combined` (and `common`) access log lines:
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" [extra fields…]
//! ```
//!
//! The destination comes from, in order: the request line in absolute form
//! (`GET https://api.x.com/v1/a HTTP/1.1`, what a forward proxy sees) or a `CONNECT host:port`
//! tunnel; else the first extra field after the user agent that is a host name (`$host`,
//! `$http_host`, `$proxy_host`, quoted or not), its port taken from the field or else from an
//! `IP:port` extra field (`$upstream_addr`); else [`ImportOptions::default_host`]. The caller is
//! `$remote_user` when set, else `$remote_addr`. `$body_bytes_sent` is counted as bytes in
//! (the response); the request size is not in these formats.

use super::{
    observation, parse_nginx_local_time, split_absolute_url, split_host_port, ImportOptions,
};
use crate::Observation;

pub(super) fn parse_line(line: &str, options: &ImportOptions) -> Result<Observation, String> {
    let fields = fields(line)?;
    if fields.len() < 7 {
        return Err(format!(
            "{} fields; the combined format has 9 (common: 7)",
            fields.len()
        ));
    }
    if !fields[3].starts_with('[') {
        return Err(format!(
            "not an nginx combined/common line: the 4th field should be [time], found `{}`",
            fields[3]
        ));
    }
    let remote_addr = &fields[0];
    let remote_user = &fields[2];
    let time = fields[3]
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(parse_nginx_local_time)
        .ok_or_else(|| format!("time `{}` is not [dd/Mon/yyyy:hh:mm:ss +zzzz]", fields[3]))?;
    let status: u16 = fields[5]
        .parse()
        .map_err(|_| format!("status `{}` is not a number", fields[5]))?;
    let bytes_in = fields[6].parse().unwrap_or(0);
    let extras = fields.get(9..).unwrap_or_default();

    let request = &fields[4];
    let mut parts = request.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "request `{}` is not `METHOD TARGET HTTP/x`",
            super::shown_target(request)
        ));
    };
    if !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "request `{}` does not start with a method",
            super::shown_target(request)
        ));
    }
    // Only an absolute-form target says how the host was spoken to (a CONNECT tunnel's
    // bytes are not in the log).
    let (destination, path, scheme) = if method == "CONNECT" {
        match split_host_port(target) {
            Some((host, port)) if super::is_host(&host) => {
                ((host, port.unwrap_or(443)), None, None)
            }
            _ => {
                return Err(format!(
                    "CONNECT target `{}` is not host:port",
                    super::shown_target(target)
                ))
            }
        }
    } else if target.starts_with('/') || target == "*" {
        let destination = host_from_extras(extras)
            .or_else(|| options.default_host.clone())
            .ok_or_else(|| {
                format!(
                    "request `{method} {}` names no host and the line has no host field; \
                     pass --host, or log absolute-form requests or $host",
                    super::shown_target(target)
                )
            })?;
        (destination, Some(target.to_owned()), None)
    } else {
        let (destination, path, scheme) = split_absolute_url(target).ok_or_else(|| {
            format!(
                "request target `{}` is not a path or an http(s) URL",
                super::shown_target(target)
            )
        })?;
        (destination, Some(path), Some(scheme))
    };

    let mut observation = observation(destination, time);
    observation.scheme = scheme;
    observation.caller = super::caller_of(Some(remote_user.as_ref()), Some(remote_addr.as_ref()));
    observation.method = Some(method.to_owned());
    observation.path = path;
    observation.status = Some(status);
    observation.bytes_in = bytes_in;
    Ok(observation)
}

/// The first extra field naming a host (`$host`), with a port from it or from an `IP:port`
/// field (`$upstream_addr`), else 443.
fn host_from_extras(extras: &[String]) -> Option<(String, u16)> {
    let candidates = extras.iter().filter_map(|field| {
        let first = field.split([',', ' ']).next()?.trim();
        (first != "-").then(|| split_host_port(first)).flatten()
    });
    let mut name: Option<(String, Option<u16>)> = None;
    let mut address_port: Option<u16> = None;
    for (host, port) in candidates {
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if is_ip && port.is_some() {
            address_port = address_port.or(port);
        } else if !is_ip && name.is_none() && is_dns_name(&host) {
            name = Some((host, port));
        }
    }
    let (host, port) = name?;
    Some((host, port.or(address_port).unwrap_or(443)))
}

/// `api.x.com` or `localhost`: labels of letters, digits, `-`, the last one with a letter (a
/// top-level domain is never all digits). That keeps other fields a log format appends from
/// being taken for the host: `$ssl_protocol` (`TLSv1.3`, `SSLv3`: its last label is a number,
/// or it has no dot), a version or a time (`1.1`, `0.003`).
fn is_dns_name(host: &str) -> bool {
    (host.contains('.') || host == "localhost")
        && host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.chars().any(|c| c.is_ascii_alphabetic()))
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Splits a log line into fields: `"quoted"` (with `\"` escapes), `[bracketed]`, or bare.
fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::with_capacity(12);
    let mut chars = line.chars().peekable();
    while let Some(&first) = chars.peek() {
        if first == ' ' || first == '\t' {
            chars.next();
            continue;
        }
        let mut field = String::new();
        match first {
            '"' => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => match chars.next() {
                            Some('"') => field.push('"'),
                            Some(other) => {
                                field.push('\\');
                                field.push(other);
                            }
                            None => return Err("unterminated quoted field".into()),
                        },
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => return Err("unterminated quoted field".into()),
                    }
                }
            }
            '[' => {
                for c in chars.by_ref() {
                    field.push(c);
                    if c == ']' {
                        break;
                    }
                }
                if !field.ends_with(']') {
                    return Err("unterminated [bracketed] field".into());
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '\t' {
                        break;
                    }
                    field.push(c);
                    chars.next();
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Observation, String> {
        parse_line(line, &ImportOptions::default())
    }

    #[test]
    fn absolute_form_request() {
        let o = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "POST https://api.stripe.com/v1/charges HTTP/1.1" 200 1532 "-" "Stripe/v1 PythonBindings/7.0.0""#).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.stripe.com", 443));
        assert_eq!(o.method.as_deref(), Some("POST"));
        assert_eq!(o.path.as_deref(), Some("/v1/charges"));
        assert_eq!(o.status, Some(200));
        assert_eq!(o.bytes_in, 1532);
        assert_eq!(o.caller.as_deref(), Some("10.1.2.3"));
        assert_eq!(o.time_ms, 1_709_633_472_000);
        assert_eq!(o.scheme, Some(crate::Scheme::Https));
        let o = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET http://api.x.com:8080/v1 HTTP/1.1" 200 2 "-" "-""#).unwrap();
        assert_eq!((o.port, o.scheme), (8080, Some(crate::Scheme::Http)));
    }

    /// nginx fills `$remote_user` from any Basic credential, and Stripe-style vendors take the
    /// API key as the user name: such a key is never a discovered caller (the client's address
    /// is), and an error never shows a request's query or user information.
    #[test]
    fn a_key_in_the_log_is_no_caller_and_no_error_text() {
        let o = parse(r#"10.1.2.3 - sk_live_51HqLyjWDarjtT1zdp7dcXZo [05/Mar/2024:10:11:12 +0000] "CONNECT api.stripe.com:443 HTTP/1.1" 200 0 "-" "-""#).unwrap();
        assert_eq!(o.caller.as_deref(), Some("10.1.2.3"));
        let error = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /maps/api/geocode/json?key=AIzaCANARY&address=x HTTP/1.1" 200 2 "-" "-""#).unwrap_err();
        assert!(error.contains("`GET /maps/api/geocode/json?…`"), "{error}");
        let error = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET ftp://user:CANARY@files.x.com/a?t=CANARY HTTP/1.1" 200 2 "-" "-""#).unwrap_err();
        assert!(!error.contains("CANARY"), "{error}");
        assert!(error.contains("ftp://…@files.x.com/a?…"), "{error}");
        assert_eq!(
            super::super::shown_target("ftp://u:pa#ss@h.x.com/a#frag"),
            "ftp://…@h.x.com/a#…"
        );
    }

    #[test]
    fn connect_tunnel() {
        let o = parse(r#"10.1.2.3 - svc-billing [05/Mar/2024:10:11:12 +0000] "CONNECT api.openai.com:443 HTTP/1.1" 200 0 "-" "-""#).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.openai.com", 443));
        assert_eq!(o.path, None);
        assert_eq!(o.caller.as_deref(), Some("svc-billing"));
        // What the tunnel carried is not in the log.
        assert_eq!(o.scheme, None);
    }

    #[test]
    fn host_from_appended_fields() {
        // `... "$http_user_agent" "$host" $upstream_addr $request_time`
        let o = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json HTTP/1.1" 200 90 "-" "twilio-python/8.0" "api.twilio.com" 54.172.60.1:8443 0.120"#).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.twilio.com", 8443));
        assert_eq!(o.scheme, None);
        // `$http_host` with a port, and a float that is not an address.
        let o = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /v1/x HTTP/1.1" 200 90 "-" "curl/8" 0.003 api.example.com:8080"#).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.example.com", 8080));
        // `$ssl_protocol` before `$host` is not a host name.
        let o = parse(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /v1/x HTTP/1.1" 200 90 "-" "curl/8" TLSv1.3 "api.example.com""#).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.example.com", 443));
        for not_a_host in ["TLSv1.2", "SSLv3.0", "tlsv1.3", "10.0.0", "1.1", "0.003"] {
            assert!(!is_dns_name(not_a_host), "{not_a_host}");
        }
        for host in ["api.x.com", "localhost", "a1.b2.io", "tlsv1.example.com"] {
            assert!(is_dns_name(host), "{host}");
        }
        let line = r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /v1/x HTTP/1.1" 200 90 "-" "curl/8" TLSv1.3"#;
        assert!(parse(line).unwrap_err().contains("--host"));
    }

    #[test]
    fn default_host_only_when_the_line_names_none() {
        let options = ImportOptions::with_default_host("internal.example.com:8443").unwrap();
        let o = parse_line(
            r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET /v1/x HTTP/1.1" 200 90"#,
            &options,
        )
        .unwrap();
        assert_eq!((o.host.as_str(), o.port), ("internal.example.com", 8443));
        let o = parse_line(r#"10.1.2.3 - - [05/Mar/2024:10:11:12 +0000] "GET https://api.x.com/v1/x HTTP/1.1" 200 90 "-" "-""#, &options).unwrap();
        assert_eq!(o.host, "api.x.com");
    }

    #[test]
    fn malformed_lines_say_why() {
        let reason = |line: &str| parse(line).unwrap_err();
        assert!(
            reason("garbage").contains("fields"),
            "{}",
            reason("garbage")
        );
        assert!(
            reason(r#"1.2.3.4 - - [bad time] "GET / HTTP/1.1" 200 1 "-" "-""#).contains("time")
        );
        assert!(reason(
            r#"1.2.3.4 - - [05/Mar/2024:10:11:12 +0000] "GET /v1 HTTP/1.1" 200 1 "-" "-""#
        )
        .contains("--host"));
        assert!(reason(
            r#"1.2.3.4 - - [05/Mar/2024:10:11:12 +0000] "\x16\x03\x01" 400 150 "-" "-""#
        )
        .contains("request"));
        assert!(
            reason(r#"1.2.3.4 - - [05/Mar/2024:10:11:12 +0000] "GET / HTTP/1.1 200 1"#)
                .contains("unterminated")
        );
    }
}
