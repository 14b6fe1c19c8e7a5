//! Kafka errors, classified once: what a retry can fix, what needs an operator, and what no
//! retry will ever fix for this message (poison).

use cutover_core::{ConnectorError, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Classifies an rdkafka error; `what` says what was being done. Broker addresses may appear in
/// the message, credentials (which live only in the sink's properties) never do.
pub fn classify(e: KafkaError, what: &str) -> ConnectorError {
    let code = e.rdkafka_error_code();
    let (kind, hint) = match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord,
        ) => (ErrorKind::Poison, None),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication,
        ) => (
            ErrorKind::Fatal,
            Some("grant the sink's principal write access (and create access for new topics), or fix its credentials"),
        ),
        Some(RDKafkaErrorCode::InvalidReplicationFactor) => (
            ErrorKind::Fatal,
            Some("set the sink's replication_factor to at most the number of brokers"),
        ),
        Some(RDKafkaErrorCode::InvalidPartitions | RDKafkaErrorCode::InvalidTopic) => (
            ErrorKind::Fatal,
            Some("check the sink's partitions and topic settings"),
        ),
        Some(RDKafkaErrorCode::TopicDeletionDisabled | RDKafkaErrorCode::PolicyViolation) => {
            (ErrorKind::Fatal, Some("create the topics by hand, as the broker's policy requires"))
        }
        _ => match &e {
            KafkaError::ClientConfig(..) => (
                ErrorKind::Fatal,
                Some("correct the librdkafka setting named in the message (sink properties)"),
            ),
            _ => (ErrorKind::Retryable, None),
        },
    };
    let mut err = match &e {
        // Its text carries the value, which may be a password (`sasl.password`): name the
        // setting and the reason only, and keep the error itself out of the chain.
        KafkaError::ClientConfig(_, description, key, _value) => ConnectorError::new(
            kind,
            format!("{what}: librdkafka refused the setting {key}: {description}"),
        ),
        _ => ConnectorError::new(kind, format!("{what}: {e}")).with_source(e),
    };
    if let Some(h) = hint {
        err = err.with_hint(h);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setting_is_named_without_its_value() {
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value".into(),
            "sasl.password".into(),
            "kafka-secret-value".into(),
        );
        let err = classify(e, "cannot create the Kafka producer");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("kafka-secret-value"), "{shown}");
        assert!(
            shown.contains("sasl.password") && shown.contains("Invalid value"),
            "{shown}"
        );
        assert_eq!(err.kind, ErrorKind::Fatal);
    }

    #[test]
    fn codes_map_to_kinds() {
        let kind = |e| classify(e, "x").kind;
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            ErrorKind::Poison
        );
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
            ErrorKind::Fatal
        );
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            ErrorKind::Retryable
        );
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::AllBrokersDown
            )),
            ErrorKind::Retryable
        );
    }
}
