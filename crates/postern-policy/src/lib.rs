//! # postern-policy
//!
//! The sans-IO policy core of Postern. It answers two questions about a
//! request to a third-party API:
//!
//! 1. **Which operation is this?** [`OperationTable`] maps `(method, path)`
//!    to an operation id declared in the configuration, using
//!    [`PathTemplate`]s such as `/v1/charges/{id}` or
//!    `/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`. The most
//!    specific template (most literal characters) wins; `HEAD` falls back to
//!    `GET` when no `HEAD` operation matches.
//! 2. **May this caller call it now?** [`PolicyEngine`] compiles grants (and
//!    optional custom Cedar policies) and returns a [`Decision`] with a
//!    [`Reason`].
//!
//! 3. **May this caller reach this host through the forward proxy?** [`HostPolicy`]
//!    applies smokescreen-style modes (enforce / report / open), global allow and deny lists
//!    and one-level wildcards to destinations no integration claims.
//!
//! ## What this crate is not
//!
//! It does no IO: no files, sockets, environment or clocks. The caller reads
//! the policy file and passes its text, reads the clock and passes `hour` and
//! `weekday`, and reads the socket and passes `source_ip`. It never sees hyper
//! or `http` types — methods and paths are `&str`. It keeps no per-request
//! state and does not log. That is what makes it fast to test and fuzz.
//!
//! ## The Cedar model
//!
//! Everything lives in the namespace `Postern`:
//!
//! - entity types `Caller`, `Integration` and `Operation`; an `Operation` is
//!   `in` its `Integration`, and its uid is
//!   `Postern::Operation::"<integration>/<operation id>"`;
//! - one action, `Postern::Action::"call"`;
//! - the context record of every request:
//!   `hour: Long` (0-23, UTC), `weekday: Long` (0 = Monday .. 6 = Sunday),
//!   `request_bytes: Long`, `method: String`, `source_ip: ipaddr` (use
//!   `context.source_ip.isInRange(ip("10.0.0.0/8"))`), and `caller`,
//!   `integration`, `operation: String`.
//!
//! Grant number `N` of the configuration compiles to one policy with id
//! `grant-N`:
//!
//! ```cedar
//! @id("grant-0")
//! permit(principal == Postern::Caller::"checkout", action == Postern::Action::"call",
//!        resource == Postern::Operation::"stripe/create_charge");
//! ```
//!
//! A grant of `"*"` uses `resource in Postern::Integration::"stripe"`; a grant
//! of several operations uses `resource in` the integration plus
//! `when { [..].contains(resource) }`, so it still has a single id.
//!
//! Custom policies are ordinary Cedar, for example
//!
//! ```cedar
//! @id("no-night-calls")
//! forbid(principal, action, resource) when { context.hour < 6 };
//! forbid(principal, action, resource in Postern::Integration::"stripe")
//!     unless { context.request_bytes < 1000 };
//! ```
//!
//! A policy's id is its `@id` annotation, or `custom-N` for the N-th policy
//! of the file (counting from 0) when it has none. Custom policies are
//! validated against the schema (see [`PolicyEngine::compile`]), so
//! `context.hourr` is rejected at load time with Cedar's message and a
//! `line:column` position.
//!
//! ## Decisions
//!
//! Deny is the default; any applicable `forbid` wins over every `permit`
//! (Cedar semantics). The [`Reason`] names the policy that determined the
//! decision. Postern fails closed where Cedar would not: a `forbid` whose
//! evaluation errors counts as applying.
//!
//! Without custom policies a decision depends only on (caller, operation),
//! so [`PolicyEngine::compile`] asks Cedar once per granted pair and
//! `authorize` becomes a hash lookup. With custom policies Cedar runs per
//! request; entities are built once at compile time and only the request and
//! its context are built per call. [`PolicyEngine::depends_on_context`] says
//! which mode is in use.

/// A table built from the configuration (or the vault) and read on every call: a caller can only
/// look keys up, never insert them, so it hashes with foldhash (seeded per map) rather than
/// SipHash, which costs several times as much per lookup for flood resistance such a table does
/// not need. Used here and by the gateway's runtime.
pub type LookupMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
mod authorization;
mod cedar_model;
mod error;
mod host_policy;
mod operation_table;
mod path_template;

pub use authorization::{AuthzRequest, Decision, GrantSpec, IntegrationOps, PolicyEngine, Reason};
pub use error::PolicyError;
pub use host_policy::{normalize_host, HostDecision, HostMode, HostPattern, HostPolicy};
pub use operation_table::{MatchedOperation, OperationTable};
pub use path_template::PathTemplate;
