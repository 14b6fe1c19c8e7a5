//! The log subscriber: text or JSON lines on standard error, every line scrubbed of secrets.

use std::io::IsTerminal;

use super::LogFormat;

pub(super) fn init(format: LogFormat, live_progress: bool) {
    use tracing_subscriber::EnvFilter;
    // With a live progress line, only warnings are logged so the line stays readable.
    let default = if live_progress {
        "warn"
    } else {
        // The client libraries narrate every connection at info; their warnings still show.
        "info,tokio_postgres=warn,async_nats=warn,mongodb=warn,rdkafka=warn"
    };
    let filter = EnvFilter::try_from_env("CUTOVER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Standard error through [`cutover_core::secrets::scrub`]. The log formatter writes each
/// event in one call, so a secret never straddles two writes.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(cutover_core::secrets::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
