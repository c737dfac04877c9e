//! Grants and custom policies compiled to Cedar, and the decision per request.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    AuthorizationError, Authorizer, Context, Effect, Entities, Entity, EntityUid, Policy, PolicyId,
    PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::cedar_model::{
    self, call_action, describe_diagnostics, entity_uid, grant_policy_text, operation_entity_id,
    EntityKind, GrantScope,
};
use crate::{LookupMap, PolicyError};

/// The operation wildcard in [`GrantSpec::operations`].
const EVERY_OPERATION: &str = "*";

/// One grant from the configuration: `caller` may call `operations` of
/// `integration`. `"*"` in `operations` means every operation of the
/// integration, including ones declared later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub caller: String,
    pub integration: String,
    pub operations: Vec<String>,
}

/// The operation ids an integration declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationOps {
    pub integration: String,
    pub operations: Vec<String>,
}

/// Everything a decision may depend on. The caller of this crate reads the
/// clock and the socket; this crate only sees the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzRequest<'a> {
    pub caller: &'a str,
    pub integration: &'a str,
    pub operation: &'a str,
    pub method: &'a str,
    /// Hour of day, 0-23, UTC.
    pub hour: u8,
    /// Day of week, 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    pub request_bytes: u64,
    /// The client's IP address, e.g. `10.0.0.7` or `::1`.
    pub source_ip: &'a str,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A permit policy (normally a grant, `grant-N`) allowed it and no forbid
    /// policy applied.
    Granted { policy_id: Arc<str> },
    /// No permit policy applied: deny by default.
    NotGranted,
    /// A forbid policy applied (or failed to evaluate, which counts as
    /// applying: Postern fails closed).
    Forbidden { policy_id: Arc<str> },
}

impl Reason {
    /// The policy that decided: `grant-N` or a custom policy's id; `None` for the default deny.
    pub fn policy_id(&self) -> Option<&Arc<str>> {
        match self {
            Reason::Granted { policy_id } | Reason::Forbidden { policy_id } => Some(policy_id),
            Reason::NotGranted => None,
        }
    }

    /// Stable machine-readable code for logs, metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Granted { .. } => "granted",
            Reason::NotGranted => "not_granted",
            Reason::Forbidden { .. } => "policy_forbid",
        }
    }

    /// Like `Display`, but names the caller and operation for `NotGranted`,
    /// e.g. `no grant for caller checkout on stripe/create_charge`.
    pub fn describe(&self, request: &AuthzRequest<'_>) -> String {
        match self {
            Reason::NotGranted => format!(
                "no grant for caller {} on {}/{}",
                request.caller, request.integration, request.operation
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Granted { policy_id } => write!(f, "granted by {policy_id}"),
            Reason::NotGranted => f.write_str("no grant for this caller and operation"),
            Reason::Forbidden { policy_id } => write!(f, "forbidden by policy {policy_id}"),
        }
    }
}

impl Decision {
    fn not_granted() -> Self {
        Decision {
            allowed: false,
            reason: Reason::NotGranted,
        }
    }
}

/// Compiled grants and custom policies. Cheap to share behind an `Arc`;
/// `authorize` takes `&self` and does not allocate in precomputed mode
/// beyond cloning the decision.
pub struct PolicyEngine {
    callers: LookupMap<String, CallerSlot>,
    /// integration -> operation id -> slot.
    operations: LookupMap<String, LookupMap<String, OperationSlot>>,
    action: EntityUid,
    policy_set: PolicySet,
    cedar_text: String,
    evaluation: Evaluation,
    /// How custom policies read `context.request_bytes`.
    size_reads: SizeReads,
    /// Names custom policies give that the config does not have ([`unknown_names`]).
    unknown_names: Vec<String>,
}

/// How the custom policies read `context.request_bytes`: what deciding a request of unknown
/// size must ask. Empty when no custom policy reads it.
#[derive(Default)]
struct SizeReads {
    /// Where reads compare it with a number, an answer can only change where one of those
    /// comparisons does: the sizes on either side of each number, with the largest (and 0,
    /// which every such decision asks first), meet every answer a size can give (sorted,
    /// without repeats, 0 left out; empty when no policy compares it).
    probes: Vec<u64>,
    /// The policies that read it some other way (arithmetic, a comparison with another value,
    /// the whole context): which sizes matter is not known, so a request of unknown size is
    /// taken as bounded by such a policy wherever it applies.
    opaque: Vec<OpaqueRead>,
}

/// A policy that reads `context.request_bytes` in a way sizes cannot be probed for.
struct OpaqueRead {
    policy_id: Arc<str>,
    /// A `permit` (which might allow at a size where size 0 is refused), not a `forbid`.
    permit: bool,
    /// Its scope alone: the policy as a `permit` without its conditions (`None` if that cannot
    /// be made: it is taken to apply everywhere).
    scope: Option<PolicySet>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("callers", &self.callers.len())
            .field("integrations", &self.operations.len())
            .field("policies", &self.policy_set.num_of_policies())
            .field("depends_on_context", &self.depends_on_context())
            .finish()
    }
}

struct CallerSlot {
    index: usize,
    uid: EntityUid,
}

struct OperationSlot {
    index: usize,
    uid: EntityUid,
}

enum Evaluation {
    /// No custom policies: the decision is a function of (caller, operation),
    /// computed once at compile time. Absent pairs are `NotGranted`.
    Precomputed {
        decisions: LookupMap<(usize, usize), Decision>,
    },
    /// Custom policies may read the context: ask Cedar per request.
    PerRequest {
        authorizer: Authorizer,
        entities: Entities,
    },
}

impl PolicyEngine {
    /// Compiles the configuration into Cedar, validates custom policies
    /// against the Postern schema, and (without custom policies) precomputes
    /// every decision.
    pub fn compile(
        callers: &[String],
        integrations: &[IntegrationOps],
        grants: &[GrantSpec],
        custom_policies: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let schema = cedar_model::schema()?;
        let action = call_action()?;
        let mut entities = Vec::new();

        let mut caller_slots =
            LookupMap::with_capacity_and_hasher(callers.len(), Default::default());
        for (index, caller) in callers.iter().enumerate() {
            let uid = entity_uid(EntityKind::Caller, caller)?;
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            if caller_slots
                .insert(caller.clone(), CallerSlot { index, uid })
                .is_some()
            {
                return Err(PolicyError::DuplicateCaller {
                    caller: caller.clone(),
                });
            }
        }

        let mut integration_uids = HashMap::with_capacity(integrations.len());
        let mut operation_slots: LookupMap<String, LookupMap<String, OperationSlot>> =
            LookupMap::with_capacity_and_hasher(integrations.len(), Default::default());
        let mut next_operation_index = 0;
        for integration in integrations {
            let name = &integration.integration;
            let integration_uid = entity_uid(EntityKind::Integration, name)?;
            entities.push(Entity::new_no_attrs(
                integration_uid.clone(),
                HashSet::new(),
            ));
            if integration_uids
                .insert(name.clone(), integration_uid.clone())
                .is_some()
            {
                return Err(PolicyError::DuplicateIntegration {
                    integration: name.clone(),
                });
            }
            let slots = operation_slots.entry(name.clone()).or_default();
            for operation in &integration.operations {
                let uid = entity_uid(EntityKind::Operation, &operation_entity_id(name, operation))?;
                entities.push(Entity::new_no_attrs(
                    uid.clone(),
                    HashSet::from([integration_uid.clone()]),
                ));
                let slot = OperationSlot {
                    index: next_operation_index,
                    uid,
                };
                next_operation_index += 1;
                if slots.insert(operation.clone(), slot).is_some() {
                    return Err(PolicyError::DuplicateOperation {
                        integration: name.clone(),
                        operation: operation.clone(),
                    });
                }
            }
        }

        let mut policy_set = PolicySet::new();
        let mut cedar_text = String::from("// Grants from the Postern configuration.\n");
        // (caller index, operation index) pairs some grant could allow.
        let mut granted_pairs: Vec<(usize, usize)> = Vec::new();
        for (grant_index, grant) in grants.iter().enumerate() {
            let policy_id = format!("grant-{grant_index}");
            let caller =
                caller_slots
                    .get(&grant.caller)
                    .ok_or_else(|| PolicyError::UnknownCaller {
                        caller: grant.caller.clone(),
                    })?;
            let (Some(integration_uid), Some(slots)) = (
                integration_uids.get(&grant.integration),
                operation_slots.get(&grant.integration),
            ) else {
                return Err(PolicyError::UnknownIntegration {
                    caller: grant.caller.clone(),
                    integration: grant.integration.clone(),
                });
            };
            let text = if grant.operations.iter().any(|op| op == EVERY_OPERATION) {
                granted_pairs.extend(slots.values().map(|slot| (caller.index, slot.index)));
                grant_policy_text(
                    &policy_id,
                    &caller.uid,
                    &action,
                    GrantScope::WholeIntegration(integration_uid),
                )
            } else {
                let mut granted = Vec::with_capacity(grant.operations.len());
                for operation in &grant.operations {
                    let slot =
                        slots
                            .get(operation)
                            .ok_or_else(|| PolicyError::UnknownOperation {
                                caller: grant.caller.clone(),
                                integration: grant.integration.clone(),
                                operation: operation.clone(),
                            })?;
                    if !granted.contains(&&slot.uid) {
                        granted.push(&slot.uid);
                        granted_pairs.push((caller.index, slot.index));
                    }
                }
                let scope = match granted.as_slice() {
                    [] => {
                        return Err(PolicyError::EmptyGrant {
                            caller: grant.caller.clone(),
                            integration: grant.integration.clone(),
                        })
                    }
                    [single] => GrantScope::OneOperation(single),
                    several => GrantScope::SomeOperations {
                        integration: integration_uid,
                        operations: several,
                    },
                };
                grant_policy_text(&policy_id, &caller.uid, &action, scope)
            };
            let policy =
                Policy::parse(Some(PolicyId::new(&policy_id)), &text).map_err(|error| {
                    PolicyError::Internal {
                        message: format!("generated policy {policy_id} does not parse: {error}"),
                    }
                })?;
            add_policy(&mut policy_set, policy)?;
            cedar_text.push_str(&text);
        }

        let known = Known {
            callers: caller_slots.keys().cloned().collect(),
            integrations: integration_uids.keys().cloned().collect(),
            operations: operation_slots
                .iter()
                .flat_map(|(integration, slots)| {
                    slots
                        .keys()
                        .map(move |operation| operation_entity_id(integration, operation))
                })
                .collect(),
            operation_ids: operation_slots
                .iter()
                .map(|(integration, slots)| (integration.clone(), slots.keys().cloned().collect()))
                .collect(),
        };
        let (custom_count, size_reads, unknown_names) = match custom_policies {
            Some(source) => {
                add_custom_policies(source, &schema, &known, &mut policy_set, &mut cedar_text)?
            }
            None => (0, SizeReads::default(), Vec::new()),
        };

        let entities = Entities::from_entities(entities, Some(&schema)).map_err(|error| {
            PolicyError::Internal {
                message: format!("entities do not conform to the schema: {error}"),
            }
        })?;

        let mut engine = PolicyEngine {
            callers: caller_slots,
            operations: operation_slots,
            action,
            policy_set,
            cedar_text,
            evaluation: Evaluation::PerRequest {
                authorizer: Authorizer::new(),
                entities,
            },
            size_reads,
            unknown_names,
        };
        if custom_count == 0 {
            engine.precompute(&granted_pairs);
        }
        Ok(engine)
    }

    /// Replaces per-request evaluation with a table of answers. Only pairs
    /// some grant mentions are asked about: without custom policies every
    /// other pair has no applicable permit, so Cedar would deny by default.
    fn precompute(&mut self, granted_pairs: &[(usize, usize)]) {
        let caller_uids: HashMap<usize, &EntityUid> = self
            .callers
            .values()
            .map(|slot| (slot.index, &slot.uid))
            .collect();
        let operation_uids: HashMap<usize, &EntityUid> = self
            .operations
            .values()
            .flat_map(LookupMap::values)
            .map(|slot| (slot.index, &slot.uid))
            .collect();
        let context = context_for_precomputation();
        let mut decisions = LookupMap::default();
        for &pair in granted_pairs {
            if decisions.contains_key(&pair) {
                continue;
            }
            let decision = match (
                &context,
                caller_uids.get(&pair.0),
                operation_uids.get(&pair.1),
            ) {
                (Some(context), Some(caller), Some(operation)) => {
                    self.evaluate(caller, operation, context.clone())
                }
                _ => Decision::not_granted(),
            };
            if decision != Decision::not_granted() {
                decisions.insert(pair, decision);
            }
        }
        self.evaluation = Evaluation::Precomputed { decisions };
    }

    /// Decides one request. Unknown callers, integrations or operations are
    /// `NotGranted`. In per-request mode, a request whose context cannot be
    /// built (an unparsable `source_ip`) is `NotGranted` as well: fail closed.
    pub fn authorize(&self, req: &AuthzRequest<'_>) -> Decision {
        let Some((caller, operation)) = self.slots(req) else {
            return Decision::not_granted();
        };
        match &self.evaluation {
            Evaluation::Precomputed { decisions } => decisions
                .get(&(caller.index, operation.index))
                .cloned()
                .unwrap_or_else(Decision::not_granted),
            Evaluation::PerRequest { .. } => match request_context(req) {
                Some(context) => self.evaluate(&caller.uid, &operation.uid, context),
                None => Decision::not_granted(),
            },
        }
    }

    /// The caller's and the operation's slots, if both are known.
    fn slots(&self, req: &AuthzRequest<'_>) -> Option<(&CallerSlot, &OperationSlot)> {
        let caller = self.callers.get(req.caller)?;
        let operation = self.operations.get(req.integration)?.get(req.operation)?;
        Some((caller, operation))
    }

    /// The Cedar request for `caller` calling `operation` in `context`.
    fn cedar_request(
        &self,
        caller: &EntityUid,
        operation: &EntityUid,
        context: Context,
    ) -> Option<cedar_policy::Request> {
        cedar_policy::Request::new(
            caller.clone(),
            self.action.clone(),
            operation.clone(),
            context,
            None,
        )
        .ok()
    }

    fn evaluate(&self, caller: &EntityUid, operation: &EntityUid, context: Context) -> Decision {
        let Evaluation::PerRequest {
            authorizer,
            entities,
        } = &self.evaluation
        else {
            return Decision::not_granted();
        };
        let Some(request) = self.cedar_request(caller, operation, context) else {
            return Decision::not_granted();
        };
        let response = authorizer.is_authorized(&request, &self.policy_set, entities);
        let diagnostics = response.diagnostics();

        // Cedar skips policies whose evaluation errors. For a forbid that
        // would mean failing open, so an erroring forbid counts as applying.
        let erroring_forbid = diagnostics
            .errors()
            .map(|error| match error {
                AuthorizationError::PolicyEvaluationError(error) => error.policy_id(),
            })
            .filter(|id| {
                self.policy_set
                    .policy(id)
                    .is_some_and(|policy| policy.effect() == Effect::Forbid)
            })
            .map(PolicyId::to_string)
            .min();
        if let Some(policy_id) = erroring_forbid {
            return Decision {
                allowed: false,
                reason: Reason::Forbidden {
                    policy_id: policy_id.into(),
                },
            };
        }

        let determining = diagnostics.reason().map(PolicyId::to_string).min();
        match (response.decision(), determining) {
            (cedar_policy::Decision::Allow, Some(policy_id)) => Decision {
                allowed: true,
                reason: Reason::Granted {
                    policy_id: policy_id.into(),
                },
            },
            (cedar_policy::Decision::Deny, Some(policy_id)) => Decision {
                allowed: false,
                reason: Reason::Forbidden {
                    policy_id: policy_id.into(),
                },
            },
            // Allow without a determining policy cannot happen in Cedar;
            // treat it as the default deny.
            (_, None) => Decision::not_granted(),
        }
    }

    /// The generated grant policies followed by the custom policies (each
    /// with the `@id` it is known by), as Cedar text for operators to read.
    pub fn cedar_text(&self) -> String {
        self.cedar_text.clone()
    }

    /// `true` when custom policies are present and every `authorize` call
    /// asks Cedar; `false` when decisions were precomputed per
    /// (caller, operation) and `authorize` is a hash lookup.
    pub fn depends_on_context(&self) -> bool {
        matches!(self.evaluation, Evaluation::PerRequest { .. })
    }

    /// Whether a custom policy reads `context.request_bytes`.
    pub fn reads_request_bytes(&self) -> bool {
        !self.size_reads.probes.is_empty() || !self.size_reads.opaque.is_empty()
    }

    /// What an operator should know of the custom policies: each one that reads
    /// `context.request_bytes` in a way sizes cannot be probed for (`postern check` prints them
    /// as warnings, `postern serve` logs them).
    pub fn notes(&self) -> Vec<String> {
        self.size_reads
            .opaque
            .iter()
            .map(|OpaqueRead { policy_id, .. }| {
                format!(
                    "policy {policy_id} reads context.request_bytes other than by comparing it with a number: a request whose body declares no size (chunked, or h2 without content-length) that the policy's principal, action and resource match is refused with 411 length_required; compare request_bytes with numbers written out so the sizes that matter can be probed"
                )
            })
            .chain(self.unknown_names.iter().cloned())
            .collect()
    }

    /// Whether `scope` (a policy's principal, action and resource, as a `permit` without
    /// conditions) applies to `req`; where Cedar cannot tell, it applies.
    fn in_scope(&self, scope: &PolicySet, req: &AuthzRequest<'_>) -> bool {
        let Evaluation::PerRequest {
            authorizer,
            entities,
        } = &self.evaluation
        else {
            return true;
        };
        let Some((caller, operation)) = self.slots(req) else {
            return true;
        };
        let request = request_context(req)
            .and_then(|context| self.cedar_request(&caller.uid, &operation.uid, context));
        request.is_none_or(|request| {
            let response = authorizer.is_authorized(&request, scope, entities);
            response.decision() == cedar_policy::Decision::Allow
                || response.diagnostics().errors().next().is_some()
        })
    }

    /// Decides a request whose size is not known (`req.request_bytes` is not read): `Ok` with
    /// the decision when no size can change it, `Err` with a refusing decision when one can.
    ///
    /// Where every custom policy that reads `context.request_bytes` compares it with numbers,
    /// the request is asked at 0, at the largest size, and on either side of each number: that
    /// meets every answer a size can give (a band refused in the middle too), and the answers
    /// agree or not. Where a policy that applies to the request reads it otherwise, a request
    /// that would pass at size 0 is taken as bounded by that policy (fail closed).
    pub fn authorize_unsized(&self, req: &AuthzRequest<'_>) -> Result<Decision, Decision> {
        let at = |request_bytes| {
            self.authorize(&AuthzRequest {
                request_bytes,
                ..*req
            })
        };
        let smallest = at(0);
        // A policy reading the size opaquely that could change this call's answer at another
        // size: where it applies, if the call passes at size 0 (it might forbid some size), or
        // it is a permit (it might allow some size), or it is the forbid that refused size 0.
        let bounding = self.size_reads.opaque.iter().find(|opaque| {
            let may_change = smallest.allowed
                || opaque.permit
                || matches!(&smallest.reason, Reason::Forbidden { policy_id } if *policy_id == opaque.policy_id);
            may_change
                && opaque
                    .scope
                    .as_ref()
                    .is_none_or(|scope| self.in_scope(scope, req))
        });
        if let Some(opaque) = bounding {
            return Err(match smallest.allowed {
                true => Decision {
                    allowed: false,
                    reason: Reason::Forbidden {
                        policy_id: opaque.policy_id.clone(),
                    },
                },
                false => smallest,
            });
        }
        for &size in &self.size_reads.probes {
            let decision = at(size);
            if decision.allowed != smallest.allowed {
                return Err(if decision.allowed { smallest } else { decision });
            }
        }
        Ok(smallest)
    }
}

fn add_policy(policy_set: &mut PolicySet, policy: Policy) -> Result<(), PolicyError> {
    let policy_id = policy.id().to_string();
    if policy_set.policy(policy.id()).is_some() {
        return Err(PolicyError::DuplicatePolicyId { policy_id });
    }
    policy_set
        .add(policy)
        .map_err(|error| PolicyError::Internal {
            message: format!("adding policy {policy_id}: {error}"),
        })
}

/// Parses, renames and validates the custom policies, adds them to
/// `policy_set` and their text to `cedar_text`. Returns how many there were.
fn add_custom_policies(
    source: &str,
    schema: &Schema,
    known: &Known,
    policy_set: &mut PolicySet,
    cedar_text: &mut String,
) -> Result<(usize, SizeReads, Vec<String>), PolicyError> {
    let parsed = PolicySet::from_str(source).map_err(|errors| PolicyError::CustomPolicySyntax {
        message: describe_diagnostics(source, [DetailedError::from(&errors)]),
    })?;
    if let Some(template) = parsed.templates().next() {
        return Err(PolicyError::CustomPolicyTemplate {
            policy_id: template.id().to_string(),
        });
    }
    // Cedar names unannotated policies `policy0`, `policy1`, ... in source
    // order; keep that order and call them `custom-0`, `custom-1`, ...
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|policy| source_position(policy.id()));

    let mut renamed = PolicySet::new();
    let mut texts = Vec::with_capacity(policies.len());
    for (position, policy) in policies.into_iter().enumerate() {
        let annotated = policy.annotation("id").map(str::to_owned);
        let policy_id = annotated
            .clone()
            .unwrap_or_else(|| format!("custom-{position}"));
        if policy_set.policy(&PolicyId::new(&policy_id)).is_some() {
            return Err(PolicyError::DuplicatePolicyId { policy_id });
        }
        let text = match annotated {
            Some(_) => format!("{policy}\n"),
            None => format!("@id({policy_id:?})\n{policy}\n"),
        };
        add_policy(&mut renamed, policy.new_id(PolicyId::new(&policy_id)))?;
        texts.push(text);
    }

    let validation = Validator::new(schema.clone()).validate(&renamed, ValidationMode::Strict);
    if !validation.validation_passed() {
        return Err(PolicyError::CustomPolicyValidation {
            message: describe_diagnostics(
                source,
                validation.validation_errors().map(DetailedError::from),
            ),
        });
    }

    let count = texts.len();
    if count > 0 {
        cedar_text.push_str("\n// Custom policies.\n");
        for text in texts {
            cedar_text.push_str(&text);
        }
    }
    let size_reads = size_reads(&renamed);
    let unknown = unknown_names(&renamed, known);
    for policy in renamed.policies() {
        add_policy(policy_set, policy.clone())?;
    }
    Ok((count, size_reads, unknown))
}

/// The config's names, which custom policies are checked against ([`unknown_names`]).
struct Known {
    callers: HashSet<String>,
    integrations: HashSet<String>,
    /// Operation entities' ids (`integration/operation`).
    operations: HashSet<String>,
    /// Each integration's operation ids, as `context.operation` holds them.
    operation_ids: HashMap<String, HashSet<String>>,
}

impl Known {
    /// The names `context.<attribute>` may hold, or None for an attribute not checked. An
    /// operation is looked for in `integration`'s when the policy names that one alone (see
    /// [`the_one_integration`]), else in every integration's.
    fn names(&self, attribute: &str, integration: Option<&str>) -> Option<Vec<&HashSet<String>>> {
        match attribute {
            "caller" => Some(vec![&self.callers]),
            "integration" => Some(vec![&self.integrations]),
            "operation" => Some(
                match integration.and_then(|name| self.operation_ids.get(name)) {
                    Some(operations) => vec![operations],
                    None => self.operation_ids.values().collect(),
                },
            ),
            _ => None,
        }
    }
}

/// A note for each name a custom policy gives that the config does not have: a caller,
/// integration or operation entity, or a string `context.caller`, `.integration` or
/// `.operation` is compared with. Cedar's validation checks entity types, not ids, so a policy
/// naming an integration since renamed, or a mistyped caller, matches nothing, silently: a
/// `forbid` meant to bound calls is then gone.
fn unknown_names(policies: &PolicySet, known: &Known) -> Vec<String> {
    let mut notes = Vec::new();
    for policy in policies.policies() {
        let Ok(json) = policy.to_json() else { continue };
        let mut names = Vec::new();
        let integration = the_one_integration(&json);
        named(&json, known, integration.as_deref(), &mut names);
        names.sort();
        names.dedup();
        notes.extend(names.into_iter().map(|name| {
            format!(
                "policy {} names {name}, which the config does not have: no call is that (renamed, or mistyped?), so whatever the policy compares with it never matches; name one the config has",
                policy.id()
            )
        }));
    }
    notes
}

/// The integration a policy (its EST) is bound to: the one its scope's resource names or the
/// one a `context.integration == "…"` among its conditions' top-level `&&` terms names, when
/// it names exactly one. An operation compared with `context.operation` in such a policy is one
/// of that integration's, or it never matches.
fn the_one_integration(policy: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let mut named = HashSet::new();
    if let Some(entity) = policy.get("resource").and_then(|scope| scope.get("entity")) {
        let id = entity.get("id").and_then(Value::as_str);
        match entity.get("type").and_then(Value::as_str) {
            Some("Postern::Integration") => named.extend(id.map(str::to_owned)),
            // Operations' ids are `integration/operation`.
            Some("Postern::Operation") => named.extend(
                id.and_then(|id| id.split_once('/'))
                    .map(|(integration, _)| integration.to_owned()),
            ),
            _ => {}
        }
    }
    let mut terms = Vec::new();
    for condition in policy
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if condition.get("kind").and_then(Value::as_str) == Some("when") {
            terms.extend(condition.get("body").map(conjuncts).into_iter().flatten());
        }
    }
    for term in terms {
        let Some(Value::Object(sides)) = term.get("==") else {
            continue;
        };
        let (Some(left), Some(right)) = (sides.get("left"), sides.get("right")) else {
            continue;
        };
        for (attribute, literal) in [(left, right), (right, left)] {
            if context_attribute(attribute) == Some("integration") {
                named.extend(
                    literal
                        .get("Value")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                );
            }
        }
    }
    let mut named = named.into_iter();
    match (named.next(), named.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// The terms of `json`'s top-level `&&` chain (itself when it is none).
fn conjuncts(json: &serde_json::Value) -> Vec<&serde_json::Value> {
    match json.get("&&") {
        Some(sides) => [sides.get("left"), sides.get("right")]
            .into_iter()
            .flatten()
            .flat_map(conjuncts)
            .collect(),
        None => vec![json],
    }
}

/// Whether `name` matches a Cedar `like` pattern (its EST: `"Wildcard"` or `{"Literal": s}`).
/// Iterative, backing up to the last wildcard only (as Cedar's own matcher): O(pattern × name),
/// whatever the wildcards. A form not understood is taken as matching, so no false note.
fn like_matches(pattern: &[serde_json::Value], name: &str) -> bool {
    // `None`: a wildcard.
    let mut elements: Vec<Option<char>> = Vec::new();
    for element in pattern {
        match element {
            serde_json::Value::String(wildcard) if wildcard == "Wildcard" => elements.push(None),
            _ => match element.get("Literal").and_then(serde_json::Value::as_str) {
                Some(literal) => elements.extend(literal.chars().map(Some)),
                None => return true,
            },
        }
    }
    let name: Vec<char> = name.chars().collect();
    let (mut at_pattern, mut at_name) = (0, 0);
    // The last wildcard met, and the name position it has taken up to.
    let mut backup: Option<(usize, usize)> = None;
    while at_name < name.len() {
        match elements.get(at_pattern) {
            Some(Some(c)) if *c == name[at_name] => {
                at_pattern += 1;
                at_name += 1;
            }
            Some(None) => {
                backup = Some((at_pattern, at_name));
                at_pattern += 1;
            }
            _ => match backup {
                Some((wildcard, taken)) => {
                    backup = Some((wildcard, taken + 1));
                    at_pattern = wildcard + 1;
                    at_name = taken + 1;
                }
                None => return false,
            },
        }
    }
    elements[at_pattern..].iter().all(Option::is_none)
}

/// Collects into `names` the unknown names `json` (a policy's EST, or a part of it) gives;
/// operations are checked against `integration`'s when the policy names that one alone.
fn named(
    json: &serde_json::Value,
    known: &Known,
    integration: Option<&str>,
    names: &mut Vec<String>,
) {
    use serde_json::Value;
    let unknown = |attribute: &str, name: &str| {
        known
            .names(attribute, integration)
            .is_some_and(|sets| !sets.iter().any(|set| set.contains(name)))
    };
    match json {
        Value::Object(map) => {
            if let (Some(Value::String(kind)), Some(Value::String(id))) =
                (map.get("type"), map.get("id"))
            {
                let set = match kind.as_str() {
                    "Postern::Caller" => Some(&known.callers),
                    "Postern::Integration" => Some(&known.integrations),
                    "Postern::Operation" => Some(&known.operations),
                    _ => None,
                };
                if set.is_some_and(|set| !set.contains(id)) {
                    names.push(format!("{kind}::{id:?}"));
                }
            }
            for operator in ["==", "!="] {
                let Some(Value::Object(sides)) = map.get(operator) else {
                    continue;
                };
                let (Some(left), Some(right)) = (sides.get("left"), sides.get("right")) else {
                    continue;
                };
                for (attribute, literal) in [(left, right), (right, left)] {
                    let (Some(attribute), Some(Value::String(literal))) =
                        (context_attribute(attribute), literal.get("Value"))
                    else {
                        continue;
                    };
                    if unknown(attribute, literal) {
                        names.push(format!("context.{attribute} {literal:?}"));
                    }
                }
            }
            // `["a", "b"].contains(context.caller)`: each member is a name.
            if let Some(Value::Object(sides)) = map.get("contains") {
                if let (Some(Value::Array(members)), Some(attribute)) = (
                    sides.get("left").and_then(|set| set.get("Set")),
                    sides.get("right").and_then(context_attribute),
                ) {
                    for member in members {
                        if let Some(Value::String(literal)) = member.get("Value") {
                            if unknown(attribute, literal) {
                                names.push(format!("context.{attribute} {literal:?}"));
                            }
                        }
                    }
                }
            }
            // `context.caller like "pay*"`: some name must match the pattern.
            if let Some(Value::Object(like)) = map.get("like") {
                if let (Some(attribute), Some(Value::Array(pattern))) = (
                    like.get("left").and_then(context_attribute),
                    like.get("pattern"),
                ) {
                    let matched = known.names(attribute, integration).map(|sets| {
                        sets.iter()
                            .any(|set| set.iter().any(|name| like_matches(pattern, name)))
                    });
                    if matched == Some(false) {
                        names.push(format!(
                            "context.{attribute} like {:?}",
                            pattern_text(pattern)
                        ));
                    }
                }
            }
            for value in map.values() {
                named(value, known, integration, names);
            }
        }
        Value::Array(items) => {
            for item in items {
                named(item, known, integration, names);
            }
        }
        _ => {}
    }
}

/// A `like` pattern as written in Cedar (`*` for a wildcard, a literal `*` escaped).
fn pattern_text(pattern: &[serde_json::Value]) -> String {
    pattern
        .iter()
        .map(
            |element| match element.get("Literal").and_then(serde_json::Value::as_str) {
                Some(literal) => literal.replace('*', "\\*"),
                None => "*".to_owned(),
            },
        )
        .collect()
}

/// `attr` when `json` is `context.attr`.
fn context_attribute(json: &serde_json::Value) -> Option<&str> {
    let access = json.get(".")?;
    (access.get("left")?.get("Var")?.as_str()? == "context")
        .then(|| access.get("attr")?.as_str())
        .flatten()
}

/// How `policies` read `context.request_bytes`, from each policy's JSON form (Cedar's EST:
/// attribute names are strings there and comments are gone). A policy with no JSON form
/// counts as reading it opaquely.
fn size_reads(policies: &PolicySet) -> SizeReads {
    let mut thresholds = Vec::new();
    let mut opaque = Vec::new();
    for policy in policies.policies() {
        let json = policy.to_json().ok();
        let understood = json
            .as_ref()
            .is_some_and(|json| compared_sizes(json, &mut thresholds));
        if !understood {
            opaque.push(OpaqueRead {
                policy_id: Arc::from(policy.id().to_string()),
                permit: policy.effect() == Effect::Permit,
                scope: json.and_then(|json| scope_of(policy.id(), json)),
            });
        }
    }
    // The sizes asked besides 0 (which every decision of an unknown size asks first).
    let mut probes = Vec::new();
    if !thresholds.is_empty() {
        // Cedar sees sizes as Longs, the largest capped at i64::MAX.
        probes.push(i64::MAX as u64);
        for number in thresholds {
            for probe in [number.saturating_sub(1), number, number.saturating_add(1)] {
                probes.push(probe.clamp(0, i64::MAX) as u64);
            }
        }
        probes.retain(|&probe| probe != 0);
        probes.sort_unstable();
        probes.dedup();
    }
    SizeReads { probes, opaque }
}

/// A policy's scope alone: the policy (its JSON form) as a `permit` with no conditions, which
/// Cedar allows exactly where the policy's principal, action and resource match.
fn scope_of(id: &PolicyId, mut json: serde_json::Value) -> Option<PolicySet> {
    let fields = json.as_object_mut()?;
    fields.insert("effect".to_owned(), serde_json::json!("permit"));
    fields.insert("conditions".to_owned(), serde_json::json!([]));
    let mut scope = PolicySet::new();
    scope
        .add(Policy::from_json(Some(id.clone()), json).ok()?)
        .ok()?;
    Some(scope)
}

/// Collects into `numbers` every number `context.request_bytes` is compared with in `json` (a
/// policy's EST); `false` if it is read any other way (a request whose size is unknown then
/// cannot be decided by probing, so the search stops there).
fn compared_sizes(json: &serde_json::Value, numbers: &mut Vec<i64>) -> bool {
    use serde_json::Value;
    fn is_context(json: &Value) -> bool {
        json.get("Var").is_some_and(|name| name == "context")
    }
    /// `context.request_bytes` (or `context["request_bytes"]`).
    fn is_size(json: &Value) -> bool {
        json.get(".")
            .is_some_and(|access| access["attr"] == "request_bytes" && is_context(&access["left"]))
    }
    if let Value::Object(fields) = json {
        if fields.len() == 1 {
            let (operator, operands) = fields.iter().next().expect("one field");
            let comparison = matches!(operator.as_str(), "==" | "!=" | "<" | "<=" | ">" | ">=");
            if comparison {
                let (left, right) = (&operands["left"], &operands["right"]);
                let number = |side: &Value| side.get("Value").and_then(Value::as_i64);
                match (is_size(left), is_size(right)) {
                    (true, false) | (false, true) => {
                        let other = if is_size(left) { right } else { left };
                        return match number(other) {
                            Some(n) => {
                                numbers.push(n);
                                true
                            }
                            // Compared with something other than a number written out.
                            None => false,
                        };
                    }
                    _ => {}
                }
            }
            // An attribute of the context: only `request_bytes`' value is a size; whether
            // the context has an attribute reads no value.
            if (operator == "." || operator == "has") && is_context(&operands["left"]) {
                return operator == "has" || operands["attr"] != "request_bytes";
            }
        }
        // The whole context (compared with a record, say): its size is read too.
        if is_context(json) {
            return false;
        }
    }
    match json {
        Value::Array(items) => items.iter().all(|item| compared_sizes(item, numbers)),
        Value::Object(fields) => fields.values().all(|value| compared_sizes(value, numbers)),
        _ => true,
    }
}

/// `policy7` -> 7; anything else sorts last, by name.
fn source_position(id: &PolicyId) -> (usize, String) {
    let name = id.to_string();
    let position = name
        .strip_prefix("policy")
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(usize::MAX);
    (position, name)
}

fn request_context(req: &AuthzRequest<'_>) -> Option<Context> {
    Context::from_pairs([
        (
            "hour".to_owned(),
            RestrictedExpression::new_long(req.hour.into()),
        ),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_long(req.weekday.into()),
        ),
        (
            "request_bytes".to_owned(),
            RestrictedExpression::new_long(i64::try_from(req.request_bytes).unwrap_or(i64::MAX)),
        ),
        (
            "method".to_owned(),
            RestrictedExpression::new_string(req.method.to_owned()),
        ),
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip(req.source_ip),
        ),
        (
            "caller".to_owned(),
            RestrictedExpression::new_string(req.caller.to_owned()),
        ),
        (
            "integration".to_owned(),
            RestrictedExpression::new_string(req.integration.to_owned()),
        ),
        (
            "operation".to_owned(),
            RestrictedExpression::new_string(req.operation.to_owned()),
        ),
    ])
    .ok()
}

/// Grants do not read the context, so any well-typed context gives the same
/// answer; this one is just well-typed.
fn context_for_precomputation() -> Option<Context> {
    request_context(&AuthzRequest {
        caller: "",
        integration: "",
        operation: "",
        method: "GET",
        hour: 0,
        weekday: 0,
        request_bytes: 0,
        source_ip: "0.0.0.0",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes, and the ids of the policies read opaquely.
    fn reads(source: &str) -> (Vec<u64>, Vec<String>) {
        let reads = size_reads(&PolicySet::from_str(source).expect("policies parse"));
        let opaque = reads
            .opaque
            .iter()
            .map(|opaque| opaque.policy_id.to_string())
            .collect();
        (reads.probes, opaque)
    }

    #[test]
    fn the_sizes_probed_are_those_on_either_side_of_each_number_compared_with() {
        let largest = i64::MAX as u64;
        assert_eq!(
            reads("forbid(principal, action, resource) when { context.hour < 6 && context has request_bytes };"),
            (vec![], vec![])
        );
        assert_eq!(
            reads(
                r#"forbid(principal, action, resource)
                    when { context.request_bytes > 1000 && 2000 >= context["request_bytes"] };
                   forbid(principal, action, resource) when { context has request_bytes && context.request_bytes == 0 };
                   forbid(principal, action, resource) when { context.request_bytes > -5 };"#
            ),
            (vec![1, 999, 1000, 1001, 1999, 2000, 2001, largest], vec![])
        );
        // Past the ends, probes are clamped to the sizes Cedar can see.
        assert_eq!(
            reads(
                "forbid(principal, action, resource) when { context.request_bytes < 9223372036854775807 };"
            ),
            (vec![largest - 1, largest], vec![])
        );
        // The name alone, as a string or an entity id, reads nothing.
        assert_eq!(
            reads(
                r#"forbid(principal == Postern::Caller::"request_bytes", action, resource) when { context.method == "request_bytes" };"#
            ),
            (vec![], vec![])
        );
        for opaque in [
            "forbid(principal, action, resource) when { context.request_bytes + 1 > 10 };",
            "forbid(principal, action, resource) when { context.request_bytes > context.hour };",
            "forbid(principal, action, resource) when { [context.request_bytes].contains(7) };",
            r#"forbid(principal, action, resource) when { context == {hour: 1, weekday: 1, caller: "a", integration: "b", operation: "c", request_bytes: 5, method: "GET", source_ip: ip("10.0.0.1")} };"#,
        ] {
            assert_eq!(
                reads(opaque),
                (vec![], vec!["policy0".to_string()]),
                "{opaque}"
            );
        }
    }
}
