//! Who a certificate speaks for. The identity is a SAN URI in the leaf
//! certificate, `entente://node/GBR` or `entente://principal/GBR/gbr.analyst`,
//! and it counts only if the chain is anchored in that nation's own CA
//! (invariant 4): a national CA cannot mint another nation's identity.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::label::Nation;

/// How every identity URI in a certificate's SAN starts.
pub const URI_PREFIX: &str = "entente://";

/// The SAN URI that marks a principal's certificate as its nation's
/// admin's: its nation's CA vouches for the role, so a node of another
/// nation can take an admin's signature without that nation's roster. Not
/// under [`URI_PREFIX`], so it is never read as a second identity.
pub const ADMIN_ROLE_URI: &str = "entente-role:admin";

/// Whether a leaf certificate carries [`ADMIN_ROLE_URI`] (its chain is
/// checked apart).
pub fn has_admin_role(leaf: &CertificateDer<'_>) -> Result<bool, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    Ok(san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .any(|name| matches!(name, GeneralName::URI(uri) if *uri == ADMIN_ROLE_URI)))
}

/// Who a certificate speaks for: a nation's node or one of its principals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The broker node of a nation.
    Node(Nation),
    /// A user or system account of a nation.
    Principal {
        /// The principal's nation, whose node it connects to.
        nation: Nation,
        /// The principal's name, such as `gbr.analyst`.
        name: String,
    },
}

impl Identity {
    /// The nation the identity belongs to.
    pub fn nation(&self) -> Nation {
        match self {
            Identity::Node(nation) | Identity::Principal { nation, .. } => *nation,
        }
    }

    /// The SAN URI that carries this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(nation) => format!("{URI_PREFIX}node/{nation}"),
            Identity::Principal { nation, name } => format!("{URI_PREFIX}principal/{nation}/{name}"),
        }
    }

    /// Parses an identity URI; `None` if it is not one (see [`Identity::uri`]).
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let nation = |code: &str| Nation::parse(code).filter(|n| n.as_str() == code);
        match parts.as_slice() {
            ["node", code] => Some(Identity::Node(nation(code)?)),
            ["principal", code, name] if !name.is_empty() => Some(Identity::Principal {
                nation: nation(code)?,
                name: (*name).to_owned(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(nation) => write!(f, "node {nation}"),
            Identity::Principal { name, nation } => write!(f, "principal {name} ({nation})"),
        }
    }
}

/// Why a certificate's identity was not accepted, or a trust store not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("no certificate was presented")]
    NoCertificate,
    /// The certificate is not valid DER X.509, or its SAN extension is malformed.
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The certificate has no `entente://` SAN URI, or one that does not parse.
    #[error("the certificate carries no Entente identity (a SAN URI starting {URI_PREFIX})")]
    NoIdentity,
    /// The certificate has more than one `entente://` SAN URI.
    #[error("the certificate carries more than one Entente identity")]
    SeveralIdentities,
    /// The claimed nation has no CA in the trust store.
    #[error("the certificate claims {0}, but no CA is trusted for {nation}", nation = .0.nation())]
    UnknownNation(Identity),
    /// The chain does not verify against the claimed nation's CA.
    #[error("the certificate claims {claimed}, but its chain is not anchored in {nation}'s CA: {cause}", nation = .claimed.nation())]
    WrongAnchor {
        /// The identity the certificate claims.
        claimed: Identity,
        /// Why the chain did not verify.
        cause: String,
    },
    /// The chain verifies, but the nation's CRL lists the certificate.
    #[error("the certificate of {0} has been revoked: {nation}'s CRL lists it", nation = .0.nation())]
    Revoked(Identity),
    /// A nation's CA could not be made into a verifier.
    #[error("cannot build the trust store for {nation}: {cause}")]
    TrustStore {
        /// The nation whose CA was refused.
        nation: Nation,
        /// Why it was refused.
        cause: String,
    },
    /// A node certificate's key is not Ed25519, so it cannot verify envelopes.
    #[error("the node certificate's key is not Ed25519")]
    NotEd25519,
}

/// The identity a leaf certificate claims, before any chain check.
pub fn claimed_identity(leaf: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if uri.starts_with(URI_PREFIX) {
                if found.is_some() {
                    return Err(IdentityError::SeveralIdentities);
                }
                found = Some(Identity::from_uri(uri).ok_or(IdentityError::NoIdentity)?);
            }
        }
    }
    found.ok_or(IdentityError::NoIdentity)
}

/// The raw Ed25519 public key of a node certificate, which verifies the
/// envelopes that node signs.
pub fn ed25519_public_key(cert: &CertificateDer<'_>) -> Result<Vec<u8>, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert.as_ref()).map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(IdentityError::NotEd25519);
    }
    Ok(spki.subject_public_key.data.to_vec())
}

struct NationTrust {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// One trust anchor per nation. A chain is checked only against the CA of
/// the nation it claims, never against the union of all CAs.
#[derive(Clone)]
pub struct TrustStore {
    nations: Arc<BTreeMap<Nation, NationTrust>>,
    all_roots: Arc<RootCertStore>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("nations", &self.nations.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TrustStore {
    /// `cas` holds each nation's CA certificate; `crls` the revocation
    /// lists to apply (any nation's CRL is matched to its issuer).
    pub fn new(
        cas: &BTreeMap<Nation, CertificateDer<'static>>,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<TrustStore, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut nations = BTreeMap::new();
        let mut all_roots = RootCertStore::empty();
        for (&nation, ca) in cas {
            let error = |cause: String| IdentityError::TrustStore { nation, cause };
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).map_err(|err| error(err.to_string()))?;
            all_roots.add(ca.clone()).map_err(|err| error(err.to_string()))?;
            let roots = Arc::new(roots);
            let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crls.iter().cloned())
                .allow_unknown_revocation_status()
                // A CRL past its next update no longer vouches for
                // anything: that nation's certificates are refused until
                // its CA re-signs it.
                .enforce_revocation_expiration()
                .build()
                .map_err(|err| error(err.to_string()))?;
            let server = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls.iter().cloned())
                .allow_unknown_revocation_status()
                // A CRL past its next update no longer vouches for
                // anything: that nation's certificates are refused until
                // its CA re-signs it.
                .enforce_revocation_expiration()
                .build()
                .map_err(|err| error(err.to_string()))?;
            nations.insert(nation, NationTrust { client, server });
        }
        Ok(TrustStore {
            nations: Arc::new(nations),
            all_roots: Arc::new(all_roots),
        })
    }

    /// Every nation's CA, for the subjects a server hints to clients.
    pub fn all_roots(&self) -> Arc<RootCertStore> {
        self.all_roots.clone()
    }

    fn anchor(&self, chain: &[CertificateDer<'_>]) -> Result<(Identity, &NationTrust), IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
        let claimed = claimed_identity(leaf)?;
        match self.nations.get(&claimed.nation()) {
            Some(trust) => Ok((claimed, trust)),
            None => Err(IdentityError::UnknownNation(claimed)),
        }
    }

    /// Invariant 4 for a certificate presented by a connecting party (a
    /// principal, or a peer node dialing in): the identity it claims, if and
    /// only if the chain is valid for client authentication under that
    /// nation's CA.
    pub fn identify_client(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Identity, IdentityError> {
        let (claimed, trust) = self.anchor(chain)?;
        trust
            .client
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map_err(|err| refusal(&claimed, err))?;
        Ok(claimed)
    }

    /// Invariant 4 for the certificate of a node this node dialed: valid for
    /// server authentication as `server_name` under the claimed nation's CA.
    pub fn identify_server(
        &self,
        chain: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<Identity, IdentityError> {
        let (claimed, trust) = self.anchor(chain)?;
        trust
            .server
            .verify_server_cert(&chain[0], &chain[1..], server_name, &[], now)
            .map_err(|err| refusal(&claimed, err))?;
        Ok(claimed)
    }
}

/// Why rustls refused a chain, keeping a revocation apart from a chain
/// that does not reach the nation's CA: an operator acts on each differently.
fn refusal(claimed: &Identity, err: rustls::Error) -> IdentityError {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
            IdentityError::Revoked(claimed.clone())
        }
        err => IdentityError::WrongAnchor {
            claimed: claimed.clone(),
            cause: err.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let gbr = Nation::parse("GBR").unwrap();
        for identity in [
            Identity::Node(gbr),
            Identity::Principal {
                nation: gbr,
                name: "gbr.analyst".to_owned(),
            },
        ] {
            assert_eq!(Identity::from_uri(&identity.uri()), Some(identity));
        }
        assert_eq!(Identity::from_uri("entente://node/gbr"), None);
        assert_eq!(Identity::from_uri("entente://node/GBR/x"), None);
        assert_eq!(Identity::from_uri("entente://principal/GBR/"), None);
        assert_eq!(Identity::from_uri("https://node/GBR"), None);
    }
}
