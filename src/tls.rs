//! rustls configurations for quinn: TLS 1.3 only, ALPN `entente/1`,
//! client certificates required from everyone, and certificate checks that
//! go through [`TrustStore`], so every handshake enforces invariant 4.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::identity::{Identity, IdentityError, TrustStore};
use crate::wire::ALPN;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificates, key or settings.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn could not use the rustls configuration.
    #[error("TLS configuration is unusable for QUIC: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificate_error(err: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

const MTU_UPPER_BOUND: u16 = 65527;

/// Keep-alives detect a dead link within seconds, so peer links re-dial.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .unwrap_or(quinn::VarInt::MAX.into()),
    ));
    // One long-lived stream per connection, opened by the dialer.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(1u8.into());
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    transport.mtu_discovery_config(Some(mtu));
    Arc::new(transport)
}

/// Accepts a client certificate only if it chains to the CA of the nation
/// it claims. Whether that identity is admitted here is the node's call,
/// after the handshake, so it can close with a reason that says why.
#[derive(Debug)]
struct NationalClientVerifier {
    trust: TrustStore,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for NationalClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        self.trust
            .identify_client(&chain, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(certificate_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts a server certificate only if it is the node of `expected`,
/// anchored in that nation's CA.
#[derive(Debug)]
struct NodeServerVerifier {
    trust: TrustStore,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        // `Error::Other` displays its cause in full, which is what the
        // person at the dialing end needs to read.
        let identity = self
            .trust
            .identify_server(&chain, server_name, now)
            .map_err(|err| rustls::Error::Other(OtherError(Arc::new(err))))?;
        if identity != self.expected {
            return Err(rustls::Error::Other(OtherError(Arc::new(WrongNode {
                expected: self.expected.clone(),
                found: identity,
            }))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("expected the {expected}, but the server is {found}")]
struct WrongNode {
    expected: Identity,
    found: Identity,
}

/// The key a node's QUIC retry tokens are sealed with. A node keeps one
/// for its whole life, across every server config it installs: a new key
/// would void the tokens of dialers in the middle of a retry whenever the
/// config changes (a reload, a cut), and they would have to start over.
pub fn new_token_key() -> Result<Arc<dyn quinn::crypto::HandshakeTokenKey>, TlsError> {
    let mut master = [0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut master)
        .map_err(|_| TlsError::Quic("no system randomness for the retry token key".into()))?;
    Ok(Arc::new(
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&master),
    ))
}

/// The server side of a node; `token_key` from [`new_token_key`].
pub fn server_config(
    trust: &TrustStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(NationalClientVerifier {
        trust: trust.clone(),
        hints: trust.all_roots().subjects(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    // No resumption: a resumed TLS 1.3 session skips the client
    // certificate check, so a nation cut out (or a certificate revoked)
    // since the first handshake would get back in. Every handshake is a
    // full one, and sees the CAs and CRLs in force.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|err| TlsError::Quic(err.to_string()))?;
    let mut config = quinn::ServerConfig::new(Arc::new(quic), token_key);
    config.transport_config(transport());
    Ok(config)
}

/// The dialing side: a principal connecting to its node, or a node to a
/// peer. `expected` is the node identity the server must prove.
pub fn client_config(
    trust: &TrustStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    expected: Identity,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for_protocol(trust, chain, key, expected, ALPN)
}

/// As [`client_config`], offering the ALPN protocol `alpn` instead of the
/// current one (how a client of another protocol version looks).
pub fn client_config_for_protocol(
    trust: &TrustStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    expected: Identity,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(NodeServerVerifier {
        trust: trust.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    // `dangerous` only because the verifier is our own: it still runs
    // webpki, against the expected nation's CA alone.
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|err| TlsError::Quic(err.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}
