//! The Cedar side of Postern: the schema, how names become entity uids, how
//! grants become policy text, and how Cedar diagnostics become messages with
//! `line:column` positions.
//!
//! Nothing outside this module spells a Cedar type name.

use std::fmt::Write as _;
use std::str::FromStr;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};

use crate::PolicyError;

/// The Cedar schema every policy is validated against.
pub(crate) const SCHEMA_TEXT: &str = r#"
namespace Postern {
  entity Caller;
  entity Integration;
  entity Operation in [Integration];
  action "call" appliesTo {
    principal: [Caller],
    resource: [Operation],
    context: {
      hour: Long,
      weekday: Long,
      request_bytes: Long,
      method: String,
      source_ip: ipaddr,
      caller: String,
      integration: String,
      operation: String
    }
  };
}
"#;

pub(crate) fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA_TEXT)
        .map(|(schema, _warnings)| schema)
        .map_err(|error| PolicyError::Internal {
            message: format!("the built-in schema does not parse: {error}"),
        })
}

/// Which kind of Postern entity a uid names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EntityKind {
    Caller,
    Integration,
    Operation,
    Action,
}

impl EntityKind {
    fn type_name(self) -> &'static str {
        match self {
            EntityKind::Caller => "Postern::Caller",
            EntityKind::Integration => "Postern::Integration",
            EntityKind::Operation => "Postern::Operation",
            EntityKind::Action => "Postern::Action",
        }
    }
}

/// Builds a uid without going through Cedar's parser, so any name (quotes,
/// slashes, unicode) is representable; `Display` escapes it correctly.
pub(crate) fn entity_uid(kind: EntityKind, id: &str) -> Result<EntityUid, PolicyError> {
    let type_name =
        EntityTypeName::from_str(kind.type_name()).map_err(|error| PolicyError::Internal {
            message: format!("entity type `{}` does not parse: {error}", kind.type_name()),
        })?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

pub(crate) fn operation_entity_id(integration: &str, operation: &str) -> String {
    format!("{integration}/{operation}")
}

pub(crate) fn call_action() -> Result<EntityUid, PolicyError> {
    entity_uid(EntityKind::Action, "call")
}

/// What a grant's resource is.
pub(crate) enum GrantScope<'a> {
    OneOperation(&'a EntityUid),
    /// Several operations of one integration, still one policy so the grant
    /// keeps a single id.
    SomeOperations {
        integration: &'a EntityUid,
        operations: &'a [&'a EntityUid],
    },
    WholeIntegration(&'a EntityUid),
}

/// Policy text for one grant, e.g.
/// `@id("grant-0") permit(principal == Postern::Caller::"c", action == Postern::Action::"call", resource == Postern::Operation::"i/op");`
/// A grant of several operations becomes
/// `permit(..., resource in Postern::Integration::"i") when { [Postern::Operation::"i/a", ...].contains(resource) };`
pub(crate) fn grant_policy_text(
    policy_id: &str,
    caller: &EntityUid,
    action: &EntityUid,
    scope: GrantScope<'_>,
) -> String {
    let (resource, condition) = match scope {
        GrantScope::OneOperation(operation) => (format!("resource == {operation}"), String::new()),
        GrantScope::SomeOperations {
            integration,
            operations,
        } => {
            let list = operations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            (
                format!("resource in {integration}"),
                format!(" when {{ [{list}].contains(resource) }}"),
            )
        }
        GrantScope::WholeIntegration(integration) => {
            (format!("resource in {integration}"), String::new())
        }
    };
    format!(
        "@id({policy_id:?})\npermit(principal == {caller}, action == {action}, {resource}){condition};\n"
    )
}

/// Renders Cedar diagnostics (anything `miette::Diagnostic`, through Cedar's
/// own FFI conversion) as `line:column: message (help)` lines, positions
/// counted in `source`.
pub(crate) fn describe_diagnostics(
    source: &str,
    errors: impl IntoIterator<Item = DetailedError>,
) -> String {
    let mut out = String::new();
    for error in errors {
        describe_one(source, &error, &mut out);
    }
    out
}

fn describe_one(source: &str, error: &DetailedError, out: &mut String) {
    if !out.is_empty() {
        out.push_str("; ");
    }
    if let Some(label) = error.source_locations.first() {
        let (line, column) = line_column(source, label.loc.start);
        let _ = write!(out, "{line}:{column}: ");
    }
    out.push_str(&error.message);
    if let Some(label) = error
        .source_locations
        .first()
        .and_then(|label| label.label.as_deref())
    {
        let _ = write!(out, " [{label}]");
    }
    if let Some(help) = &error.help {
        let _ = write!(out, " (help: {help})");
    }
    for related in &error.related {
        describe_one(source, related, out);
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(source: &str, byte_offset: usize) -> (usize, usize) {
    let mut offset = byte_offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
