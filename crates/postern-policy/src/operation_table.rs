//! Maps `(method, path)` of a request to the operation id declared for it.
//!
//! Operations are indexed by method, then segment count; within a bucket they
//! are ordered by specificity (literal length, descending; declaration order
//! breaks ties), so the first template that matches is the answer — unless a more
//! specific one matches the path loosely (ASCII case aside, or with a format suffix), as
//! a vendor's router might: then none does. A lookup therefore only looks at templates
//! that could possibly match. A path that two templates match, neither of them the more
//! specific segment by segment, matches no operation either: routers disagree on it.

use std::sync::Arc;

use crate::{LookupMap, PathTemplate, PolicyError};

/// The operations of one integration, ready for lookup.
#[derive(Debug, Clone)]
pub struct OperationTable {
    /// method -> segment count -> operations, most specific first.
    buckets: LookupMap<String, LookupMap<usize, Vec<OperationEntry>>>,
}

/// The operation a request was attributed to. Id and template are shared, so a call can keep
/// them without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedOperation<'a> {
    pub id: &'a Arc<str>,
    pub template: &'a Arc<str>,
}

/// What one method's operations make of a path.
enum Found<'a> {
    /// An operation, and its template.
    Operation(MatchedOperation<'a>, &'a PathTemplate),
    /// Only loosely, as a vendor's router might ([`PathTemplate::loosely_matches`]).
    Loosely,
    Nothing,
}

#[derive(Debug, Clone)]
struct OperationEntry {
    id: Arc<str>,
    template: PathTemplate,
    /// `template.as_str()`, shared.
    template_text: Arc<str>,
    /// The bucket's other templates of which neither this one nor that one is the more
    /// specific segment by segment (`/v1/{acct}/invoices/{id}` and
    /// `/v1/admin/{section}/{item}`): a path both match is one routers disagree on (a
    /// literal-first router takes the second, Postern's order the first), so it matches
    /// neither. Indices into the bucket; empty for nearly every operation.
    rivals: Vec<usize>,
}

impl OperationTable {
    /// Builds the table from `(operation id, METHOD, template)` triples.
    /// Methods must be uppercase ASCII letters. Two operations with the same
    /// method and template are rejected; the same id may appear with several
    /// methods.
    pub fn new<'a>(
        ops: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Self, PolicyError> {
        let mut buckets: LookupMap<String, LookupMap<usize, Vec<OperationEntry>>> =
            LookupMap::default();
        for (id, method, template) in ops {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(PolicyError::InvalidMethod {
                    operation: id.to_owned(),
                    method: method.to_owned(),
                });
            }
            let template = PathTemplate::parse(template)?;
            let bucket = buckets
                .entry(method.to_owned())
                .or_default()
                .entry(template.segment_count())
                .or_default();
            if let Some(existing) = bucket
                .iter()
                .find(|entry| entry.template.as_str() == template.as_str())
            {
                return Err(PolicyError::DuplicateRoute {
                    method: method.to_owned(),
                    template: template.as_str().to_owned(),
                    first: existing.id.to_string(),
                    second: id.to_owned(),
                });
            }
            bucket.push(OperationEntry {
                id: id.into(),
                template_text: template.as_str().into(),
                template,
                rivals: Vec::new(),
            });
        }
        for bucket in buckets.values_mut().flat_map(LookupMap::values_mut) {
            // Stable sort: declaration order breaks ties.
            bucket.sort_by_key(|entry| std::cmp::Reverse(entry.template.literal_len()));
            for index in 0..bucket.len() {
                let rivals = (0..bucket.len())
                    .filter(|&other| {
                        other != index
                            && !bucket[index].template.dominates(&bucket[other].template)
                            && !bucket[other].template.dominates(&bucket[index].template)
                    })
                    .collect();
                bucket[index].rivals = rivals;
            }
        }
        Ok(OperationTable { buckets })
    }

    /// Finds the most specific operation for a request. `method` is compared
    /// case-sensitively (send it uppercase); `path` is the raw path without
    /// query. A `HEAD` request for which no `HEAD` operation matches falls
    /// back to the `GET` operations.
    pub fn find(&self, method: &str, path: &str) -> Option<MatchedOperation<'_>> {
        let segment_count = path.bytes().filter(|&b| b == b'/').count();
        match self.find_exact(method, segment_count, path) {
            // A `HEAD` operation, unless a `GET` one the path matches is not less specific at
            // every segment (or a vendor could take the path for one): servers that answer
            // `HEAD` with a `GET` route (Express, Rails, Flask) may run that route's handler
            // first (`HEAD /files/export` under `HEAD /files/{id}` beside `GET /files/export`).
            Found::Operation(matched, template) if method == "HEAD" => {
                match self.find_exact("GET", segment_count, path) {
                    Found::Operation(_, get) if !template.dominates(get) => None,
                    Found::Loosely => None,
                    _ => Some(matched),
                }
            }
            Found::Operation(matched, _) => Some(matched),
            // Not by way of `GET` either: the `HEAD` a vendor might route elsewhere is refused.
            Found::Loosely => None,
            Found::Nothing if method == "HEAD" => match self.find_exact("GET", segment_count, path)
            {
                Found::Operation(matched, _) => Some(matched),
                Found::Loosely | Found::Nothing => None,
            },
            Found::Nothing => None,
        }
    }

    fn find_exact(&self, method: &str, segment_count: usize, path: &str) -> Found<'_> {
        let Some(bucket) = self
            .buckets
            .get(method)
            .and_then(|bucket| bucket.get(&segment_count))
        else {
            return Found::Nothing;
        };
        // A more literal operation the path does not match, but that a vendor routing
        // regardless of case or format suffix would take it for (`/v1/charges/Search` or
        // `search.json` under `/v1/charges/{id}`, beside `/v1/charges/search`): no operation,
        // or a grant of the placeholder's would reach the literal one's handler.
        let mut loosely = false;
        for entry in bucket {
            if entry.template.matches(path) {
                // Loosely: a rival a case-blind or decoding router takes the path for disputes
                // it as much (`/v1/ADMIN/invoices/x`, `/v1/%61dmin/invoices/x`).
                let contested = entry
                    .rivals
                    .iter()
                    .any(|&rival| bucket[rival].template.loosely_matches(path));
                return match loosely || contested {
                    true => Found::Loosely,
                    false => Found::Operation(
                        MatchedOperation {
                            id: &entry.id,
                            template: &entry.template_text,
                        },
                        &entry.template,
                    ),
                };
            }
            loosely = loosely || entry.template.loosely_matches(path);
        }
        match loosely {
            true => Found::Loosely,
            false => Found::Nothing,
        }
    }
}
