//! The sink's security settings (librdkafka properties), checked when the pipeline file is
//! read and described for `cutover check`.
//!
//! librdkafka is built with OpenSSL here, so `security.protocol` may be `plaintext`, `ssl`,
//! `sasl_plaintext` or `sasl_ssl`, and `sasl.mechanism` `PLAIN`, `SCRAM-SHA-256`,
//! `SCRAM-SHA-512` or `OAUTHBEARER`. Kerberos (`GSSAPI`) is not built in.

use cutover_core::BuildContext;

/// The properties that name a file librdkafka reads when the client starts.
const FILE_KEYS: [&str; 4] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
];

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

fn get<'a>(properties: &'a [(String, String)], key: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Checks the security properties and resolves their file paths against the pipeline file's
/// directory (librdkafka would read them from the working directory). Errors name the
/// property (`properties.<key>`), never its value when it may be a secret, and the fix.
pub fn check(
    properties: &mut [(String, String)],
    ctx: &BuildContext<'_>,
) -> std::result::Result<(), String> {
    let place = |key: &str| format!("properties.{key}");
    for (key, value) in properties.iter_mut() {
        if FILE_KEYS.contains(&key.as_str()) && value != "probe" {
            let path = ctx.existing_file(&place(key), value)?;
            *value = path.to_string_lossy().into_owned();
        }
    }
    let protocol = get(properties, "security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    if !PROTOCOLS.contains(&protocol.as_str()) {
        return Err(ctx.fail(
            &place("security.protocol"),
            format!(
                "{protocol:?} is not a security protocol. Fix: write one of {}.",
                PROTOCOLS.join(", ")
            ),
        ));
    }
    let mechanism = get(properties, "sasl.mechanism").or(get(properties, "sasl.mechanisms"));
    if protocol.starts_with("sasl") {
        let mechanism = mechanism.unwrap_or("GSSAPI");
        if !MECHANISMS.contains(&mechanism) {
            return Err(ctx.fail(
                &place("sasl.mechanism"),
                format!(
                    "{mechanism:?} is not a SASL mechanism cutover's librdkafka has (Kerberos/GSSAPI is not built in, and librdkafka's default is GSSAPI). Fix: set sasl.mechanism to one of {}.",
                    MECHANISMS.join(", ")
                ),
            ));
        }
        if mechanism != "OAUTHBEARER" {
            for key in ["sasl.username", "sasl.password"] {
                if get(properties, key).is_none_or(str::is_empty) {
                    return Err(ctx.fail(
                        &place(key),
                        format!("{mechanism} needs {key}. Fix: set it (a password may come from ${{file:PATH}} or ${{VAR}})."),
                    ));
                }
            }
        }
    } else if mechanism.is_some() {
        return Err(ctx.fail(
            &place("sasl.mechanism"),
            format!(
                "a SASL mechanism is set but security.protocol is {protocol:?}, so it would not be used. Fix: set security.protocol to sasl_ssl (or sasl_plaintext)."
            ),
        ));
    }
    Ok(())
}

/// How the sink's connections are protected, for `cutover check`: the protocol, the CA and
/// client certificate files, the SASL mechanism and user. Never a password.
pub fn describe(properties: &[(String, String)]) -> String {
    let protocol = get(properties, "security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    let mut parts = Vec::new();
    if protocol.ends_with("ssl") {
        let ca = get(properties, "ssl.ca.location").unwrap_or("the system's CA store");
        let verify = match get(properties, "ssl.endpoint.identification.algorithm") {
            Some("none") => "certificate checked, host name NOT checked",
            _ => "certificate and host name checked",
        };
        parts.push(format!("TLS ({verify}; CA {ca})"));
        if let Some(cert) = get(properties, "ssl.certificate.location") {
            parts.push(format!("client certificate {cert}"));
        }
    } else {
        parts.push("not encrypted".into());
    }
    if protocol.starts_with("sasl") {
        let mechanism = get(properties, "sasl.mechanism")
            .or(get(properties, "sasl.mechanisms"))
            .unwrap_or("GSSAPI");
        let user = get(properties, "sasl.username").unwrap_or("-");
        parts.push(format!("SASL {mechanism} as {user}"));
        if mechanism == "PLAIN" && protocol == "sasl_plaintext" {
            parts.push("WARNING: the password crosses the network in clear; use sasl_ssl".into());
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn checked(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let dir = std::env::temp_dir();
        let place = |key: &str| format!("p.toml: sink[1].{key}");
        let expand = |v: &str, _k: &str| Ok(v.to_string());
        let routes = std::collections::BTreeMap::new();
        let ctx = BuildContext {
            name: "k",
            pipeline: "p",
            base_dir: &dir,
            routes: &routes,
            place: &place,
            expand: &expand,
        };
        let mut p = props(pairs);
        check(&mut p, &ctx).map(|()| p)
    }

    #[test]
    fn security_settings_are_checked_with_the_key_and_the_fix() {
        assert!(checked(&[]).is_ok());
        let e = checked(&[("security.protocol", "tls")]).unwrap_err();
        assert!(
            e.contains("properties.security.protocol") && e.contains("sasl_ssl"),
            "{e}"
        );
        let e = checked(&[("security.protocol", "SASL_SSL")]).unwrap_err();
        assert!(e.contains("GSSAPI") && e.contains("SCRAM-SHA-512"), "{e}");
        let e = checked(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "u"),
        ])
        .unwrap_err();
        assert!(e.contains("properties.sasl.password"), "{e}");
        let e = checked(&[("sasl.mechanism", "PLAIN")]).unwrap_err();
        assert!(e.contains("security.protocol"), "{e}");
        let e = checked(&[("ssl.ca.location", "no-such-ca.pem")]).unwrap_err();
        assert!(
            e.contains("properties.ssl.ca.location") && e.contains("no-such-ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn files_resolve_against_the_pipeline_directory_and_secrets_stay_out() {
        let dir = std::env::temp_dir();
        let file = dir.join("cutover-kafka-security-test-ca.pem");
        std::fs::write(&file, "x").unwrap();
        let p = checked(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "alice"),
            ("sasl.password", "pw-not-shown"),
            ("ssl.ca.location", "cutover-kafka-security-test-ca.pem"),
        ])
        .unwrap();
        assert_eq!(get(&p, "ssl.ca.location"), Some(file.to_str().unwrap()));
        let shown = describe(&p);
        assert!(shown.contains("SCRAM-SHA-512 as alice"), "{shown}");
        assert!(shown.contains("host name checked"), "{shown}");
        assert!(!shown.contains("pw-not-shown"), "{shown}");
        let plain = describe(&props(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "PLAIN"),
        ]));
        assert!(
            plain.contains("not encrypted") && plain.contains("WARNING"),
            "{plain}"
        );
    }
}
