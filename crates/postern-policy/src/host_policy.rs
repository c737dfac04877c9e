//! Forward-proxy host policy, in the spirit of Stripe's smokescreen: which destinations a caller
//! may reach through `CONNECT` or an absolute-form request when no registered integration claims
//! the host.
//!
//! The order of checks is fixed and documented (docs/PROXY.md):
//!
//! 1. the port must be in `allowed_ports` (`port_not_allowed`);
//! 2. a host on the global deny list is refused in every mode (`host_denied`); a deny wildcard
//!    `*.example.com` covers `example.com` and every name below it, at any depth;
//! 3. a host on the global allow list or the caller's own list passes (`host_allowed`);
//! 4. otherwise the caller's mode decides: `enforce` refuses (`host_not_allowed`), `report`
//!    passes and marks the call (`host_not_allowed_reported`), `open` passes (`open_mode`).
//!
//! Patterns are lowercase host names, or `*.` + a name for exactly one extra label.
//! Matching ignores case and one trailing dot of the host.

use std::collections::HashMap;

/// A host pattern: an exact name or a one-level wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    OneLevel(String),
}

impl HostPattern {
    /// Parses a pattern already validated by the config (`name` or `*.name`).
    pub fn new(pattern: &str) -> HostPattern {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.strip_prefix('*') {
            Some(suffix) => HostPattern::OneLevel(suffix.to_string()),
            None => HostPattern::Exact(pattern),
        }
    }

    /// Deny-list matching, which errs wide: `*.example.com` covers `example.com` itself and
    /// names any number of labels below it (`a.b.example.com`), so adding a label cannot slip
    /// past a deny entry. An exact entry matches exactly.
    pub fn covers(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::OneLevel(suffix) => {
                host == &suffix[1..] || host.ends_with(suffix.as_str())
            }
        }
    }

    /// Whether `host` (already normalised by [`normalize_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::OneLevel(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// Lowercase, without one trailing dot: the form patterns are matched against. An IPv6 address
/// (without brackets) is written compressed, and an IPv4-mapped one (`::ffff:7f00:1`) as the
/// IPv4 address it reaches (`127.0.0.1`), so a deny entry for either form covers both.
pub fn normalize_host(host: &str) -> String {
    if let Ok(address) = host.parse::<std::net::Ipv6Addr>() {
        return match address.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => address.to_string(),
        };
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// A caller's proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    Enforce,
    Report,
    Open,
}

/// What the host policy says about one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDecision {
    pub allowed: bool,
    /// Stable code: `host_allowed`, `open_mode`, `host_not_allowed_reported` (allowed),
    /// `host_denied`, `host_not_allowed`, `port_not_allowed` (refused).
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
struct CallerRule {
    mode: HostMode,
    allow: Vec<HostPattern>,
}

/// The compiled host policy: global lists, ports, a default mode and per-caller rules.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    default_mode: HostMode,
    allow: Vec<HostPattern>,
    deny: Vec<HostPattern>,
    ports: Vec<u16>,
    callers: HashMap<String, CallerRule>,
}

impl HostPolicy {
    pub fn new(
        default_mode: HostMode,
        allow: &[String],
        deny: &[String],
        ports: &[u16],
    ) -> HostPolicy {
        HostPolicy {
            default_mode,
            allow: allow.iter().map(|p| HostPattern::new(p)).collect(),
            deny: deny.iter().map(|p| HostPattern::new(p)).collect(),
            ports: ports.to_vec(),
            callers: HashMap::new(),
        }
    }

    /// Sets a caller's own mode (`None`: the default mode) and allow list.
    pub fn caller(&mut self, name: &str, mode: Option<HostMode>, allow: &[String]) {
        self.callers.insert(
            name.to_string(),
            CallerRule {
                mode: mode.unwrap_or(self.default_mode),
                allow: allow.iter().map(|p| HostPattern::new(p)).collect(),
            },
        );
    }

    /// The decision for `caller` reaching `host:port`.
    pub fn decide(&self, caller: &str, host: &str, port: u16) -> HostDecision {
        let refuse = |reason| HostDecision {
            allowed: false,
            reason,
        };
        let pass = |reason| HostDecision {
            allowed: true,
            reason,
        };
        if !self.ports.contains(&port) {
            return refuse("port_not_allowed");
        }
        let host = normalize_host(host);
        if self.deny.iter().any(|p| p.covers(&host)) {
            return refuse("host_denied");
        }
        let rule = self.callers.get(caller);
        let caller_allows = rule.is_some_and(|r| r.allow.iter().any(|p| p.matches(&host)));
        if caller_allows || self.allow.iter().any(|p| p.matches(&host)) {
            return pass("host_allowed");
        }
        match rule.map_or(self.default_mode, |r| r.mode) {
            HostMode::Enforce => refuse("host_not_allowed"),
            HostMode::Report => pass("host_not_allowed_reported"),
            HostMode::Open => pass("open_mode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HostPolicy {
        let mut policy = HostPolicy::new(
            HostMode::Enforce,
            &["*.allowed.example".into(), "api.global.example".into()],
            &["*.evil.example".into(), "pastebin.com".into()],
            &[443],
        );
        policy.caller("enforcer", None, &["api.github.com".into()]);
        policy.caller("reporter", Some(HostMode::Report), &[]);
        policy.caller("opener", Some(HostMode::Open), &[]);
        policy
    }

    #[test]
    fn one_level_wildcards_match_exactly_one_label() {
        let pattern = HostPattern::new("*.example.com");
        assert!(pattern.matches("a.example.com"));
        assert!(!pattern.matches("a.b.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches("aexample.com"));
        assert!(!pattern.matches(".example.com"));
        assert!(HostPattern::new("API.Example.com").matches("api.example.com"));
    }

    #[test]
    fn enforce_mode_passes_only_listed_hosts() {
        let policy = policy();
        assert_eq!(
            policy.decide("enforcer", "api.github.com", 443).reason,
            "host_allowed"
        );
        assert_eq!(
            policy.decide("enforcer", "API.GITHUB.COM.", 443).reason,
            "host_allowed"
        );
        assert_eq!(
            policy.decide("enforcer", "x.allowed.example", 443).reason,
            "host_allowed"
        );
        assert_eq!(
            policy.decide("enforcer", "api.global.example", 443).reason,
            "host_allowed"
        );
        let refused = policy.decide("enforcer", "example.org", 443);
        assert!(!refused.allowed);
        assert_eq!(refused.reason, "host_not_allowed");
        // Another caller's list does not apply.
        assert!(!policy.decide("reporter-x", "api.github.com", 443).allowed);
    }

    #[test]
    fn report_and_open_modes_pass_but_deny_list_always_wins() {
        let policy = policy();
        let reported = policy.decide("reporter", "example.org", 443);
        assert!(reported.allowed);
        assert_eq!(reported.reason, "host_not_allowed_reported");
        assert_eq!(
            policy.decide("opener", "example.org", 443).reason,
            "open_mode"
        );
        for caller in ["enforcer", "reporter", "opener"] {
            let denied = policy.decide(caller, "x.evil.example", 443);
            assert!(!denied.allowed);
            assert_eq!(denied.reason, "host_denied");
            assert_eq!(
                policy.decide(caller, "pastebin.com", 443).reason,
                "host_denied"
            );
        }
    }

    /// An address is denied in every spelling of it: IPv6 compressed or not, and an IPv4-mapped
    /// IPv6 address as the IPv4 address it reaches.
    #[test]
    fn addresses_are_denied_in_every_spelling() {
        let policy = HostPolicy::new(
            HostMode::Open,
            &[],
            &["127.0.0.1".into(), "::1".into()],
            &[443],
        );
        for host in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::FFFF:7f00:1",
            "0:0:0:0:0:0:0:1",
            "::1",
        ] {
            assert_eq!(
                policy.decide("x", host, 443).reason,
                "host_denied",
                "{host}"
            );
        }
        assert_eq!(normalize_host("2001:DB8:0::1"), "2001:db8::1");
        assert!(policy.decide("x", "::2", 443).allowed);
    }

    #[test]
    fn ports_are_checked_first() {
        let policy = policy();
        let refused = policy.decide("opener", "example.org", 22);
        assert!(!refused.allowed);
        assert_eq!(refused.reason, "port_not_allowed");
        assert!(!policy.decide("enforcer", "api.github.com", 80).allowed);
    }

    #[test]
    fn unknown_callers_get_the_default_mode() {
        let open = HostPolicy::new(HostMode::Open, &[], &[], &[443]);
        assert!(open.decide("anyone", "example.org", 443).allowed);
        let enforce = HostPolicy::new(HostMode::Enforce, &[], &[], &[443]);
        assert!(!enforce.decide("anyone", "example.org", 443).allowed);
    }
}
