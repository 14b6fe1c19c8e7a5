//! The pipeline text's places and values: `${VAR}` and `${file:PATH}` expansion, and errors
//! that name the file, line and column with the fix.

use std::collections::BTreeMap;

use toml::Spanned;

use super::ConfigError;

/// Expands `${VAR}` references, and `${file:PATH}` to the contents of a file (a Docker or
/// Kubernetes secret) without its trailing line break. A missing variable or unreadable file is
/// an error naming it (never its value). Every expanded value is offered to the secret mask.
pub(super) fn expand(
    text: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError(format!(
                "{key}: has an unclosed ${{. Fix: write ${{VARIABLE_NAME}}."
            )));
        };
        let name = &after[..end];
        let value = match name.strip_prefix("file:") {
            Some(path) => secret_file(path, key)?,
            None => env(name).ok_or_else(|| {
                ConfigError(format!(
                    "{key}: refers to the environment variable {name}, which is not set. Fix: export {name}=... before running cutover."
                ))
            })?,
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    cutover_core::secrets::register(key, &out);
    Ok(out)
}

/// The contents of a secret file, without the line break an editor or `echo` leaves at its end.
/// The whole contents are masked wherever cutover prints.
pub(super) fn secret_file(path: &str, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "{key}: cannot read the secret file {path}: {e}. Fix: mount the secret at that path, or correct the path in ${{file:...}} (relative paths start at the directory cutover runs in)."
        ))
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value).to_string();
    cutover_core::secrets::register(&format!("{key} (secret file)"), &value);
    Ok(value)
}

/// `file, line L, column C` for a byte offset of the pipeline text.
pub(super) fn place_at(origin: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{origin}, line {line}, column {column}")
}

/// Turns a TOML error into one line: file, line, column, what is wrong.
pub(super) fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let place = match e.span() {
        Some(span) => place_at(origin, text, span.start),
        None => origin.to_string(),
    };
    explained(place, e.message())
}

/// A key of sink `i` that is unknown, missing, of the wrong type, or a kind there is not: placed
/// at the key the message names (else at the sink's `kind`).
pub(super) fn sink_error(
    origin: &str,
    text: &str,
    i: usize,
    table: &BTreeMap<String, Spanned<toml::Value>>,
    message: &str,
) -> ConfigError {
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| !message.contains("variant"));
    let at = named
        .and_then(|k| table.get(k))
        .or_else(|| table.get("kind"))
        .or_else(|| table.values().next())
        .map(|v| v.span().start);
    let place = match at {
        Some(offset) => format!("{}: sink[{i}]", place_at(origin, text, offset)),
        None => format!("{origin}: sink[{i}]"),
    };
    explained(place, message)
}

/// `place: message. Fix: ...`, the fix chosen by what serde's message says.
pub(super) fn explained(place: String, message: &str) -> ConfigError {
    let message = message.trim().replace('\n', " ");
    let fix = if message.contains("invalid type") || message.contains("invalid value") {
        "give the key a value of the expected type"
    } else if message.contains("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("missing field") {
        "add the key"
    } else if message.contains("unknown variant") {
        "use one of the kinds listed"
    } else {
        "correct the TOML syntax"
    };
    ConfigError(format!("{place}: {message}. Fix: {fix}."))
}
