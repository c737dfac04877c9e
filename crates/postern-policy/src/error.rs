//! The one error type of this crate. Every message names the offending thing
//! and says how to fix it, because these errors end up in front of operators
//! at config-load time.

/// Everything that can go wrong while building an [`crate::OperationTable`] or
/// compiling a [`crate::PolicyEngine`]. Nothing goes wrong at decision time:
/// `find` and `authorize` are infallible.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A path template could not be parsed.
    #[error("invalid path template `{template}`: {problem}")]
    InvalidPathTemplate { template: String, problem: String },

    /// An operation's HTTP method is not an uppercase token.
    #[error("operation `{operation}` has method `{method}`; write the HTTP method in uppercase ASCII letters, e.g. `GET` or `POST`")]
    InvalidMethod { operation: String, method: String },

    /// Two operations declare the same method and template, so a request could
    /// not be attributed to one of them.
    #[error("operations `{first}` and `{second}` both declare `{method} {template}`; remove one or make the templates differ")]
    DuplicateRoute {
        method: String,
        template: String,
        first: String,
        second: String,
    },

    /// A caller name is listed twice.
    #[error("caller `{caller}` is declared more than once; caller names must be unique")]
    DuplicateCaller { caller: String },

    /// An integration name is listed twice.
    #[error(
        "integration `{integration}` is declared more than once; integration names must be unique"
    )]
    DuplicateIntegration { integration: String },

    /// An operation id is listed twice within one integration.
    #[error("integration `{integration}` declares operation `{operation}` more than once; operation ids must be unique within an integration")]
    DuplicateOperation {
        integration: String,
        operation: String,
    },

    /// A grant names a caller that is not declared.
    #[error("a grant names caller `{caller}`, which is not declared; declare the caller or fix the grant")]
    UnknownCaller { caller: String },

    /// A grant names an integration that is not declared.
    #[error("the grant for caller `{caller}` names integration `{integration}`, which is not declared; declare the integration or fix the grant")]
    UnknownIntegration { caller: String, integration: String },

    /// A grant names an operation its integration does not declare.
    #[error("the grant for caller `{caller}` names operation `{operation}`, which integration `{integration}` does not declare; use one of its operation ids or \"*\"")]
    UnknownOperation {
        caller: String,
        integration: String,
        operation: String,
    },

    /// A grant lists no operations at all.
    #[error("the grant for caller `{caller}` on integration `{integration}` lists no operations; list operation ids, or \"*\" for all of them")]
    EmptyGrant { caller: String, integration: String },

    /// The custom policy text is not valid Cedar. `message` carries Cedar's
    /// diagnostics with `line:column` positions in the custom policy text.
    #[error("custom policies do not parse: {message}")]
    CustomPolicySyntax { message: String },

    /// The custom policies parse but do not type-check against the Postern
    /// Cedar schema (e.g. `context.hourr`). `message` carries Cedar's
    /// diagnostics with `line:column` positions in the custom policy text.
    #[error("custom policies do not validate against the Postern schema: {message}")]
    CustomPolicyValidation { message: String },

    /// The custom policy text contains a template (`?principal` / `?resource`).
    #[error("custom policy `{policy_id}` is a template; Postern does not link templates, write a static policy instead")]
    CustomPolicyTemplate { policy_id: String },

    /// Two policies end up with the same id.
    #[error("policy id `{policy_id}` is used twice; give each custom policy a unique `@id(\"...\")` (ids `grant-N` are reserved for grants)")]
    DuplicatePolicyId { policy_id: String },

    /// Building the Cedar model failed for a reason that indicates a bug in
    /// this crate rather than in the configuration.
    #[error("internal error while building the Cedar model (a bug in postern-policy): {message}")]
    Internal { message: String },
}
