//! Validation of events against the CloudEvents 1.0 rules and citytwin's own.
//!
//! Every check pushes a [`Violation`] naming the attribute and the rule broken, so that a
//! client learns every problem with its event in one answer. The wording follows the spec:
//! `specversion must be "1.0"`, `source is not a URI-reference`, `time is not RFC 3339`.

use std::fmt;

use super::{Data, EcoString, Event, Location, Payload, RESERVED_ATTRIBUTES};

/// One broken rule: the attribute (or data path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The attribute, or a path into the data (`data.value`), or `events[3].time` in a batch.
    pub attribute: String,
    /// The rule broken, phrased to follow the attribute (`is required`, `must be "1.0"`).
    pub rule: String,
}

impl Violation {
    /// A violation of `rule` by `attribute`.
    pub fn new(attribute: impl Into<String>, rule: impl Into<String>) -> Self {
        Violation { attribute: attribute.into(), rule: rule.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.attribute, self.rule)
    }
}

/// Every problem found with one event (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    violations: Vec<Violation>,
}

impl ValidationError {
    /// Wraps a non-empty list of violations.
    ///
    /// # Panics
    /// When `violations` is empty: an error must say what is wrong.
    pub fn new(violations: Vec<Violation>) -> Self {
        assert!(!violations.is_empty(), "a ValidationError needs at least one violation");
        ValidationError { violations }
    }

    /// The violations, in the order found.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Prefixes every attribute with `prefix` (e.g. `events[3].`).
    #[must_use]
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for violation in &mut self.violations {
            violation.attribute.insert_str(0, prefix);
        }
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, violation) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

/// Whether `name` may name an extension attribute: 1 to 20 of `a-z0-9`, and not a reserved
/// attribute name.
pub fn is_valid_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED_ATTRIBUTES.contains(&name)
}

/// The CloudEvents String type excludes control characters (U+0000–U+001F, U+007F–U+009F)
/// and Unicode noncharacters.
pub(crate) fn check_string_chars(attribute: &str, value: &str, out: &mut Vec<Violation>) {
    // The usual case, printable ASCII, in one vectorised pass over the bytes.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return;
    }
    let bad = value.chars().find(|&c| {
        let code = c as u32;
        c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE
    });
    if let Some(c) = bad {
        out.push(Violation::new(attribute, format!("contains the forbidden character U+{:04X}", c as u32)));
    }
}

fn check_non_empty(attribute: &str, value: &str, out: &mut Vec<Violation>) {
    if value.is_empty() {
        out.push(Violation::new(attribute, "must be a non-empty string"));
    } else {
        check_string_chars(attribute, value, out);
    }
}

/// RFC 3986 `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Whether `text` is an RFC 3986 URI-reference: only the characters RFC 3986 allows, valid
/// percent-escapes, at most one `#`, brackets only around an IP literal host, and a valid
/// scheme when the first segment names one.
pub(crate) fn is_uri_reference(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || matches!(b, b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@')
            || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
        if !allowed {
            return false;
        }
        i += 1;
    }
    if text.matches('#').count() > 1 {
        return false;
    }
    // A colon before any of "/?#" means the text starts with a scheme.
    let first_delim = text.find(['/', '?', '#']).unwrap_or(text.len());
    if let Some(colon) = text[..first_delim].find(':')
        && !is_scheme(&text[..colon])
    {
        return false;
    }
    // Brackets only in the authority, around an IP literal.
    if text.contains(['[', ']']) {
        let Some(after) = text.find("//").map(|at| &text[at + 2..]) else {
            return false;
        };
        let authority = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        let open = authority.find('[');
        let close = authority.find(']');
        let in_authority = text.matches('[').count() == 1 && text.matches(']').count() == 1;
        if !(in_authority && matches!((open, close), (Some(o), Some(c)) if o < c)) {
            return false;
        }
    }
    true
}

/// [`is_uri_reference`] for an event's `source`, remembering the latest valid one per thread:
/// a feed's events share their source, so a batch checks it once, not once per event.
fn is_source_uri_reference(source: &EcoString) -> bool {
    thread_local! {
        static LAST_VALID: std::cell::RefCell<EcoString> = const { std::cell::RefCell::new(EcoString::new()) };
    }
    LAST_VALID.with_borrow_mut(|last| {
        // The same string (a clone of the last one) is equal without comparing bytes.
        let same = last.len() == source.len() && (last.as_ptr() == source.as_ptr() || last == source);
        if !last.is_empty() && same {
            return true;
        }
        let valid = is_uri_reference(source);
        if valid {
            last.clone_from(source);
        }
        valid
    })
}

/// Whether `text` is an absolute URI (a URI-reference with a scheme).
pub(crate) fn is_absolute_uri(text: &str) -> bool {
    is_uri_reference(text) && text.split_once(':').is_some_and(|(scheme, _)| is_scheme(scheme))
}

/// RFC 2046 media type: `type/subtype` tokens with optional `; name=value` parameters.
pub(crate) fn check_content_type(attribute: &str, value: &str, out: &mut Vec<Violation>) {
    fn is_token(text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
    }
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let valid_essence = essence.split_once('/').is_some_and(|(ty, sub)| is_token(ty) && is_token(sub));
    let valid_params = parts.all(|param| {
        param.split_once('=').is_some_and(|(name, val)| {
            let val = val.trim();
            is_token(name.trim()) && (is_token(val) || (val.len() >= 2 && val.starts_with('"') && val.ends_with('"')))
        })
    });
    if !(valid_essence && valid_params) {
        out.push(Violation::new(attribute, "is not an RFC 2046 media type like \"application/json\""));
    }
}

/// Whether a media type says the data is JSON (absent means JSON).
pub(crate) fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Whether a media type says the data is text (carried as a string, not bytes).
pub(crate) fn is_text_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence.starts_with("text/") || essence == "application/xml" || essence.ends_with("+xml")
}

pub(super) fn check_event(event: &Event, out: &mut Vec<Violation>) {
    check_non_empty("id", &event.id, out);
    if event.source.is_empty() {
        out.push(Violation::new("source", "must be a non-empty URI-reference"));
    } else if !is_source_uri_reference(&event.source) {
        out.push(Violation::new("source", "is not a URI-reference"));
    }
    check_non_empty("type", event.ty.as_str(), out);
    if let Some(subject) = &event.rare.subject {
        check_non_empty("subject", subject, out);
    }
    if let Some(content_type) = &event.rare.datacontenttype {
        check_content_type("datacontenttype", content_type, out);
    }
    if let Some(schema) = &event.rare.dataschema
        && !is_absolute_uri(schema)
    {
        out.push(Violation::new("dataschema", "is not an absolute URI"));
    }
    check_extensions(event, out);
    check_data(event, out);
}

fn check_extensions(event: &Event, out: &mut Vec<Violation>) {
    let ext = &event.ext;
    let strings = [
        ("correlationid", ext.rare.correlationid.as_deref()),
        ("causationid", ext.rare.causationid.as_deref()),
        ("organization", ext.organization.as_deref()),
        ("region", ext.rare.region.as_deref()),
    ];
    for (name, value) in strings {
        if let Some(value) = value {
            check_non_empty(name, value, out);
        }
    }
    for (name, value) in &ext.rare.other {
        if !is_valid_extension_name(name) {
            out.push(Violation::new(
                name.clone(),
                "is not a valid extension attribute name (1 to 20 characters of a-z and 0-9, not a reserved name)",
            ));
        } else if super::CITYTWIN_EXTENSIONS.contains(&name.as_str()) {
            out.push(Violation::new(name.clone(), "is a citytwin extension and must use its typed field"));
        }
        if let super::ExtensionValue::String(text) = value {
            check_string_chars(name, text, out);
        }
    }
    if let Some(cell) = ext.h3cell
        && let Some(location) = event.location()
        && location.check().is_ok()
    {
        let expected = location.cell(cell.resolution());
        if expected != Some(cell) {
            let expected = expected.map(|c| c.to_string()).unwrap_or_default();
            out.push(Violation::new(
                "h3cell",
                format!(
                    "{cell} does not contain the event's location ({}, {}); at resolution {} that is {expected}",
                    location.lat,
                    location.lng,
                    u8::from(cell.resolution())
                ),
            ));
        }
    }
}

fn check_data(event: &Event, out: &mut Vec<Violation>) {
    let Some(data) = &event.data else { return };
    match (event.kind(), data) {
        (Some(kind), Data::Payload(payload)) => {
            if payload.kind() != kind {
                out.push(Violation::new("data", format!("holds a {} payload but type is {kind}", payload.kind())));
            }
            if !is_json_content_type(event.rare.datacontenttype.as_deref()) {
                out.push(Violation::new("datacontenttype", format!("must be JSON for {kind}")));
            }
            check_payload(payload, out);
        }
        (Some(kind), Data::Json(value)) => {
            let reason = match Payload::deserialize_as(kind, value) {
                Ok(_) => "is JSON but not decoded into its typed payload".to_owned(),
                Err(error) => error.to_string(),
            };
            out.push(Violation::new("data", format!("does not match the schema of {kind}: {reason}")));
        }
        (Some(kind), Data::Binary(_)) => {
            out.push(Violation::new("data", format!("must be a JSON object for {kind}, not binary")));
        }
        (None, Data::Payload(payload)) => {
            out.push(Violation::new("data", format!("holds a {} payload but type is {}", payload.kind(), event.ty)));
        }
        (None, Data::Json(_) | Data::Binary(_)) => {}
    }
}

fn check_location(path: &str, location: &Location, out: &mut Vec<Violation>) {
    if let Err(rule) = location.check() {
        let (field, rule) = rule.split_once(' ').unwrap_or(("", rule));
        out.push(Violation::new(format!("{path}.{field}"), rule));
    }
}

fn check_metric(path: &str, metric_type: &str, value: f64, unit: &super::Unit, out: &mut Vec<Violation>) {
    if metric_type.is_empty() {
        out.push(Violation::new(format!("{path}.metric_type"), "must be a non-empty string"));
    }
    if !value.is_finite() {
        out.push(Violation::new(format!("{path}.value"), "must be a finite number"));
    }
    if unit.as_str().is_empty() {
        out.push(Violation::new(
            format!("{path}.unit"),
            "must name a unit (UCUM code like \"ug/m3\" or symbol like \"μg/m³\")",
        ));
    }
}

fn check_payload(payload: &Payload, out: &mut Vec<Violation>) {
    if let Some(asset_id) = payload.asset_id()
        && asset_id.is_empty()
    {
        out.push(Violation::new("data.asset_id", "must be a non-empty string"));
    }
    if let Some(location) = payload.location() {
        check_location("data.location", &location, out);
    }
    match payload {
        Payload::MetricRecorded(m) => check_metric("data", &m.metric_type, m.value, &m.unit, out),
        Payload::MetricBatchIngested(batch) => {
            if batch.readings.is_empty() {
                out.push(Violation::new("data.readings", "must hold at least one reading"));
            }
            for (i, reading) in batch.readings.iter().enumerate() {
                check_metric(&format!("data.readings[{i}]"), &reading.metric_type, reading.value, &reading.unit, out);
            }
        }
        Payload::BatteryLow(b) => {
            if !(0.0..=100.0).contains(&b.battery_pct) {
                out.push(Violation::new("data.battery_pct", "must be within 0..=100"));
            }
            if b.threshold_pct.is_some_and(|t| !(0.0..=100.0).contains(&t)) {
                out.push(Violation::new("data.threshold_pct", "must be within 0..=100"));
            }
        }
        Payload::AlertTriggered(alert) => {
            if alert.alert_id.is_empty() {
                out.push(Violation::new("data.alert_id", "must be a non-empty string"));
            }
            if alert.rule_id.is_empty() {
                out.push(Violation::new("data.rule_id", "must be a non-empty string"));
            }
        }
        Payload::WeatherForecastUpdated(w) if w.valid_to < w.valid_from => {
            out.push(Violation::new("data.valid_to", "must not be before valid_from"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_source_answers_as_the_full_check_does() {
        let sources = ["/sensors/a", "/sensors/a", "bad source", "/sensors/a", "a%zz", "/sensors/b", "/sensors/a", ""];
        for source in sources.iter().chain(sources.iter().rev()) {
            let source = EcoString::from(*source);
            assert_eq!(is_source_uri_reference(&source), is_uri_reference(&source), "{source:?}");
        }
    }

    #[test]
    fn uri_references() {
        for good in [
            "/sensors/air_quality/sensor_001",
            "https://city.example/sensors?id=1#frag",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "sensor_001",
            "mailto:ops@city.example",
            "http://[::1]:8080/x",
            "a%20b",
            "",
        ] {
            assert!(is_uri_reference(good), "{good:?} should be a URI-reference");
        }
        for bad in ["has space", "a%2", "a%zz", "1http://x", "a#b#c", "<x>", "caf\u{e9}", "x[1]", "a\"b"] {
            assert!(!is_uri_reference(bad), "{bad:?} should not be a URI-reference");
        }
        assert!(is_absolute_uri("https://schemas.city.example/metric/v1"));
        assert!(!is_absolute_uri("/relative/path"));
    }

    #[test]
    fn extension_names() {
        assert!(is_valid_extension_name("correlationid"));
        assert!(is_valid_extension_name("x1"));
        assert!(!is_valid_extension_name("Upper"));
        assert!(!is_valid_extension_name("with_underscore"));
        assert!(!is_valid_extension_name("averyveryverylongname1"));
        assert!(!is_valid_extension_name(""));
        assert!(!is_valid_extension_name("data"));
    }

    #[test]
    fn media_types() {
        let check = |text: &str| {
            let mut out = Vec::new();
            check_content_type("datacontenttype", text, &mut out);
            out.is_empty()
        };
        assert!(check("application/json"));
        assert!(check("application/cloudevents+json; charset=utf-8"));
        assert!(check("text/plain;charset=\"utf-8\""));
        assert!(!check("json"));
        assert!(!check("application/"));
        assert!(!check("application/json; charset"));
        assert!(is_json_content_type(None));
        assert!(is_json_content_type(Some("application/vnd.city+json")));
        assert!(!is_json_content_type(Some("text/plain")));
    }
}
