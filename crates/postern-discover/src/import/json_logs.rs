//! JSON access logs, one object per line: nginx (`log_format … escape=json`) and Envoy/Istio.
//! Values may be strings or numbers; `""`, `"-"` and `null` mean absent. The keys read are
//! listed on each parser (first present wins) and in docs/DISCOVERY.md.

use serde_json::{Map, Value};

use super::{
    address_without_port, observation, parse_epoch_seconds, parse_nginx_local_time, parse_rfc3339,
    split_absolute_url, split_host_port, ImportOptions,
};
use crate::{Observation, Scheme};

type Object = Map<String, Value>;

fn object(line: &str) -> Result<Object, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("not a JSON object".into()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// The first of `keys` present with a value other than `""`, `"-"`, `null`.
fn text(object: &Object, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match object.get(*key)? {
        Value::String(s) if !s.is_empty() && s != "-" => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn number<T: std::str::FromStr>(object: &Object, keys: &[&str]) -> Option<T> {
    text(object, keys).and_then(|t| t.parse().ok())
}

/// A host field (`api.x.com`, `api.x.com:8443`) → (host, explicit port).
fn host_field(object: &Object, keys: &[&str]) -> Option<(String, Option<u16>)> {
    let value = text(object, keys)?;
    let (host, port) = split_host_port(&value)?;
    super::is_host(&host).then_some((host, port))
}

/// A `scheme` field: `http` or `https` (`ws`, `wss` alike); anything else is not one.
fn scheme_field(object: &Object) -> Option<Scheme> {
    Scheme::parse(&text(object, &["scheme", ":scheme"])?)
}

/// The port of an `IP:port` field such as `$upstream_addr` or Envoy's `upstream_host`
/// (the first of a comma-separated list).
fn address_port(object: &Object, keys: &[&str]) -> Option<u16> {
    let value = text(object, keys)?;
    split_host_port(value.split(',').next()?)?.1
}

/// `METHOD TARGET HTTP/x` → (method, target).
fn request_line(line: &str) -> Option<(String, String)> {
    let mut parts = line.split_ascii_whitespace();
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// nginx JSON. Keys: destination `host`, `http_host`, `proxy_host` (or the host of an
/// absolute-form `request`); port from it, else `upstream_addr`, else `scheme`, else 443;
/// `request_method`/`method`, `request_uri`/`uri` (else from `request`); `status`;
/// bytes in `bytes_sent`/`body_bytes_sent`; bytes out `request_length`; time `time_iso8601`,
/// `@timestamp`, `timestamp`, `time_local` or `msec`; caller `remote_user`, else `remote_addr`.
pub(super) fn parse_nginx_json(line: &str, options: &ImportOptions) -> Result<Observation, String> {
    let object = object(line)?;
    let time = time(
        &object,
        &["time_iso8601", "@timestamp", "timestamp"],
        &["time_local"],
        &["msec"],
    )
    .ok_or("no time: add time_iso8601, time_local or msec to the log_format")?;
    let request = text(&object, &["request"]).and_then(|r| request_line(&r));
    let absolute = request
        .as_ref()
        .and_then(|(_, target)| split_absolute_url(target));
    let logged_scheme = scheme_field(&object);
    let scheme = logged_scheme.or_else(|| absolute.as_ref().map(|(_, _, scheme)| *scheme));
    let scheme_port = logged_scheme.map(Scheme::default_port);
    let destination = match host_field(&object, &["host", "http_host", "proxy_host"]) {
        Some((host, port)) => {
            let port = port
                .or_else(|| absolute.as_ref().map(|(d, _, _)| d.1))
                .or_else(|| address_port(&object, &["upstream_addr"]))
                .or(scheme_port)
                .unwrap_or(443);
            (host, port)
        }
        None => match &absolute {
            Some((destination, _, _)) => destination.clone(),
            None => options.default_host.clone().ok_or(
                "no destination: the line has no host, http_host or absolute-form request; \
                 add $host to the log_format or pass --host",
            )?,
        },
    };
    let mut observation = observation(destination, time);
    observation.scheme = scheme;
    observation.method = text(&object, &["request_method", "method"])
        .or_else(|| request.as_ref().map(|(method, _)| method.clone()));
    observation.path =
        text(&object, &["request_uri", "uri"]).or_else(|| match (&absolute, &request) {
            (Some((_, path, _)), _) => Some(path.clone()),
            (None, Some((_, target))) if target.starts_with('/') => Some(target.clone()),
            _ => None,
        });
    observation.status = number(&object, &["status"]);
    observation.bytes_in = number(&object, &["bytes_sent", "body_bytes_sent"]).unwrap_or(0);
    observation.bytes_out = number(&object, &["request_length"]).unwrap_or(0);
    observation.caller = super::caller_of(
        text(&object, &["remote_user"]).as_deref(),
        text(&object, &["remote_addr"]).as_deref(),
    );
    Ok(observation)
}

/// Envoy / Istio JSON. Keys: destination `authority`/`:authority`, else
/// `requested_server_name` (SNI, TLS pass-through), else the host of an Istio cluster name
/// `outbound|443||api.x.com` in `upstream_cluster`, else `upstream_host`; port from the
/// authority, else the cluster name, else `upstream_host`, else 443; path `path`/`:path` (the
/// path sent upstream, after any rewrite), else `x-envoy-original-path`; method
/// `method`/`:method`; status `response_code` (0 = none); bytes out `bytes_received`, bytes in
/// `bytes_sent`; time `start_time`/`timestamp`; caller the address of
/// `downstream_remote_address`.
pub(super) fn parse_envoy(line: &str, options: &ImportOptions) -> Result<Observation, String> {
    let object = object(line)?;
    let time = time(
        &object,
        &["start_time", "timestamp", "@timestamp"],
        &[],
        &[],
    )
    .ok_or("no time: add \"start_time\": \"%START_TIME%\" to the access log format")?;
    let cluster = text(&object, &["upstream_cluster"]).and_then(|cluster| {
        let mut parts = cluster.split('|');
        let (direction, port, _, host) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (direction == "outbound" && super::is_host(host))
            .then(|| (host.to_owned(), port.parse::<u16>().ok()))
    });
    let upstream_host = host_field(&object, &["upstream_host"]);
    let upstream_port = upstream_host.as_ref().and_then(|(_, port)| *port);
    let sni = host_field(&object, &["requested_server_name"]);
    // A `scheme` logged (`%REQ(:SCHEME)%`) says how the upstream was spoken to; else an SNI
    // says TLS.
    let scheme = scheme_field(&object).or(sni.as_ref().map(|_| Scheme::Https));
    let named = host_field(&object, &["authority", ":authority"])
        .or(sni)
        .or_else(|| cluster.clone());
    let destination = match named {
        Some((host, port)) => {
            let port = port
                .or_else(|| cluster.as_ref().and_then(|(_, port)| *port))
                .or(upstream_port)
                .unwrap_or(443);
            (host, port)
        }
        None => match upstream_host {
            Some((host, port)) => (host, port.unwrap_or(443)),
            None => options.default_host.clone().ok_or(
                "no destination: no authority, requested_server_name, upstream_cluster or \
                 upstream_host; pass --host",
            )?,
        },
    };
    let mut observation = observation(destination, time);
    observation.scheme = scheme;
    observation.method = text(&object, &["method", ":method"]);
    observation.path = text(
        &object,
        &[
            "path",
            ":path",
            "x-envoy-original-path",
            "x_envoy_original_path",
        ],
    );
    observation.status = number(&object, &["response_code"]).filter(|status| *status != 0);
    observation.bytes_out = number(&object, &["bytes_received"]).unwrap_or(0);
    observation.bytes_in = number(&object, &["bytes_sent"]).unwrap_or(0);
    observation.caller = text(
        &object,
        &[
            "downstream_remote_address",
            "downstream_direct_remote_address",
        ],
    )
    .map(|address| address_without_port(&address));
    Ok(observation)
}

fn time(object: &Object, rfc3339: &[&str], nginx_local: &[&str], epoch: &[&str]) -> Option<i64> {
    text(object, rfc3339)
        .and_then(|t| parse_rfc3339(&t))
        .or_else(|| text(object, nginx_local).and_then(|t| parse_nginx_local_time(&t)))
        .or_else(|| text(object, epoch).and_then(|t| parse_epoch_seconds(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nginx(line: &str) -> Observation {
        parse_nginx_json(line, &ImportOptions::default()).unwrap()
    }

    fn envoy(line: &str) -> Observation {
        parse_envoy(line, &ImportOptions::default()).unwrap()
    }

    #[test]
    fn nginx_json_lines() {
        let o = nginx(
            r#"{"time_iso8601":"2024-03-05T10:11:12+00:00","remote_addr":"10.1.2.3","remote_user":"","request_method":"POST","request_uri":"/v1/chat/completions?x=1","status":"200","bytes_sent":"2048","request_length":"512","host":"api.openai.com","upstream_addr":"104.18.6.192:443"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("api.openai.com", 443));
        assert_eq!(o.method.as_deref(), Some("POST"));
        assert_eq!(o.path.as_deref(), Some("/v1/chat/completions?x=1"));
        assert_eq!((o.status, o.bytes_out, o.bytes_in), (Some(200), 512, 2048));
        assert_eq!(o.caller.as_deref(), Some("10.1.2.3"));
        assert_eq!(o.time_ms, 1_709_633_472_000);

        // Numbers unquoted, `msec`, a port from upstream_addr, an absolute-form request only.
        let o = nginx(
            r#"{"msec":"1709633472.250","request":"GET https://hooks.slack.com/services/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 HTTP/1.1","status":404,"body_bytes_sent":9,"remote_user":"svc-alerts"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("hooks.slack.com", 443));
        assert_eq!(o.method.as_deref(), Some("GET"));
        assert_eq!(
            o.path.as_deref(),
            Some("/services/T024BE7LD/B024BE7LH/xJ2fQ8mR4tB7nW1kL9pD3sV6")
        );
        assert_eq!(
            (o.status, o.bytes_in, o.time_ms),
            (Some(404), 9, 1_709_633_472_250)
        );
        assert_eq!(o.caller.as_deref(), Some("svc-alerts"));

        let o = nginx(
            r#"{"time_local":"05/Mar/2024:10:11:12 +0000","http_host":"api.github.com","upstream_addr":"140.82.112.6:8443","request":"GET /repos/octocat/Hello-World/issues/1347 HTTP/1.1","status":"200"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("api.github.com", 8443));
        assert_eq!(
            o.path.as_deref(),
            Some("/repos/octocat/Hello-World/issues/1347")
        );
    }

    /// A scheme comes from what the line says (a `scheme` key, an absolute-form request, an
    /// SNI), never from a port.
    #[test]
    fn schemes_are_what_the_line_says() {
        let t = r#""time_iso8601":"2024-03-05T10:11:12+00:00""#;
        let scheme = |line: String| nginx(&line).scheme;
        assert_eq!(
            scheme(format!(r#"{{{t},"host":"a.com","scheme":"http"}}"#)),
            Some(Scheme::Http)
        );
        assert_eq!(
            scheme(format!(r#"{{{t},"host":"a.com:8443","scheme":"HTTPS"}}"#)),
            Some(Scheme::Https)
        );
        assert_eq!(
            scheme(format!(
                r#"{{{t},"request":"GET http://a.com:8080/x HTTP/1.1"}}"#
            )),
            Some(Scheme::Http)
        );
        assert_eq!(scheme(format!(r#"{{{t},"host":"a.com:443"}}"#)), None);
        assert_eq!(
            scheme(format!(r#"{{{t},"host":"a.com","scheme":"ftp"}}"#)),
            None
        );
        let t = r#""start_time":"2024-03-05T10:11:12Z""#;
        let scheme = |line: String| envoy(&line).scheme;
        assert_eq!(
            scheme(format!(r#"{{{t},"requested_server_name":"a.com"}}"#)),
            Some(Scheme::Https)
        );
        assert_eq!(
            scheme(format!(
                r#"{{{t},"authority":"a.com","requested_server_name":"a.com",":scheme":"http"}}"#
            )),
            Some(Scheme::Http)
        );
        assert_eq!(scheme(format!(r#"{{{t},"authority":"a.com"}}"#)), None);
    }

    #[test]
    fn nginx_json_malformed() {
        let reason = |line: &str| parse_nginx_json(line, &ImportOptions::default()).unwrap_err();
        assert!(reason("{not json").starts_with("not JSON"));
        assert!(reason("[1,2]").contains("object"));
        assert!(reason(r#"{"host":"a.com"}"#).contains("no time"));
        assert!(reason(r#"{"msec":"1","request_uri":"/x"}"#).contains("--host"));
    }

    #[test]
    fn envoy_lines() {
        let o = envoy(
            r#"{"start_time":"2024-03-05T10:11:12.345Z","method":"POST","path":"/v1/charges","x-envoy-original-path":"/stripe/v1/charges","protocol":"HTTP/1.1","response_code":200,"bytes_received":120,"bytes_sent":1500,"authority":"api.stripe.com","upstream_host":"34.200.27.109:443","downstream_remote_address":"10.1.2.3:51234"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("api.stripe.com", 443));
        assert_eq!(o.path.as_deref(), Some("/v1/charges"));
        assert_eq!((o.bytes_out, o.bytes_in), (120, 1500));
        assert_eq!(o.caller.as_deref(), Some("10.1.2.3"));
        assert_eq!(o.time_ms, 1_709_633_472_345);

        // Istio TLS pass-through: no HTTP, only SNI and the cluster name.
        let o = envoy(
            r#"{"start_time":"2024-03-05T10:11:12.345Z","method":null,"path":null,"response_code":0,"bytes_received":3000,"bytes_sent":9000,"authority":null,"requested_server_name":"api.twilio.com","upstream_cluster":"outbound|443||api.twilio.com","upstream_host":"54.172.60.1:443","downstream_remote_address":"[2001:db8::5]:40000"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("api.twilio.com", 443));
        assert_eq!((o.method, o.path, o.status), (None, None, None));
        assert_eq!(o.caller.as_deref(), Some("2001:db8::5"));

        let o = envoy(
            r#"{"start_time":"2024-03-05T10:11:12Z","upstream_cluster":"outbound|8443||vendor.example.com","upstream_host":"-"}"#,
        );
        assert_eq!((o.host.as_str(), o.port), ("vendor.example.com", 8443));
        let o = envoy(
            r#"{"start_time":"2024-03-05T10:11:12Z",":authority":"api.x.com:9443",":method":"GET","x-envoy-original-path":"/a"}"#,
        );
        assert_eq!(
            (o.host.as_str(), o.port, o.method.as_deref()),
            ("api.x.com", 9443, Some("GET"))
        );
        let o = envoy(r#"{"start_time":"2024-03-05T10:11:12Z","upstream_host":"52.1.2.3:8080"}"#);
        assert_eq!((o.host.as_str(), o.port), ("52.1.2.3", 8080));
    }

    #[test]
    fn envoy_malformed() {
        let reason = |line: &str| parse_envoy(line, &ImportOptions::default()).unwrap_err();
        assert!(reason(r#"{"authority":"a.com"}"#).contains("start_time"));
        assert!(
            reason(r#"{"start_time":"2024-03-05T10:11:12Z","method":"GET"}"#)
                .contains("no destination")
        );
    }
}
