//! Operation path templates such as `/v1/charges/{id}` or
//! `/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`.
//!
//! This module only checks that a template is well formed; matching request
//! paths against templates is the gateway's job.

/// A request path segment's name, as operations are matched: the segment up to its first `;`.
/// What follows is its path parameters (RFC 3986 §3.3), which servers that read them (Tomcat,
/// Jetty, Spring) drop before routing, so `search;x` is `search`. Templates may not hold `;`.
pub fn segment_name(segment: &str) -> &str {
    segment.split(';').next().unwrap_or(segment)
}

/// Why a path template was rejected: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub message: String,
    pub fix: String,
}

fn reject(message: impl Into<String>, fix: impl Into<String>) -> Result<String, TemplateError> {
    Err(TemplateError {
        message: message.into(),
        fix: fix.into(),
    })
}

/// Checks `template` and returns its *shape*: the template with every
/// placeholder name erased (`/v1/charges/{}`). Two templates with the same
/// shape match the same request paths.
pub(crate) fn check_path_template(template: &str) -> Result<String, TemplateError> {
    if !template.starts_with('/') {
        return reject(
            format!("path `{template}` does not start with '/'"),
            format!("write it as `/{template}`"),
        );
    }
    // A request path with an empty segment is refused (`400 invalid_path`), so such an
    // operation could never match.
    if template.contains("//") {
        return reject(
            format!("path `{template}` has an empty segment (`//`)"),
            "remove the extra '/'",
        );
    }
    let mut shape = String::with_capacity(template.len());
    let mut names: Vec<&str> = Vec::new();
    let mut placeholder_in_segment = false;
    let mut rest = template;
    while let Some(character) = rest.chars().next() {
        match character {
            '?' | '#' => {
                return reject(
                    format!("path `{template}` contains '{character}'"),
                    "remove the query string or fragment; operations match the path only",
                );
            }
            ';' => {
                return reject(
                    format!("path `{template}` contains ';'"),
                    "leave path parameters out: a request is matched on each segment up to its \
                     first ';', as servers that read them route it",
                );
            }
            '}' => {
                return reject(
                    format!("path `{template}` has a '}}' without a matching '{{'"),
                    "write placeholders as `{name}`",
                );
            }
            '{' => {
                if placeholder_in_segment {
                    return reject(
                        format!("path `{template}` has two placeholders in one segment"),
                        "use one placeholder per '/'-separated segment (it may share the segment \
                         with fixed text, e.g. `{Sid}.json`); match `{name}.{ext}` as one `{file}`",
                    );
                }
                let Some(end) = rest.find('}') else {
                    return reject(
                        format!("path `{template}` has a '{{' without a matching '}}'"),
                        "close the placeholder with '}'",
                    );
                };
                let name = &rest[1..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return reject(
                        format!("path `{template}` has an invalid placeholder `{{{name}}}`"),
                        "name placeholders with letters, digits and '_' only, e.g. `{id}`",
                    );
                }
                if names.contains(&name) {
                    return reject(
                        format!("path `{template}` uses placeholder `{{{name}}}` twice"),
                        "give each placeholder in a path a different name",
                    );
                }
                names.push(name);
                shape.push_str("{}");
                placeholder_in_segment = true;
                rest = &rest[end + 1..];
                continue;
            }
            c if c.is_whitespace() || c.is_control() => {
                return reject(
                    format!("path `{template}` contains whitespace or a control character"),
                    "percent-encode it (e.g. %20) or remove it",
                );
            }
            _ => {
                shape.push(character);
                if character == '/' {
                    placeholder_in_segment = false;
                }
            }
        }
        rest = &rest[character.len_utf8()..];
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::check_path_template;

    fn check(template: &str, expect: &str) {
        let actual = match check_path_template(template) {
            Ok(shape) => format!("ok {shape}"),
            Err(error) => format!("error {}", error.message),
        };
        assert_eq!(actual, expect, "template {template:?}");
    }

    #[test]
    fn templates() {
        check("/v1/charges", "ok /v1/charges");
        check("/v1/charges/{id}", "ok /v1/charges/{}");
        check(
            "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json",
            "ok /2010-04-01/Accounts/{}/Messages/{}.json",
        );
        check(
            "/a/{x}.{y}",
            "error path `/a/{x}.{y}` has two placeholders in one segment",
        );
        check("/", "ok /");
        check(
            "/v1//charges",
            "error path `/v1//charges` has an empty segment (`//`)",
        );
        check(
            "v1/charges",
            "error path `v1/charges` does not start with '/'",
        );
        check(
            "/v1/{a}{b}",
            "error path `/v1/{a}{b}` has two placeholders in one segment",
        );
        check(
            "/v1/{id",
            "error path `/v1/{id` has a '{' without a matching '}'",
        );
        check(
            "/v1/id}",
            "error path `/v1/id}` has a '}' without a matching '{'",
        );
        check(
            "/v1/{}",
            "error path `/v1/{}` has an invalid placeholder `{}`",
        );
        check(
            "/v1/{a-b}",
            "error path `/v1/{a-b}` has an invalid placeholder `{a-b}`",
        );
        check(
            "/v1/{a/b}",
            "error path `/v1/{a/b}` has an invalid placeholder `{a/b}`",
        );
        check(
            "/v1/{a}/{a}",
            "error path `/v1/{a}/{a}` uses placeholder `{a}` twice",
        );
        check("/v1?x=1", "error path `/v1?x=1` contains '?'");
        check("/v1/items;v=1", "error path `/v1/items;v=1` contains ';'");
        check("/v1#top", "error path `/v1#top` contains '#'");
        check(
            "/v1/a b",
            "error path `/v1/a b` contains whitespace or a control character",
        );
    }
}
