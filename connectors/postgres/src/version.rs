//! What each PostgreSQL version can do, decided from its version number alone, never by
//! trying and failing. Every version-dependent statement cutover sends is chosen here.

/// The oldest server cutover supports (logical replication and pgoutput came with 10).
pub const OLDEST: u32 = 100000;

/// A server's version-dependent features, from `server_version_num`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `server_version_num`, for example 130012.
    pub version_num: u32,
}

impl Capabilities {
    pub fn new(version_num: u32) -> Self {
        Capabilities { version_num }
    }

    /// The major version (10, 11, ... 18).
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    /// Whether cutover can use this server at all.
    pub fn supported(&self) -> bool {
        self.version_num >= OLDEST
    }

    /// pgoutput sends values in their binary send format when asked (`binary`, 14+); older
    /// servers send text, which the decoder converts (see [`crate::text_values`]).
    pub fn binary_values(&self) -> bool {
        self.version_num >= 140000
    }

    /// `publish_via_partition_root` (13+): a partitioned table's changes are published under
    /// its own name. Before 13 a publication cannot hold a partitioned table at all.
    pub fn publish_via_root(&self) -> bool {
        self.version_num >= 130000
    }

    /// `pg_replication_slots.wal_status` and `max_slot_wal_keep_size` (13+).
    pub fn slot_wal_status(&self) -> bool {
        self.version_num >= 130000
    }

    /// `CREATE OR REPLACE TRIGGER` (14+).
    pub fn replace_trigger(&self) -> bool {
        self.version_num >= 140000
    }

    /// The word a trigger definition calls its function with: `EXECUTE FUNCTION` (11+), or
    /// the older `EXECUTE PROCEDURE` that 10 knows.
    pub fn execute_trigger_keyword(&self) -> &'static str {
        if self.version_num >= 110000 {
            "FUNCTION"
        } else {
            "PROCEDURE"
        }
    }

    /// Generated columns, `pg_attribute.attgenerated` (12+).
    pub fn generated_columns(&self) -> bool {
        self.version_num >= 120000
    }

    /// `GRANT SET ON PARAMETER` (15+): a role that is not a superuser may be allowed to set
    /// `session_replication_role`.
    pub fn parameter_grants(&self) -> bool {
        self.version_num >= 150000
    }

    /// The `CREATE_REPLICATION_SLOT` command for a logical pgoutput slot that exports a
    /// snapshot: the option list of 15+, `EXPORT_SNAPSHOT` before (10-14).
    pub fn create_slot_command(&self, quoted_name: &str, temporary: bool) -> String {
        let temporary = if temporary { " TEMPORARY" } else { "" };
        if self.version_num >= 150000 {
            format!("CREATE_REPLICATION_SLOT {quoted_name}{temporary} LOGICAL pgoutput (SNAPSHOT 'export')")
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {quoted_name}{temporary} LOGICAL pgoutput EXPORT_SNAPSHOT"
            )
        }
    }

    /// The pgoutput options for `START_REPLICATION` (the text inside its parentheses):
    /// protocol version 1 and the publication, with binary values where the server has them.
    pub fn pgoutput_options(&self, publication: &str) -> String {
        let mut options = format!(
            "proto_version '1', publication_names '{}'",
            publication.replace('\'', "''")
        );
        if self.binary_values() {
            options.push_str(", binary 'true'");
        }
        options
    }
}

/// Reads the capabilities of the server `client` is connected to; a server older than 10 is
/// refused (`role` names it in the message).
pub async fn read(
    client: &tokio_postgres::Client,
    role: &str,
) -> cutover_core::Result<Capabilities> {
    let num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| crate::error::classify(e, &format!("cannot read the {role}'s version")))?
        .get(0);
    let caps = Capabilities::new(num.max(0) as u32);
    if !caps.supported() {
        return Err(cutover_core::ConnectorError::fatal(format!(
            "the {role} runs PostgreSQL {}.{}, which has no logical replication (cutover needs 10 or later)",
            caps.version_num / 10000,
            caps.version_num / 100 % 100
        ))
        .with_hint("upgrade the server to PostgreSQL 10 or later first (pg_upgrade), then migrate it with cutover"));
    }
    Ok(caps)
}

/// `server_version_num` from a `server_version` string as the server reports it at startup
/// (`13.12 (Debian 13.12-1)`, `10.23`, `18beta1`).
pub fn parse_server_version(text: &str) -> Option<u32> {
    let digits = |s: &str| -> (u32, usize) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (s[..n].parse().unwrap_or(0), n)
    };
    let (major, n) = digits(text);
    if n == 0 {
        return None;
    }
    let rest = &text[n..];
    let minor = match rest.strip_prefix('.') {
        Some(r) => digits(r).0,
        None => 0,
    };
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        // 9.6.24: major 9.6, minor 24.
        let (second, _) = digits(rest.strip_prefix('.').unwrap_or(""));
        let third = rest
            .strip_prefix('.')
            .and_then(|r| r.split_once('.'))
            .map(|(_, t)| digits(t).0)
            .unwrap_or(0);
        Some(major * 10000 + second * 100 + third)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_the_server_prints_them() {
        assert_eq!(
            parse_server_version("13.12 (Debian 13.12-1.pgdg120+1)"),
            Some(130012)
        );
        assert_eq!(parse_server_version("10.23"), Some(100023));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("devel"), None);
    }

    #[test]
    fn each_version_gets_its_own_slot_syntax_and_options() {
        let v13 = Capabilities::new(130012);
        assert_eq!(
            v13.create_slot_command("\"s\"", true),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            v13.pgoutput_options("p'1"),
            "proto_version '1', publication_names 'p''1'"
        );
        assert!(!v13.binary_values() && v13.slot_wal_status() && !v13.replace_trigger());
        let v15 = Capabilities::new(150004);
        assert_eq!(
            v15.create_slot_command("\"s\"", false),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert!(v15.pgoutput_options("p").ends_with(", binary 'true'"));
        assert!(!Capabilities::new(120000).publish_via_root());
        assert!(!Capabilities::new(90624).supported());
    }
}
