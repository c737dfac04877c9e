//! HAR 1.2 (`log.entries[]`), read whole. Each entry is checked on its own, so one odd entry
//! costs one malformed count, not the file. Read: `startedDateTime`; `request.method`,
//! `request.url` (absolute http/https), `request.headersSize` + `request.bodySize` as bytes out;
//! `response.status` (0 = no response), `response.headersSize` + `response.bodySize` (else
//! `response.content.size`) as bytes in. Sizes of -1 (unknown) count as 0. HAR names no caller.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    observation, parse_rfc3339, split_absolute_url, ImportError, ImportReport, RecordLocation,
};
use crate::Observation;

#[derive(Deserialize)]
struct Har<'a> {
    #[serde(borrow)]
    log: HarLog<'a>,
}

#[derive(Deserialize)]
struct HarLog<'a> {
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    started_date_time: Option<String>,
    request: Option<Request>,
    response: Option<Response>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    method: Option<String>,
    url: Option<String>,
    headers_size: Option<i64>,
    body_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    status: Option<i64>,
    headers_size: Option<i64>,
    body_size: Option<i64>,
    content: Option<Content>,
}

#[derive(Deserialize)]
struct Content {
    size: Option<i64>,
}

fn size(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

fn entry_observation(raw: &RawValue) -> Result<Observation, String> {
    let entry: Entry = serde_json::from_str(raw.get()).map_err(|error| {
        // The error's position is inside the entry; the message is what helps.
        let message = error.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        format!("not a HAR entry: {message}")
    })?;
    let request = entry.request.ok_or("no request")?;
    let url = request.url.ok_or("no request.url")?;
    let (destination, path, scheme) = split_absolute_url(&url).ok_or_else(|| {
        let scheme = url.split(':').next().unwrap_or_default();
        format!("request.url is not an http(s) URL ({scheme}:…)")
    })?;
    let method = request
        .method
        .filter(|m| !m.is_empty())
        .ok_or("no request.method")?;
    let started = entry.started_date_time.ok_or("no startedDateTime")?;
    let time = parse_rfc3339(&started)
        .ok_or_else(|| format!("startedDateTime `{started}` is not ISO 8601"))?;
    let mut observation = observation(destination, time);
    observation.scheme = Some(scheme);
    observation.method = Some(method);
    observation.path = Some(path);
    observation.bytes_out =
        size(request.headers_size).unwrap_or(0) + size(request.body_size).unwrap_or(0);
    if let Some(response) = entry.response {
        observation.status = response
            .status
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| *s != 0);
        let body = size(response.body_size)
            .or_else(|| size(response.content.and_then(|c| c.size)))
            .unwrap_or(0);
        observation.bytes_in = size(response.headers_size).unwrap_or(0) + body;
    }
    Ok(observation)
}

pub(super) fn import<R: BufRead>(
    mut input: R,
    on_observation: &mut impl FnMut(Observation),
    progress: &mut impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::new(super::LogFormat::Har);
    let mut bytes = Vec::new();
    loop {
        let chunk = input.fill_buf().map_err(|source| ImportError::Read {
            bytes_read: report.bytes_read,
            source,
        })?;
        if chunk.is_empty() {
            break;
        }
        let length = chunk.len();
        bytes.extend_from_slice(chunk);
        input.consume(length);
        let before = report.bytes_read;
        report.bytes_read += length as u64;
        if report.bytes_read / super::PROGRESS_EVERY_BYTES != before / super::PROGRESS_EVERY_BYTES {
            progress(report.bytes_read);
        }
    }
    progress(report.bytes_read);
    let har: Har = match serde_json::from_slice(&bytes) {
        Ok(har) => har,
        Err(error) => {
            let line = error.line() as u64;
            let message = error.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            // Valid JSON or not, told without building it (a `[0,0,…]` of N bytes would be a
            // tree of 16·N bytes and more).
            let reason = match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => format!(
                    "not a HAR file (expected {{\"log\": {{\"entries\": […]}}}}): {message}"
                ),
                Err(_) => format!("not JSON: {message}"),
            };
            report.malformed(RecordLocation::Line(line.max(1)), reason);
            return Ok(report);
        }
    };
    for (index, raw) in har.log.entries.iter().enumerate() {
        report.records_read += 1;
        match entry_observation(raw) {
            Ok(observation) => {
                report.observations += 1;
                on_observation(observation);
            }
            Err(reason) => report.malformed(RecordLocation::Entry(index as u64 + 1), reason),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(har: &str) -> (ImportReport, Vec<Observation>) {
        let mut observations = Vec::new();
        let report = import(har.as_bytes(), &mut |o| observations.push(o), &mut |_| {}).unwrap();
        (report, observations)
    }

    #[test]
    fn entries_become_observations() {
        let (report, observations) = read(
            r#"{"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": [
              {"startedDateTime": "2024-03-05T10:11:12.345+00:00", "time": 120,
               "request": {"method": "POST", "url": "https://api.openai.com/v1/chat/completions", "httpVersion": "HTTP/2",
                           "headers": [], "queryString": [], "cookies": [], "headersSize": 300, "bodySize": 200,
                           "postData": {"mimeType": "application/json", "text": "{\"model\":\"gpt-4o\"}"}},
               "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/2", "headers": [], "cookies": [],
                            "content": {"size": 5000, "mimeType": "application/json", "text": "{}"},
                            "redirectURL": "", "headersSize": -1, "bodySize": -1},
               "cache": {}, "timings": {"send": 0, "wait": 100, "receive": 20}},
              {"startedDateTime": "2024-03-05T10:11:13Z",
               "request": {"method": "GET", "url": "http://localhost:8080/health", "headersSize": -1, "bodySize": 0},
               "response": {"status": 0, "headersSize": -1, "bodySize": -1, "content": {"size": -1}}},
              {"startedDateTime": "2024-03-05T10:11:14Z", "request": {"method": "GET", "url": "data:image/png;base64,AAAA"}},
              {"startedDateTime": "yester\u001b[2J\nday", "request": {"method": "GET", "url": "https://a.example.com/"}},
              {"request": "not an object"}
            ]}}"#,
        );
        assert_eq!(report.records_read, 5);
        assert_eq!(report.observations, 2);
        assert_eq!(report.malformed, 3);
        let reasons: Vec<String> = report
            .malformed_examples
            .iter()
            .map(|m| format!("{}: {}", m.location, m.reason))
            .collect();
        assert!(
            reasons[0].starts_with("entry 3: request.url is not an http(s) URL (data:"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("entry 4: startedDateTime"),
            "{reasons:?}"
        );
        // The file's text quoted in a reason keeps no control character (printed, an escape
        // would move the terminal).
        assert!(!reasons[1].contains(char::is_control), "{reasons:?}");
        assert!(
            reasons[2].starts_with("entry 5: not a HAR entry"),
            "{reasons:?}"
        );
        let openai = &observations[0];
        assert_eq!((openai.host.as_str(), openai.port), ("api.openai.com", 443));
        assert_eq!(openai.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(
            (openai.bytes_out, openai.bytes_in, openai.status),
            (500, 5000, Some(200))
        );
        assert_eq!(openai.time_ms, 1_709_633_472_345);
        let local = &observations[1];
        assert_eq!(
            (local.host.as_str(), local.port, local.status),
            ("localhost", 8080, None)
        );
    }

    #[test]
    fn a_file_that_is_not_har_is_one_malformed_record() {
        let (report, observations) = read("{\"log\": {\n\"pages\": []}}");
        assert!(observations.is_empty());
        assert_eq!(report.malformed, 1);
        assert!(
            report.malformed_examples[0]
                .reason
                .starts_with("not a HAR file"),
            "{:?}",
            report.malformed_examples
        );
        let (report, _) = read("\n\nnot json");
        assert_eq!(
            report.malformed_examples[0].location,
            RecordLocation::Line(3)
        );
        assert!(report.malformed_examples[0].reason.starts_with("not JSON"));
    }
}
