//! Path templates such as `/v1/charges/{id}` or
//! `/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`.
//!
//! A template is split on `/` into segments. A segment is either pure literal
//! text or holds exactly one `{placeholder}` with optional literal text before
//! and after it. A placeholder matches one or more bytes other than `/`.
//! Matching works on the raw request path (no query, no percent-decoding):
//! `%2F` inside a segment is just three ordinary characters.

use crate::PolicyError;

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<TemplateSegment>,
    literal_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    Literal(String),
    Placeholder { prefix: String, suffix: String },
}

impl TemplateSegment {
    fn matches(&self, segment: &[u8]) -> bool {
        match self {
            TemplateSegment::Literal(text) => text.as_bytes() == segment,
            TemplateSegment::Placeholder { prefix, suffix } => {
                segment.len() > prefix.len() + suffix.len()
                    && segment.starts_with(prefix.as_bytes())
                    && segment.ends_with(suffix.as_bytes())
            }
        }
    }
}

impl TemplateSegment {
    /// Whether a server that routes regardless of ASCII case, or that strips a format suffix
    /// (`.json`, Rails and older Spring MVC) or `;` parameters, or that decodes
    /// percent-escapes before routing (ASP.NET Core, Go's ServeMux, Spring's PathPattern:
    /// `%40me` is `@me`), could take `segment` for this one.
    /// The template's own text is read both ways too: a literal written with escapes
    /// (`/users/%40me`) is the route `@me` to such a server, which `/users/@me` reaches.
    fn loosely_matches(&self, segment: &[u8]) -> bool {
        // The segment as sent, and decoded when it holds an escape; the template's text too
        // (decoded only when it holds one, which config templates rarely do): nothing is
        // allocated for the usual segment and template.
        let decoded_segment = segment.contains(&b'%').then(|| percent_decoded(segment));
        let decoded = |text: &str| text.contains('%').then(|| percent_decoded(text.as_bytes()));
        match self {
            TemplateSegment::Literal(text) => {
                let decoded_text = decoded(text);
                let alike = |segment: &[u8]| {
                    let like = |text: &[u8]| {
                        segment.len() >= text.len()
                            && segment[..text.len()].eq_ignore_ascii_case(text)
                            && matches!(segment.get(text.len()), None | Some(b'.' | b';'))
                    };
                    like(text.as_bytes()) || decoded_text.as_deref().is_some_and(like)
                };
                alike(segment) || decoded_segment.as_deref().is_some_and(alike)
            }
            TemplateSegment::Placeholder { prefix, suffix } => {
                let fits = |segment: &[u8], prefix: &[u8], suffix: &[u8]| {
                    segment.len() > prefix.len() + suffix.len()
                        && segment[..prefix.len()].eq_ignore_ascii_case(prefix)
                        && segment[segment.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                };
                if fits(segment, prefix.as_bytes(), suffix.as_bytes()) {
                    return true;
                }
                // A bare placeholder takes any segment, escaped or not: no second reading.
                if prefix.is_empty() && suffix.is_empty() {
                    return false;
                }
                let (decoded_prefix, decoded_suffix) = (decoded(prefix), decoded(suffix));
                let prefix_decoded = decoded_prefix.as_deref().unwrap_or(prefix.as_bytes());
                let suffix_decoded = decoded_suffix.as_deref().unwrap_or(suffix.as_bytes());
                let template_escaped = decoded_prefix.is_some() || decoded_suffix.is_some();
                let alike = |segment: &[u8]| {
                    fits(segment, prefix.as_bytes(), suffix.as_bytes())
                        || (template_escaped && fits(segment, prefix_decoded, suffix_decoded))
                };
                (template_escaped && alike(segment))
                    || decoded_segment.as_deref().is_some_and(alike)
            }
        }
    }
}

impl PathTemplate {
    /// Parses a template. It must start with `/`, contain no query (`?`) or
    /// fragment (`#`), no empty segment except a trailing slash, and at most
    /// one `{name}` per segment, where `name` is ASCII letters, digits or `_`.
    pub fn parse(template: &str) -> Result<Self, PolicyError> {
        let invalid = |problem: &str| PolicyError::InvalidPathTemplate {
            template: template.to_owned(),
            problem: problem.to_owned(),
        };
        let Some(rest) = template.strip_prefix('/') else {
            return Err(invalid("it must start with `/`"));
        };
        if template.contains(['?', '#']) {
            return Err(invalid(
                "it must not contain a query or fragment (`?`, `#`); match on the path only",
            ));
        }
        let raw_segments: Vec<&str> = rest.split('/').collect();
        let last = raw_segments.len() - 1;
        let mut segments = Vec::with_capacity(raw_segments.len());
        // The leading `/` and every separator count as literal characters.
        let mut literal_len = raw_segments.len();
        for (index, raw) in raw_segments.iter().enumerate() {
            if raw.is_empty() && index != last {
                return Err(invalid(
                    "it contains an empty segment (`//`); remove the doubled slash",
                ));
            }
            let segment = parse_segment(raw).map_err(|problem| invalid(&problem))?;
            literal_len += match &segment {
                TemplateSegment::Literal(text) => text.len(),
                TemplateSegment::Placeholder { prefix, suffix } => prefix.len() + suffix.len(),
            };
            segments.push(segment);
        }
        Ok(PathTemplate {
            source: template.to_owned(),
            segments,
            literal_len,
        })
    }

    /// Whether the raw request path (without query) matches this template.
    /// Segment counts must agree, so a trailing slash is significant.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_by(path, TemplateSegment::matches)
    }

    /// Whether a vendor's router could take the raw request path for this template: segment by
    /// segment regardless of ASCII case, a literal segment with a `.` or `;` suffix too
    /// ([`TemplateSegment::loosely_matches`]). Every path [`PathTemplate::matches`] matches.
    pub fn loosely_matches(&self, path: &str) -> bool {
        self.matches_by(path, TemplateSegment::loosely_matches)
    }

    /// Whether each of the path's segments matches this template's, by `segment_matches`, and
    /// the counts agree.
    fn matches_by(
        &self,
        path: &str,
        segment_matches: impl Fn(&TemplateSegment, &[u8]) -> bool,
    ) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        // Split as bytes: `str::split` searches for a `char`, several times slower on paths this
        // short, and every call is matched here.
        let mut path_segments = rest.as_bytes().split(|&byte| byte == b'/');
        for template_segment in &self.segments {
            match path_segments.next() {
                Some(segment) if segment_matches(template_segment, segment) => {}
                _ => return false,
            }
        }
        path_segments.next().is_none()
    }

    /// The template text as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Number of literal characters (slashes included, placeholders excluded).
    /// Used as specificity: the more literal text, the more specific.
    pub fn literal_len(&self) -> usize {
        self.literal_len
    }

    /// Whether this template is, segment by segment, at least as specific as `other` (a
    /// literal where `other` has one or a placeholder; a placeholder with a prefix or suffix
    /// where `other` has a bare one): where both match a path, every router — literal first
    /// segment by segment, or most literal text first — picks this one.
    pub(crate) fn dominates(&self, other: &PathTemplate) -> bool {
        let rank = |segment: &TemplateSegment| match segment {
            TemplateSegment::Literal(_) => 2,
            TemplateSegment::Placeholder { prefix, suffix }
                if !prefix.is_empty() || !suffix.is_empty() =>
            {
                1
            }
            TemplateSegment::Placeholder { .. } => 0,
        };
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| rank(mine) >= rank(theirs))
    }

    /// Number of `/`-separated segments; equals the number of `/` in any path
    /// this template matches.
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// `segment` with its `%XX` escapes decoded (a `%` not followed by two hex digits kept as it
/// is).
fn percent_decoded(segment: &[u8]) -> Vec<u8> {
    let hex = |byte: u8| (byte as char).to_digit(16).map(|digit| digit as u8);
    let mut decoded = Vec::with_capacity(segment.len());
    let mut at = 0;
    while at < segment.len() {
        let escaped = (segment[at] == b'%')
            .then(|| Some(hex(*segment.get(at + 1)?)? * 16 + hex(*segment.get(at + 2)?)?))
            .flatten();
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                at += 3;
            }
            None => {
                decoded.push(segment[at]);
                at += 1;
            }
        }
    }
    decoded
}

fn parse_segment(raw: &str) -> Result<TemplateSegment, String> {
    let Some(open) = raw.find('{') else {
        if raw.contains('}') {
            return Err(format!("segment `{raw}` has `}}` without a matching `{{`"));
        }
        return Ok(TemplateSegment::Literal(raw.to_owned()));
    };
    let after_open = &raw[open + 1..];
    let Some(close) = after_open.find('}') else {
        return Err(format!("segment `{raw}` has `{{` without a matching `}}`"));
    };
    let name = &after_open[..close];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "placeholder `{{{name}}}` in segment `{raw}` must be a non-empty name of ASCII letters, digits or `_`"
        ));
    }
    let prefix = &raw[..open];
    let suffix = &after_open[close + 1..];
    if prefix.contains('}') || suffix.contains(['{', '}']) {
        return Err(format!(
            "segment `{raw}` has more than one placeholder or a stray brace; use at most one `{{name}}` per segment"
        ));
    }
    Ok(TemplateSegment::Placeholder {
        prefix: prefix.to_owned(),
        suffix: suffix.to_owned(),
    })
}
