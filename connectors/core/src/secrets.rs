//! The one place secrets are kept out of output. Every value read from the pipeline file (after
//! `${VAR}` expansion) is offered to [`register`] with its key; passwords in connection strings
//! and the values of password, secret and token keys are remembered. Everything cutover writes
//! (log lines, error messages, reports) passes through [`scrub`], which replaces each remembered
//! secret, as written and percent-decoded, with `***`.
//!
//! Connectors still avoid putting secrets in messages (a URL is shown without its password);
//! this is the net under them, for what a driver or a library says on its own.

use std::borrow::Cow;
use std::sync::RwLock;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are not masked in text: masking a one- or two-character password
/// everywhere it occurs would garble every line, and it would not be a secret worth the name.
const SHORTEST: usize = 3;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Offers one configuration value under `key` (its place in the file, e.g. `sink[0].url` or
/// `properties.sasl.password`). Remembered: the password of a connection string (URL userinfo
/// or a key=value `password=`), and the whole value of a key that names a password, secret,
/// token, credentials or key material.
pub fn register(key: &str, value: &str) {
    let key = key.to_ascii_lowercase();
    let last = key.rsplit([':', ' ']).next().unwrap_or(&key);
    let secret_key = [
        "password", "passwd", "secret", "token", "nkey", "seed", "creds",
    ]
    .iter()
    .any(|w| last.contains(w))
        || last.ends_with("masking.key")
        || last.ends_with(".key.pem");
    if secret_key {
        remember(value);
    }
    if let Some(pw) = url_password(value) {
        remember(pw);
    }
    for word in value.split_whitespace() {
        if let Some(pw) = word.strip_prefix("password=") {
            remember(pw.trim_matches('\''));
        }
    }
}

fn remember(secret: &str) {
    let mut forms = vec![secret.to_string()];
    let decoded = percent_decode(secret);
    if decoded != secret {
        forms.push(decoded);
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if form.chars().count() >= SHORTEST && !all.contains(&form) {
            all.push(form);
        }
    }
    // Longest first, so a secret that contains another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every remembered secret replaced by [`MASK`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// The password in `scheme://user:password@host...`, as written. The userinfo ends at the last
/// @ before the query: an unescaped @ (or /) in a password is refused elsewhere, but its tail
/// must not escape masking either.
fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let before_query = rest.split(['?', '#']).next().unwrap_or(rest);
    let (userinfo, _) = before_query.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// `%XX` escapes decoded (as UTF-8, lossily); anything else kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_as_written_and_decoded() {
        register(
            "sink[0].url",
            "postgres://app:p%40ss%3Aw%2Frd%25%C3%BCnit-one@db:5432/shop",
        );
        let decoded = "p@ss:w/rd%ünit-one";
        let line = format!("failed for {decoded} and p%40ss%3Aw%2Frd%25%C3%BCnit-one at db");
        let shown = scrub(&line);
        assert_eq!(shown, "failed for *** and *** at db");
    }

    #[test]
    fn an_unescaped_at_in_a_password_is_masked_to_the_host() {
        register("source.url", "postgres://app:tail@of-unit-two@db/x");
        assert_eq!(scrub("x tail@of-unit-two y"), "x *** y");
    }

    #[test]
    fn secret_keys_are_masked_and_other_values_are_not() {
        register("sink[1].properties.sasl.password", "kafka-unit-three");
        register("sink[1].properties.ssl.key.password", "keypass-unit-four");
        register("sink[1].topic", "orders-unit-five");
        register(
            "source.url",
            "host=db user=app password=kv-unit-six dbname=x",
        );
        let shown = scrub("kafka-unit-three keypass-unit-four orders-unit-five kv-unit-six");
        assert_eq!(shown, "*** *** orders-unit-five ***");
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_are_not_masked_everywhere() {
        register("sink[0].password", "ab");
        assert_eq!(scrub("abc"), "abc");
    }
}
