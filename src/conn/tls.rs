//! TLS for replication connections, with rustls: libpq's `sslmode` semantics, root and client
//! certificates, SNI, and the `tls-server-end-point` channel-binding data for SCRAM-PLUS.
//!
//! What each mode checks (libpq's table):
//! - `disable`: no TLS. `allow`: plaintext first, TLS if the server insists. `prefer` (default):
//!   TLS if the server offers it, no certificate check.
//! - `require`: TLS or fail; the certificate is checked like `verify-ca` when a root
//!   certificate file exists, as libpq does.
//! - `verify-ca`: the chain must lead to a root in `sslrootcert` (default
//!   `~/.postgresql/root.crt`; `system` for the OS store). `verify-full`: also the host name.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use crate::error::Error;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plaintext, TLS if plaintext is refused.
    Allow,
    /// TLS if offered (the default).
    Prefer,
    /// TLS required.
    Require,
    /// TLS with a verified chain.
    VerifyCa,
    /// TLS with a verified chain and host name.
    VerifyFull,
}

impl SslMode {
    /// Parses a `sslmode` value.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(Error::Usage(format!("invalid sslmode value: \"{other}\""))),
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is unacceptable.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When TLS and the server allow it (the default).
    Prefer,
    /// Or fail.
    Require,
}

impl ChannelBinding {
    /// Parses a `channel_binding` value.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            other => {
                return Err(Error::Usage(format!(
                    "invalid channel_binding value: \"{other}\""
                )))
            }
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// The TLS settings of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert` (or the default `~/.postgresql/root.crt`, if it exists).
    pub root_cert: Option<RootCert>,
    /// Whether `sslrootcert` was given explicitly (it then goes into `primary_conninfo`).
    pub root_cert_explicit: bool,
    /// `sslcert` / `sslkey` (or the defaults, if both exist).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `sslcrl`: revoked certificates (PEM), checked when the chain is verified.
    pub crl: Option<PathBuf>,
    /// `sslnegotiation=direct` (17+): TLS from the first byte, ALPN `postgresql`.
    pub direct: bool,
    /// `channel_binding`.
    pub channel_binding: ChannelBinding,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            mode: SslMode::Prefer,
            root_cert: None,
            root_cert_explicit: false,
            client_cert: None,
            crl: None,
            direct: false,
            channel_binding: ChannelBinding::Prefer,
        }
    }
}

/// `~/.postgresql/<name>`, libpq's default place for TLS files.
pub fn default_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql").join(name))
}

fn tls_error(what: impl fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// Every PEM object of type `T` in the file at `path`; `what` names the file in errors
/// (`certificate file`, `CRL file`).
fn read_pem<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, Error> {
    let error = |e: rustls::pki_types::pem::Error| {
        tls_error(format!("could not read {what} \"{}\": {e}", path.display()))
    };
    T::pem_file_iter(path)
        .map_err(error)?
        .collect::<Result<_, _>>()
        .map_err(error)
}

/// The rustls configuration for these settings.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let verifier = Verifier::for_settings(settings, provider)?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &settings.client_cert {
        Some((cert, key)) => {
            check_key_permissions(key)?;
            let chain = read_pem(cert, "certificate file")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_error(format!(
                    "could not load private key file \"{}\": {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(tls_error)?
        }
        None => builder.with_no_client_auth(),
    };
    if settings.direct {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Ok(Arc::new(config))
}

/// The trusted roots: a PEM file's certificates, or the operating system's (those it cannot
/// use are skipped).
fn root_store(root: &RootCert) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            for cert in read_pem(path, "certificate file")? {
                roots.add(cert).map_err(tls_error)?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// libpq refuses a private key others can read.
fn check_key_permissions(key: &Path) -> Result<(), Error> {
    let meta = fs::metadata(key).map_err(|e| {
        tls_error(format!(
            "could not access private key file \"{}\": {e}",
            key.display()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 && meta.permissions().mode() & 0o037 != 0 {
        return Err(tls_error(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            key.display()
        )));
    }
    Ok(())
}

/// The server name for SNI and verification: host names as such, IP addresses as addresses.
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| tls_error(format!("invalid server name \"{host}\"")))
}

/// The `tls-server-end-point` channel-binding data (RFC 5929): the hash of the server
/// certificate, with the hash of its signature algorithm (MD5 and SHA-1 become SHA-256).
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert)?;
    // Known OIDs, DER content bytes.
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    if oid == ED25519 {
        // No hash in the signature algorithm: channel binding is not defined.
        return None;
    }
    Some(if SHA384.contains(&oid) {
        sha2::Sha384::digest(cert).to_vec()
    } else if SHA512.contains(&oid) {
        sha2::Sha512::digest(cert).to_vec()
    } else {
        sha2::Sha256::digest(cert).to_vec()
    })
}

/// Reads one DER TLV at the start of `input`: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der(cert)? else {
        return None;
    };
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    Some(oid)
}

/// How the server's certificate is checked, as `sslmode` and `sslrootcert` say:
/// - no chain check (`prefer`, `allow`, `require` without a root file): encryption without
///   authentication, as libpq; handshake signatures are still checked;
/// - the chain (`verify-ca`, `require` with a root file), with `sslcrl` if set;
/// - the chain and the host name (`verify-full`).
#[derive(Debug)]
struct Verifier {
    /// The chain check; `None` accepts any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host.
    check_name: bool,
    /// Its signature algorithms check the handshake.
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Verifier {
    /// The verifier for these settings; fails when a chain check has no root certificate or
    /// its files cannot be read.
    fn for_settings(
        settings: &TlsSettings,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, Error> {
        let (root, check_name) = match (settings.mode, &settings.root_cert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                let path = default_file("root.crt")
                    .unwrap_or_else(|| PathBuf::from("~/.postgresql/root.crt"));
                return Err(tls_error(format!(
                    "root certificate file \"{}\" does not exist\nHINT:  Either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.",
                    path.display()
                )));
            }
            (SslMode::VerifyFull, Some(root)) => (root, true),
            (SslMode::VerifyCa | SslMode::Require, Some(root)) => (root, false),
            _ => {
                return Ok(Self {
                    chain: None,
                    check_name: false,
                    provider,
                })
            }
        };
        let roots = Arc::new(root_store(root)?);
        let mut chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
        if let Some(crl) = &settings.crl {
            chain = chain.with_crls(read_pem::<CertificateRevocationListDer<'static>>(
                crl, "CRL file",
            )?);
        }
        Ok(Self {
            chain: Some(chain.build().map_err(tls_error)?),
            check_name,
            provider,
        })
    }

    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// A readable message for a failed handshake, libpq-like for the common cases.
pub fn handshake_error(e: &io::Error, host: &str) -> String {
    let text = e.to_string();
    if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!("server certificate does not match host name \"{host}\"")
    } else if text.contains("UnknownIssuer") {
        "SSL error: certificate verify failed: the server certificate is not signed by a trusted root (sslrootcert)".into()
    } else if text.contains("invalid peer certificate") {
        format!("SSL error: certificate verify failed: {text}")
    } else {
        format!("SSL error: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_bindings_parse() {
        assert_eq!(
            SslMode::parse("verify-full").ok(),
            Some(SslMode::VerifyFull)
        );
        assert!(SslMode::parse("bogus").is_err());
        assert!(SslMode::Require.requires_tls() && !SslMode::Prefer.requires_tls());
        assert_eq!(
            ChannelBinding::parse("require").ok(),
            Some(ChannelBinding::Require)
        );
        assert!(ChannelBinding::parse("x").is_err());
    }

    #[test]
    fn der_walk_finds_the_signature_algorithm() {
        // SEQUENCE { SEQUENCE {} , SEQUENCE { OID 1.2.840.10045.4.3.3 } }
        let cert = [
            0x30, 0x0e, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
            0x03, 0x03,
        ];
        assert_eq!(
            signature_algorithm_oid(&cert),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03][..])
        );
        assert_eq!(server_end_point(&cert).map(|h| h.len()), Some(48));
        assert_eq!(signature_algorithm_oid(&[0x30, 0x05, 0x30]), None);
    }
}
