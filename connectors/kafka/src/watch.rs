//! What librdkafka says while it connects: its clients retry a refused TLS handshake or SASL
//! login by themselves and only report it through the error callback, so a request that then
//! times out would otherwise say "all brokers down" without the reason.

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A client context that remembers the last refusal no retry fixes (a certificate, a login)
/// and logs every librdkafka error at warn level.
///
/// Contract: clones share one record; [`Watch::refusal`] returns the newest refusal seen by
/// any client built with a clone. librdkafka's reasons name brokers, files and user names,
/// never passwords.
#[derive(Clone, Default)]
pub struct Watch {
    refusal: Arc<Mutex<Option<String>>>,
}

impl Watch {
    /// The last refused handshake or login, if any.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.lock().map(|r| r.clone()).unwrap_or(None)
    }
}

/// Whether an error callback reports a refusal that waiting will not cure.
fn is_refusal(error: &KafkaError, reason: &str) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || reason.contains("SSL handshake failed")
        || reason.contains("certificate verify failed")
        || reason.contains("SASL")
}

/// A consumer that only reads metadata (`cutover check` of an apply pipeline) needs nothing
/// more of its context.
impl rdkafka::consumer::ConsumerContext for Watch {}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal(&error, reason) {
            if let Ok(mut r) = self.refusal.lock() {
                *r = Some(reason.to_string());
            }
        }
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_kept_and_transient_errors_are_not() {
        let watch = Watch::default();
        let ctx = watch.clone();
        ctx.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(watch.refusal(), None);
        ctx.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://localhost:9093/bootstrap: SSL handshake failed: certificate verify failed",
        );
        assert!(watch
            .refusal()
            .unwrap()
            .contains("certificate verify failed"));
        ctx.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL SCRAM authentication failed: broker responded with unknown-user",
        );
        assert!(watch.refusal().unwrap().contains("unknown-user"));
    }
}
