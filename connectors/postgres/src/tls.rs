//! TLS for every PostgreSQL connection cutover opens: the SQL sessions (through tokio-postgres)
//! and the replication connection ([`crate::replication`]), both with this module's rustls
//! configuration and certificate checks.
//!
//! The options are read from the connection string as libpq reads them: `sslmode` (`disable`,
//! `prefer` (the default), `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or
//! `system` for the machine's trust store), and `sslcert` with `sslkey` for a client certificate.
//! As in libpq, `require` with an `sslrootcert` verifies the chain (like `verify-ca`), and a
//! verifying mode without `sslrootcert` reads `~/.postgresql/root.crt`.
//!
//! Certificate and key files are read once, when the connection string is parsed, so a missing
//! or unreadable file is reported before anything connects, naming the file.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cutover_core::{ConnectorError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How much TLS a connection asks for, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked (unless a root certificate is given).
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Makes ring the process's rustls crypto provider. Two providers are linked (the replication
/// transport brings aws-lc-rs as well), so the libraries that ask rustls for the process's
/// default (the NATS and MongoDB drivers) need one chosen before their first TLS connection.
/// Call it first thing; calling it again does nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    System,
}

/// The TLS options of one connection string, with its certificates loaded.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    roots: Option<Roots>,
    client_cert: Option<(PathBuf, PathBuf)>,
    /// `None` when `mode` is `Disable`.
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTls({})", self.describe())
    }
}

/// The connection-string keys this module reads; they are removed before the rest is given to
/// tokio-postgres, which does not know them.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgTls {
    /// Takes the TLS options out of a libpq URL or key=value string. Returns the string without
    /// them, and the options with their files loaded. `role` names the connection in errors.
    pub fn split(url: &str, role: &str) -> Result<(String, PgTls)> {
        let (rest, pairs) = if url.contains("://") {
            split_url_query(url)
        } else {
            split_key_values(url)
        };
        let mut mode = None;
        let mut roots = None;
        let (mut cert, mut key) = (None, None);
        for (k, v) in pairs {
            match k.as_str() {
                "sslmode" => {
                    mode = Some(SslMode::parse(&v).ok_or_else(|| {
                        ConnectorError::fatal(format!(
                            "the {role} connection string has sslmode={v}, which is not a mode"
                        ))
                        .with_hint("use disable, prefer, require, verify-ca or verify-full")
                    })?)
                }
                "sslrootcert" if v == "system" => roots = Some(Roots::System),
                "sslrootcert" => roots = Some(Roots::File(PathBuf::from(v))),
                "sslcert" => cert = Some(PathBuf::from(v)),
                _ => key = Some(PathBuf::from(v)),
            }
        }
        // As libpq: the system's store trusts any publicly signed certificate, so only the
        // host name check makes it safe; sslrootcert=system means verify-full, and a weaker
        // mode with it is refused.
        if matches!(roots, Some(Roots::System)) {
            match mode {
                None => mode = Some(SslMode::VerifyFull),
                Some(SslMode::VerifyFull) => {}
                Some(weaker) => {
                    return Err(ConnectorError::fatal(format!(
                        "the {role} connection string has sslrootcert=system with sslmode={}: any publicly trusted certificate for any host name would pass",
                        weaker.as_str()
                    ))
                    .with_hint("use sslmode=verify-full with sslrootcert=system (or leave sslmode out), or give sslrootcert=/path/to/ca.pem of your own CA"));
                }
            }
        }
        let mut mode = mode.unwrap_or_default();
        if mode == SslMode::Require && roots.is_some() {
            mode = SslMode::VerifyCa;
        }
        if mode.verifies() && roots.is_none() {
            roots = Some(Roots::File(default_root_file().ok_or_else(|| {
                ConnectorError::fatal(format!(
                    "the {role} connection string has sslmode={} but no sslrootcert, and \
                     ~/.postgresql/root.crt does not exist",
                    mode.as_str()
                ))
                .with_hint(
                    "add sslrootcert=/path/to/ca.pem (the CA that signed the server's \
                     certificate), or sslrootcert=system to trust the machine's store",
                )
            })?));
        }
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConnectorError::fatal(format!(
                    "the {role} connection string has one of sslcert and sslkey without the other"
                ))
                .with_hint("give both: sslcert=/path/client.crt&sslkey=/path/client.key"))
            }
        };
        let mut tls = PgTls {
            mode,
            roots,
            client_cert,
            config: None,
        };
        if mode != SslMode::Disable {
            tls.config = Some(Arc::new(tls.client_config(role)?));
        }
        Ok((rest, tls))
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// One line for `cutover check`: the mode and what is trusted.
    pub fn describe(&self) -> String {
        let mut s = format!("sslmode={}", self.mode.as_str());
        match &self.roots {
            Some(Roots::File(p)) => s.push_str(&format!(", root certificates {}", p.display())),
            Some(Roots::System) => s.push_str(", the system's root certificates"),
            None => {}
        }
        if let Some((c, _)) = &self.client_cert {
            s.push_str(&format!(", client certificate {}", c.display()));
        }
        s
    }

    /// The tokio-postgres mode: it knows no verification levels (the verifier does them).
    pub(crate) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The connector tokio-postgres calls for a TLS handshake.
    pub(crate) fn connector(&self) -> MakeRustls {
        MakeRustls {
            config: self.config.clone(),
        }
    }

    fn client_config(&self, role: &str) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectorError::fatal(format!("cannot set up TLS: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.mode.verifies() {
            let roots = Arc::new(self.root_store(role)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| ConnectorError::fatal(format!("the {role} root certificates: {e}")))?;
            Arc::new(Verifier {
                webpki: Some(webpki),
                check_name: self.mode == SslMode::VerifyFull,
                provider,
            })
        } else {
            Arc::new(Verifier {
                webpki: None,
                check_name: false,
                provider,
            })
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.client_cert {
            Some((cert, key)) => {
                let chain = read_certificates(cert, role, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    file_error(role, "sslkey", key, &e.to_string())
                        .with_hint("give a PEM private key (PKCS#8, PKCS#1 or SEC1)")
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ConnectorError::fatal(format!(
                        "the {role} client certificate and key do not go together: {e}"
                    ))
                    .with_hint("sslkey must be the private key of the certificate in sslcert")
                })
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }

    fn root_store(&self, role: &str) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Some(Roots::File(path)) => {
                for cert in read_certificates(path, role, "sslrootcert")? {
                    store.add(cert).map_err(|e| {
                        file_error(
                            role,
                            "sslrootcert",
                            path,
                            &format!("a bad certificate: {e}"),
                        )
                    })?;
                }
            }
            Some(Roots::System) | None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(ConnectorError::fatal(format!(
                        "the {role} connection string has sslrootcert=system, and this machine's \
                         trust store holds no certificate"
                    ))
                    .with_hint(
                        "install the ca-certificates package, or give sslrootcert=/path/to/ca.pem",
                    ));
                }
            }
        }
        Ok(store)
    }
}

fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.exists().then_some(path)
}

fn read_certificates(path: &Path, role: &str, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| file_error(role, key, path, &e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(role, key, path, "it holds no PEM certificate"));
    }
    Ok(certs)
}

fn file_error(role: &str, key: &str, path: &Path, what: &str) -> ConnectorError {
    ConnectorError::fatal(format!(
        "the {role} connection string's {key} {}: {what}",
        path.display()
    ))
    .with_hint(format!("fix the path in {key}, or the file's permissions"))
}

/// Why a TLS handshake failed, for the error classifier: a certificate refused is fatal (a retry
/// meets the same certificate), with a hint.
#[derive(Debug)]
pub struct TlsRefused(pub String);

impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsRefused {}

/// The hint for a refused certificate.
pub fn refused_hint(message: &str) -> &'static str {
    if message.contains("NotValidForName") || message.contains("not valid for name") {
        "the server's certificate does not name the host in the connection string: connect by \
         a name the certificate holds, or use sslmode=verify-ca to check only the chain"
    } else {
        "check sslrootcert (the CA that signed the server's certificate) and the server's \
         certificate, or lower sslmode"
    }
}

/// Checks the server's certificate by the mode: nothing beyond the handshake's signatures
/// (`prefer`, `require`), the chain (`verify-ca`), or the chain and the name (`verify-full`).
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked after the chain: a wrong name means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres's TLS hook, over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsRefused;

    /// Called for every connection, even with `sslmode=disable` (where the handshake never
    /// starts): refusals wait for [`TlsConnect::connect`].
    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<RustlsConnect, TlsRefused> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_string()).ok(),
            domain: domain.to_string(),
        })
    }
}

pub(crate) struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    domain: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsRefused;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<RustlsStream<S>, TlsRefused>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or_else(|| TlsRefused("TLS is disabled (sslmode=disable)".into()))?;
            let name = self.name.ok_or_else(|| {
                TlsRefused(format!("{} is not a host name TLS can check", self.domain))
            })?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
                .map_err(|e| TlsRefused(format!("TLS handshake failed: {e}")))
        })
    }
}

/// A TLS session under tokio-postgres.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Splits `postgres://...?a=1&sslmode=require` into the URL without the TLS keys and those keys
/// with their percent-decoded values.
fn split_url_query(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if TLS_KEYS.contains(&k) {
            taken.push((k.to_string(), percent_decode(v)));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `host=a sslmode='verify-full' port=5432` into the string without the TLS keys and
/// those keys with their values (quotes and backslash escapes undone).
fn split_key_values(s: &str) -> (String, Vec<(String, String)>) {
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '=').is_some() {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next_if(|(_, c)| *c == '\'').is_some() {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\'' => break,
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        c => value.push(c),
                    }
                }
            } else {
                while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                    if c == '\\' {
                        value.extend(chars.next().map(|(_, c)| c));
                    } else {
                        value.push(c);
                    }
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(s[start..end].trim_end());
        }
    }
    (kept, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out_and_decoded() {
        let (rest, pairs) = split_url_query(
            "postgres://u:p@h:1/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@h:1/db?application_name=x");
        assert_eq!(
            pairs,
            vec![
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/tmp/ca.pem".to_string())
            ]
        );
        let (rest, pairs) = split_url_query("postgres://h/db?sslmode=disable");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn key_value_options_are_taken_out_with_quotes() {
        let (rest, pairs) = split_key_values(
            "host=h sslmode = 'verify-ca' password='a b\\'c' sslrootcert=/x/ca.pem dbname=d",
        );
        assert_eq!(rest, "host=h password='a b\\'c' dbname=d");
        assert_eq!(
            pairs,
            vec![
                ("sslmode".to_string(), "verify-ca".to_string()),
                ("sslrootcert".to_string(), "/x/ca.pem".to_string())
            ]
        );
    }

    #[test]
    fn the_system_store_is_taken_only_with_host_names_checked() {
        for weaker in ["require", "verify-ca", "prefer"] {
            let e = PgTls::split(
                &format!("postgres://h/db?sslmode={weaker}&sslrootcert=system"),
                "source",
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("sslrootcert=system with sslmode")
                    && e.to_string().contains("verify-full"),
                "{weaker}: {e}"
            );
        }
    }

    #[test]
    fn bad_options_are_fatal_and_name_the_fix() {
        let e = PgTls::split("postgres://h/db?sslmode=always", "source").unwrap_err();
        assert!(e.to_string().contains("sslmode=always"), "{e}");
        let e = PgTls::split(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/nope/ca.pem",
            "target",
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nope/ca.pem"), "{e}");
        let e = PgTls::split("postgres://h/db?sslcert=/a.crt", "source").unwrap_err();
        assert!(e.to_string().contains("sslkey"), "{e}");
        let (_, tls) = PgTls::split("postgres://h/db", "source").unwrap();
        assert_eq!(tls.mode(), SslMode::Prefer);
    }

    #[test]
    fn percent_decoding_leaves_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
