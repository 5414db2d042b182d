//! The national PKI of a network: one CA per nation, a node certificate
//! per nation, a client certificate per principal (rcgen), the on-disk
//! layout, and loading it back into a [`TrustStore`].
//!
//! Layout under the certs folder (all PEM; keys are written 0600):
//! ```text
//! <NATION>/ca.crt  <NATION>/ca.key          the nation's CA
//! <NATION>/node.crt  <NATION>/node.key      the nation's node
//! <NATION>/<principal>.crt  .key            each principal of the nation
//! <NATION>/ca.crl                           certificates the CA revoked
//! ```
//! All keys are Ed25519; the node key also signs envelopes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, PKCS_ED25519,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::identity::{Identity, IdentityError, TrustStore};
use crate::label::Nation;
use crate::policy::Policy;

/// The folder `entente` uses when `--certs` is not given.
pub const DEFAULT_CERTS_DIR: &str = "certs";

const CA_VALIDITY_DAYS: i64 = 10 * 365;
const LEAF_VALIDITY_DAYS: i64 = 2 * 365;
/// How long a CRL says it stays current. Verifiers here do not enforce it
/// (rustls ignores `next_update` unless asked), so it is advisory: a
/// nation re-signs its CRL whenever it revokes.
const CRL_VALIDITY_DAYS: i64 = 30;

/// Why a PKI could not be generated, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The nation is not in the network file.
    #[error("{0} is not a nation of the network file")]
    UnknownNation(Nation),
    /// The principal is not in the network file.
    #[error("`{0}` is not a principal of the network file; add it under [[principals]] first")]
    UnknownPrincipal(String),
    /// The CA key needed is another nation's, and not here.
    #[error("{path} is not here: only {nation}, which holds its CA key, issues {nation}'s certificates")]
    NotOurCa {
        /// Whose CA.
        nation: Nation,
        /// Where its key would be.
        path: PathBuf,
    },
    /// A member bundle that cannot be taken.
    #[error("the member bundle {path} is refused: {cause}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// Generating would overwrite this existing file, and `--force` was not given.
    #[error("{0} already exists; pass --force to replace the existing PKI (this overwrites its keys)")]
    Exists(PathBuf),
    /// A file or folder could not be written.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A certificate or key file could not be read or parsed.
    #[error("cannot read {path}: {cause}; run `entente certs init` to create the PKI")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        cause: String,
    },
    /// rcgen could not generate a key or certificate.
    #[error("certificate generation failed for {what}: {cause}")]
    Generate {
        /// What was being generated, such as `the GBR CA`.
        what: String,
        /// rcgen's error.
        cause: String,
    },
    /// The certificate file of the identity to revoke does not exist.
    #[error(
        "no certificate for {identity}: {} does not exist; check the name and nation \
         (`entente certs init` creates a certificate for every node and principal of the network)",
        path.display()
    )]
    MissingCert {
        /// The identity whose certificate was looked for.
        identity: Identity,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A certificate file is not the one its place in the layout says.
    #[error(
        "{path} does not hold the certificate of {identity}: {cause}; check the name and nation \
         (if the file is damaged, `entente certs init --force` reissues the whole PKI)"
    )]
    CertMismatch {
        /// The identity whose certificate this file should be.
        identity: Identity,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// The name cannot be an identity's: it would not survive in a
    /// certificate's SAN URI, and could name a file outside its nation's folder.
    #[error("`{0}` is not a valid principal name: it must be non-empty and contain no `/`")]
    InvalidName(String),
    /// A nation's CRL file exists but cannot be used.
    #[error(
        "{path} is not a usable CRL: {cause}; restore it from a backup, or remove it \
         (removing it un-revokes every certificate it listed; revoke them again)"
    )]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// Why it cannot be used.
        cause: String,
    },
    /// The CA certificates could not be made into a trust store.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where each file of a network's PKI lives.
#[derive(Debug, Clone)]
pub struct PkiLayout {
    root: PathBuf,
}

impl PkiLayout {
    /// The layout of the certs folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> PkiLayout {
        PkiLayout { root: root.into() }
    }

    /// The certs folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of a nation's CA, node and principal files.
    pub fn nation_dir(&self, nation: Nation) -> PathBuf {
        self.root.join(nation.as_str())
    }

    /// A nation's CA certificate file.
    pub fn ca_cert(&self, nation: Nation) -> PathBuf {
        self.nation_dir(nation).join("ca.crt")
    }

    /// A nation's CA private key file.
    pub fn ca_key(&self, nation: Nation) -> PathBuf {
        self.nation_dir(nation).join("ca.key")
    }

    /// A nation's certificate revocation list (PEM), signed by its CA.
    pub fn crl(&self, nation: Nation) -> PathBuf {
        self.nation_dir(nation).join("ca.crl")
    }

    /// The certificate and key files of a node or principal.
    pub fn cert_and_key(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let stem = match identity {
            Identity::Node(_) => "node",
            Identity::Principal { name, .. } => name.as_str(),
        };
        let dir = self.nation_dir(identity.nation());
        (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")))
    }

    /// Whether a PKI has been generated here (any nation's CA exists).
    pub fn exists_for(&self, policy: &Policy) -> bool {
        policy.nations().keys().any(|&n| self.ca_cert(n).exists())
    }
}

/// A nation's certificate authority, able to issue identities.
pub struct NationalCa {
    nation: Nation,
    cert: Certificate,
    key: KeyPair,
}

/// A freshly issued certificate and its private key, in PEM.
pub struct Issued {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM-encoded.
    pub key_pem: String,
}

impl Issued {
    /// The certificate, DER-encoded (tests read it; the node reads files).
    #[cfg(test)]
    pub fn cert_der(&self) -> CertificateDer<'static> {
        // The PEM was produced by rcgen a moment ago, so it always parses.
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("rcgen PEM parses")
    }
}

fn generation_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |err| PkiError::Generate {
        what,
        cause: err.to_string(),
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks that run slightly behind between nations.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

impl NationalCa {
    /// A new self-signed CA for `nation`, with a fresh Ed25519 key.
    pub fn generate(nation: Nation) -> Result<NationalCa, PkiError> {
        let what = format!("the {nation} CA");
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(generation_error(&what))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Entente");
        name.push(DnType::CommonName, format!("{nation} national CA"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(generation_error(&what))?;
        Ok(NationalCa { nation, cert, key })
    }

    /// A nation's CA as [`generate`] wrote it, read back from `layout` so it
    /// can sign again. The issuer name and key are the original's, so what
    /// it signs (CRLs) verifies against the CA certificate nodes trust.
    pub fn load(layout: &PkiLayout, nation: Nation) -> Result<NationalCa, PkiError> {
        let cert_path = layout.ca_cert(nation);
        let key_path = layout.ca_key(nation);
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|err| read_error(&cert_path, err))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| read_error(&key_path, err))?;
        let original = read_cert(&cert_path)?;
        let (_, parsed) =
            X509Certificate::from_der(original.as_ref()).map_err(|err| read_error(&cert_path, err))?;
        // With another key, the CRLs it signs would fail verification, and
        // rustls then refuses every identity of the nation, not just the
        // revoked ones.
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Read {
                path: key_path,
                cause: format!("it is not the key of {}", cert_path.display()),
            });
        }
        let cert = params
            .self_signed(&key)
            .map_err(generation_error(format!("the {nation} CA")))?;
        Ok(NationalCa { nation, cert, key })
    }

    /// The nation this CA issues identities for.
    pub fn nation(&self) -> Nation {
        self.nation
    }

    /// The CA certificate, DER-encoded.
    #[cfg(test)]
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA's own certificate and key, for writing to disk.
    pub fn issued(&self) -> Issued {
        Issued {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
        }
    }

    /// Issues a certificate for `identity`. The CA does not refuse an
    /// identity of another nation: that is what lets tests build the forged
    /// certificates that invariant 4 must reject. `hosts` are DNS names or
    /// IP addresses the certificate is also valid for (a node's address).
    pub fn issue(&self, identity: &Identity, hosts: &[String]) -> Result<Issued, PkiError> {
        self.issue_with_role(identity, hosts, false)
    }

    /// As [`NationalCa::issue`]; `admin` also marks the certificate as an
    /// admin's of its nation (`identity::ADMIN_ROLE_URI`), which is what
    /// lets other nations' nodes take its signature on a resolution
    /// without knowing this nation's roster.
    pub fn issue_with_role(
        &self,
        identity: &Identity,
        hosts: &[String],
        admin: bool,
    ) -> Result<Issued, PkiError> {
        let now = OffsetDateTime::now_utc();
        // A day of slack for clocks that run slightly behind between nations.
        let (not_before, not_after) = (now - Duration::days(1), now + Duration::days(LEAF_VALIDITY_DAYS));
        self.issue_valid(identity, hosts, admin, not_before, not_after)
    }

    fn issue_valid(
        &self,
        identity: &Identity,
        hosts: &[String],
        admin: bool,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        let what = identity.to_string();
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(generation_error(&what))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, format!("Entente {}", identity.nation()));
        name.push(
            DnType::CommonName,
            match identity {
                Identity::Node(nation) => format!("{nation} node"),
                Identity::Principal { name, .. } => name.clone(),
            },
        );
        params.distinguished_name = name;
        let uri = identity.uri().try_into().map_err(generation_error(&what))?;
        params.subject_alt_names.push(SanType::URI(uri));
        if admin {
            let role = crate::identity::ADMIN_ROLE_URI
                .to_owned()
                .try_into()
                .map_err(generation_error(&what))?;
            params.subject_alt_names.push(SanType::URI(role));
        }
        for host in hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(generation_error(&what))?),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            // A node both accepts connections and dials its peers.
            Identity::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Identity::Principal { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = (not_before, not_after);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(generation_error(&what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The host part of a `host:port` address, without IPv6 brackets.
pub fn address_host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// What `generate` wrote.
#[derive(Debug, Default)]
pub struct GeneratedPki {
    /// National CAs created.
    pub nations: usize,
    /// Node certificates issued.
    pub nodes: usize,
    /// Principal certificates issued.
    pub principals: usize,
}

/// Creates the whole PKI of a network under `layout`. Without `force`, it
/// refuses to touch anything if any key it would write already exists.
pub fn generate(policy: &Policy, layout: &PkiLayout, force: bool) -> Result<GeneratedPki, PkiError> {
    let nations: Vec<Nation> = policy.nations().keys().copied().collect();
    generate_for(policy, layout, &nations, force)
}

/// Creates one nation's PKI under `layout`: its CA, its node's
/// certificate and its principals' certificates, and nothing of any other
/// nation's, so its CA key is written nowhere but its own folder. What a
/// nation's operator runs (`entente certs init --nation`); its partners
/// get its public part as a bundle ([`export_bundle`]).
pub fn generate_nation(
    policy: &Policy,
    layout: &PkiLayout,
    nation: Nation,
    force: bool,
) -> Result<GeneratedPki, PkiError> {
    generate_for(policy, layout, &[nation], force)
}

fn generate_for(
    policy: &Policy,
    layout: &PkiLayout,
    nations: &[Nation],
    force: bool,
) -> Result<GeneratedPki, PkiError> {
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let mut summary = GeneratedPki::default();
    for &nation in nations {
        let Some(nation_policy) = policy.nation(nation) else {
            return Err(PkiError::UnknownNation(nation));
        };
        let ca = NationalCa::generate(nation)?;
        let ca_files = ca.issued();
        files.push((layout.ca_cert(nation), ca_files.cert_pem, false));
        files.push((layout.ca_key(nation), ca_files.key_pem, true));
        let node = Identity::Node(nation);
        let issued = ca.issue(&node, &[address_host(&nation_policy.address).to_owned()])?;
        push_pair(&mut files, layout, &node, issued);
        summary.nations += 1;
        summary.nodes += 1;
        for principal in policy.principals().filter(|p| p.nation == nation) {
            let identity = Identity::Principal {
                nation,
                name: principal.name.clone(),
            };
            let issued = ca.issue_with_role(&identity, &[], principal.is_admin())?;
            push_pair(&mut files, layout, &identity, issued);
            summary.principals += 1;
        }
    }
    if !force {
        if let Some((path, _, _)) = files.iter().find(|(path, _, _)| path.exists()) {
            return Err(PkiError::Exists(path.clone()));
        }
    }
    for (path, contents, secret) in &files {
        write_file(path, contents, *secret)?;
    }
    // A CRL left from a replaced CA carries the same issuer name but the
    // old key: rustls would match it to the new CA, fail its signature and
    // refuse every identity of the nation. Its serials are of replaced
    // certificates, so dropping it revokes nothing still in use.
    for &nation in nations {
        let crl = layout.crl(nation);
        match std::fs::remove_file(&crl) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(PkiError::Write {
                    path: crl,
                    cause: err,
                })
            }
            _ => {}
        }
    }
    Ok(summary)
}

/// What a nation gives its partners: its CA certificate, its node's
/// certificate and address, and its current CRL. Nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBundle {
    /// The nation, such as GBR.
    pub nation: String,
    /// Where its node listens (`host:port`).
    pub address: String,
    /// Its CA certificate, PEM.
    pub ca: String,
    /// Its node's certificate, PEM, issued by that CA.
    pub node: String,
    /// Its CRL, PEM, signed by that CA (absent if it has none yet).
    #[serde(default)]
    pub crl: Option<String>,
}

impl MemberBundle {
    /// Its CA certificate's fingerprint, as a coalition file pins it.
    pub fn ca_fingerprint(&self) -> Result<String, PkiError> {
        let ca = CertificateDer::from_pem_slice(self.ca.as_bytes()).map_err(|err| PkiError::Read {
            path: PathBuf::from(format!("{}'s bundle", self.nation)),
            cause: format!("its CA certificate: {err}"),
        })?;
        Ok(crate::config::format_fingerprint(&ca_fingerprint(&ca)))
    }
}

/// The member bundle of `nation`, from `layout` (its own PKI).
pub fn export_bundle(policy: &Policy, layout: &PkiLayout, nation: Nation) -> Result<MemberBundle, PkiError> {
    let table = policy.nation(nation).ok_or(PkiError::UnknownNation(nation))?;
    let ca = read_text(&layout.ca_cert(nation))?;
    let (node, _) = layout.cert_and_key(&Identity::Node(nation));
    let node = read_text(&node)?;
    let crl = match std::fs::read_to_string(layout.crl(nation)) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(read_error(&layout.crl(nation), err)),
    };
    Ok(MemberBundle {
        nation: nation.to_string(),
        address: table.address.clone(),
        ca,
        node,
        crl,
    })
}

/// Takes a partner's member bundle into `layout`: its CA certificate, its
/// node's certificate and its CRL. Refused, with the reason, if it names a
/// nation outside the network file, this PKI's own nation (whose CA key is
/// here), a node certificate its CA did not issue, that claims another
/// identity or is expired, or a CRL its CA did not sign. Returns the
/// nation.
pub fn import_bundle(policy: &Policy, layout: &PkiLayout, path: &Path) -> Result<Nation, PkiError> {
    let refused = |cause: String| PkiError::Bundle {
        path: path.to_owned(),
        cause,
    };
    let text = read_text(path)?;
    let bundle: MemberBundle = toml::from_str(&text).map_err(|err| refused(err.to_string()))?;
    let nation = Nation::parse(&bundle.nation)
        .filter(|n| n.as_str() == bundle.nation && policy.nation(*n).is_some())
        .ok_or_else(|| refused(format!("`{}` is not a nation of the network file", bundle.nation)))?;
    if layout.ca_key(nation).exists() {
        return Err(refused(format!(
            "{nation}'s CA key is in {}: this is {nation}'s own PKI, not a partner's",
            layout.root().display()
        )));
    }
    let ca = CertificateDer::from_pem_slice(bundle.ca.as_bytes())
        .map_err(|err| refused(format!("its CA certificate: {err}")))?;
    let found = ca_fingerprint(&ca);
    if let Some(pinned) = policy.nation(nation).and_then(|table| table.ca_fingerprint) {
        if pinned != found {
            return Err(refused(format!(
                "its CA certificate has the fingerprint {}, but the coalition file pins {} for {nation}: \
                 it is not the CA the coalition agreed on",
                crate::config::format_fingerprint(&found),
                crate::config::format_fingerprint(&pinned)
            )));
        }
    }
    let node = CertificateDer::from_pem_slice(bundle.node.as_bytes())
        .map_err(|err| refused(format!("its node certificate: {err}")))?;
    // The node certificate must check out under that CA alone, as every
    // node will check it (invariant 4): issued by it, valid now, and
    // claiming that nation's node.
    let trust = TrustStore::new(&BTreeMap::from([(nation, ca.clone())]), &[])
        .map_err(|err| refused(err.to_string()))?;
    let host = address_host(&bundle.address).to_owned();
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|err| refused(format!("its address {host}: {err}")))?;
    match trust.identify_server(std::slice::from_ref(&node), &server_name, UnixTime::now()) {
        Ok(Identity::Node(of)) if of == nation => {}
        Ok(other) => {
            return Err(refused(format!(
                "its node certificate is {other}'s, not {nation}'s node's"
            )))
        }
        Err(err) => {
            return Err(refused(format!(
                "its node certificate does not check out under its CA: {err}"
            )))
        }
    }
    if let Some(crl) = &bundle.crl {
        let der = CertificateRevocationListDer::from_pem_slice(crl.as_bytes())
            .map_err(|err| refused(format!("its CRL: {err}")))?;
        let (_, parsed) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|err| refused(format!("its CRL: {err}")))?;
        let (_, ca_parsed) = X509Certificate::from_der(ca.as_ref())
            .map_err(|err| refused(format!("its CA certificate: {err}")))?;
        parsed
            .verify_signature(ca_parsed.public_key())
            .map_err(|err| refused(format!("its CRL is not signed by its CA ({err})")))?;
        if let Some(next_update) = parsed
            .next_update()
            .filter(|at| at.to_datetime() < OffsetDateTime::now_utc())
        {
            return Err(refused(format!(
                "its CRL expired at {}: ask {nation} for a bundle with a renewed one (entente certs renew-crl --nation {nation}, then certs export)",
                next_update.to_datetime()
            )));
        }
    }
    write_file(&layout.ca_cert(nation), &bundle.ca, false)?;
    write_file(
        &layout.cert_and_key(&Identity::Node(nation)).0,
        &bundle.node,
        false,
    )?;
    match &bundle.crl {
        Some(crl) => write_atomically(&layout.crl(nation), crl)?,
        None => match std::fs::remove_file(layout.crl(nation)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(PkiError::Write {
                    path: layout.crl(nation),
                    cause: err,
                })
            }
            _ => {}
        },
    }
    Ok(nation)
}

/// Issues (or renews) one principal's certificate and key under its
/// nation's CA, as the network file describes it (an admin's carries the
/// admin role), touching nothing else. The CA's key must be in `layout`:
/// only the principal's own nation can do this.
pub fn issue_principal(policy: &Policy, layout: &PkiLayout, name: &str) -> Result<Identity, PkiError> {
    let principal = policy
        .principal(name)
        .ok_or_else(|| PkiError::UnknownPrincipal(name.to_owned()))?;
    let identity = Identity::Principal {
        nation: principal.nation,
        name: principal.name.clone(),
    };
    if Identity::from_uri(&identity.uri()).as_ref() != Some(&identity) {
        return Err(PkiError::InvalidName(name.to_owned()));
    }
    if !layout.ca_key(principal.nation).exists() {
        return Err(PkiError::NotOurCa {
            nation: principal.nation,
            path: layout.ca_key(principal.nation),
        });
    }
    let ca = NationalCa::load(layout, principal.nation)?;
    let (cert, key) = layout.cert_and_key(&identity);
    let pair = ca.issue_with_role(&identity, &[], principal.is_admin())?;
    write_file(&key, &pair.key_pem, true)?;
    write_file(&cert, &pair.cert_pem, false)?;
    Ok(identity)
}

/// Issues a certificate for each principal of `policy` that has none yet
/// in an existing PKI, such as an admin added to the network file after
/// `certs init`, signed by its nation's CA as read back from `layout`. A
/// nation whose CA is not there is left alone. Returns who got one.
pub fn issue_missing(policy: &Policy, layout: &PkiLayout) -> Result<Vec<Identity>, PkiError> {
    let mut issued = Vec::new();
    for &nation in policy.nations().keys() {
        if !layout.ca_cert(nation).exists() || !layout.ca_key(nation).exists() {
            continue;
        }
        let missing: Vec<(Identity, bool)> = policy
            .principals()
            .filter(|p| p.nation == nation)
            .map(|p| {
                let identity = Identity::Principal {
                    nation,
                    name: p.name.clone(),
                };
                (identity, p.is_admin())
            })
            .filter(|(identity, _)| !layout.cert_and_key(identity).0.exists())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let ca = NationalCa::load(layout, nation)?;
        for (identity, admin) in missing {
            let (cert, key) = layout.cert_and_key(&identity);
            let pair = ca.issue_with_role(&identity, &[], admin)?;
            write_file(&key, &pair.key_pem, true)?;
            write_file(&cert, &pair.cert_pem, false)?;
            issued.push(identity);
        }
    }
    Ok(issued)
}

fn push_pair(
    files: &mut Vec<(PathBuf, String, bool)>,
    layout: &PkiLayout,
    identity: &Identity,
    issued: Issued,
) {
    let (cert, key) = layout.cert_and_key(identity);
    files.push((cert, issued.cert_pem, false));
    files.push((key, issued.key_pem, true));
}

/// Writes a file; a secret (a private key) is created with mode 0600 so it
/// is never readable by others, even for an instant.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let error = |cause| PkiError::Write {
        path: path.to_owned(),
        cause,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if secret { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(error)?;
        // An existing file keeps its old mode on open; set it explicitly.
        if secret {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(error)?;
        }
        file.write_all(contents.as_bytes()).map_err(error)
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        options
            .open(path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .map_err(error)
    }
}

/// Reads a PEM certificate file.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_file(path).map_err(|err| PkiError::Read {
        path: path.to_owned(),
        cause: err.to_string(),
    })
}

/// Reads a PEM private key file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| PkiError::Read {
        path: path.to_owned(),
        cause: err.to_string(),
    })
}

/// The SHA-256 of a CA certificate's DER: what a coalition file's
/// `ca_fingerprint` pins.
pub fn ca_fingerprint(ca: &CertificateDer<'_>) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, ca.as_ref()).as_ref());
    out
}

/// The trust store of a network: every nation's CA, each trusted only for
/// its own nation's identities, and every nation's CRL.
pub fn load_trust_store(policy: &Policy, layout: &PkiLayout) -> Result<TrustStore, PkiError> {
    Ok(read_trust_material(policy, layout)?.trust_store(&BTreeSet::new())?)
}

/// What a node trusts, as read from disk: each nation's CA and the CRLs
/// that nations have published. Kept apart from [`TrustStore`] so that a
/// node can rebuild its store without a cut-out nation's CA without
/// reading the files again.
#[derive(Debug, Clone)]
pub struct TrustMaterial {
    /// Each nation's CA certificate.
    pub cas: BTreeMap<Nation, CertificateDer<'static>>,
    /// The CRL of each nation that has one, each verified against its CA.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Each nation whose CRL is past its next update, with when it
    /// expired (RFC 3339): its certificates are refused in handshakes
    /// until its CA re-signs the CRL (`entente certs renew-crl`).
    pub expired_crls: BTreeMap<Nation, String>,
    /// Each nation whose CA certificate in the certs folder is not the one
    /// the coalition file pins, with the fingerprint it has: that CA is
    /// left out of `cas`, so none of its nation's identities is trusted.
    pub mismatched_cas: BTreeMap<Nation, String>,
    /// Each nation whose CA certificate is not in the certs folder yet
    /// (its bundle not imported): none of its identities is trusted.
    pub missing_cas: BTreeSet<Nation>,
}

impl TrustMaterial {
    /// The trust store of every CA except those of the `excluding` nations,
    /// whose identities it then refuses as [`IdentityError::UnknownNation`].
    pub fn trust_store(&self, excluding: &BTreeSet<Nation>) -> Result<TrustStore, IdentityError> {
        let cas: BTreeMap<Nation, CertificateDer<'static>> = self
            .cas
            .iter()
            .filter(|(nation, _)| !excluding.contains(nation))
            .map(|(&nation, ca)| (nation, ca.clone()))
            .collect();
        TrustStore::new(&cas, &self.crls)
    }
}

/// Every nation's CA certificate, and the CRL of every nation that has one.
/// A CRL file that exists must parse and be signed by its nation's CA:
/// rustls would otherwise refuse every identity of that nation.
pub fn read_trust_material(policy: &Policy, layout: &PkiLayout) -> Result<TrustMaterial, PkiError> {
    // A nation may start its node before every partner's bundle is in.
    let mut missing_cas = BTreeSet::new();
    let mut cas = BTreeMap::new();
    for &nation in policy.nations().keys() {
        let path = layout.ca_cert(nation);
        if !path.exists() {
            missing_cas.insert(nation);
            continue;
        }
        cas.insert(nation, read_cert(&path)?);
    }
    let mut mismatched_cas = BTreeMap::new();
    cas.retain(|&nation, ca| {
        let found = ca_fingerprint(ca);
        let pinned = policy.nation(nation).and_then(|table| table.ca_fingerprint);
        if pinned.is_some_and(|pinned| pinned != found) {
            mismatched_cas.insert(nation, crate::config::format_fingerprint(&found));
            return false;
        }
        true
    });
    let mut crls = Vec::new();
    let mut expired_crls = BTreeMap::new();
    let now = OffsetDateTime::now_utc();
    for (&nation, ca) in &cas {
        if let Some(crl) = read_crl(layout, nation, ca)? {
            if let Some(next_update) = crl.next_update.filter(|&at| at < now) {
                let at = next_update
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| next_update.to_string());
                expired_crls.insert(nation, at);
            }
            crls.push(crl.der);
        }
    }
    Ok(TrustMaterial {
        cas,
        crls,
        expired_crls,
        mismatched_cas,
        missing_cas,
    })
}

/// A nation's CRL as read from disk, with what [`revoke`] carries over.
struct ExistingCrl {
    der: CertificateRevocationListDer<'static>,
    number: u64,
    revoked: Vec<RevokedCertParams>,
    next_update: Option<OffsetDateTime>,
}

/// A nation's CRL, `None` if it has none; checked to be a CRL that `ca`
/// signed.
fn read_crl(
    layout: &PkiLayout,
    nation: Nation,
    ca: &CertificateDer<'_>,
) -> Result<Option<ExistingCrl>, PkiError> {
    let path = layout.crl(nation);
    if !path.exists() {
        return Ok(None);
    }
    let error = |cause: String| PkiError::Crl {
        path: path.clone(),
        cause,
    };
    let der = CertificateRevocationListDer::from_pem_file(&path).map_err(|err| error(err.to_string()))?;
    let (rest, crl) =
        CertificateRevocationList::from_der(der.as_ref()).map_err(|err| error(err.to_string()))?;
    if !rest.is_empty() {
        return Err(error("trailing bytes after the CRL".to_owned()));
    }
    let (_, ca) = X509Certificate::from_der(ca.as_ref()).map_err(|err| error(err.to_string()))?;
    crl.verify_signature(ca.public_key())
        .map_err(|err| error(format!("it is not signed by the {nation} CA ({err})")))?;
    let number = match crl.crl_number() {
        Some(number) => {
            be_u64(&number.to_bytes_be()).ok_or_else(|| error("its CRL number is too large".to_owned()))?
        }
        None => 0,
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&entry.serial().to_bytes_be()),
            revocation_time: entry.revocation_date.to_datetime(),
            reason_code: entry
                .reason_code()
                .and_then(|(_, code)| revocation_reason(code.0)),
            invalidity_date: entry.invalidity_date().map(|(_, date)| date.to_datetime()),
        })
        .collect();
    let next_update = crl.next_update().map(|at| at.to_datetime());
    Ok(Some(ExistingCrl {
        der,
        number,
        revoked,
        next_update,
    }))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    let significant = bytes.iter().skip_while(|&&b| b == 0).count();
    if significant > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

/// rcgen's reason for an RFC 5280 reason code, so that re-signing a CRL
/// keeps the reason each earlier entry was given.
fn revocation_reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        0 => RevocationReason::Unspecified,
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The nation's CRL file, now listing the certificate.
    pub crl: PathBuf,
    /// The revoked certificate's serial number, in lowercase hex.
    pub serial: String,
    /// How many certificates the CRL now lists.
    pub listed: usize,
    /// Whether the CRL already listed this certificate (it was re-signed
    /// unchanged but for its dates and number).
    pub already_revoked: bool,
}

/// Revokes the certificate that `layout` holds for `identity`: adds its
/// serial to its nation's CRL, keeping every serial already listed, and
/// re-signs the CRL with the nation's CA. Nodes apply it when they next
/// load their trust material.
pub fn revoke(layout: &PkiLayout, identity: &Identity) -> Result<Revocation, PkiError> {
    if Identity::from_uri(&identity.uri()).as_ref() != Some(identity) {
        let name = match identity {
            Identity::Principal { name, .. } => name.clone(),
            Identity::Node(nation) => nation.to_string(),
        };
        return Err(PkiError::InvalidName(name));
    }
    let nation = identity.nation();
    let (cert_path, _) = layout.cert_and_key(identity);
    if !cert_path.exists() {
        return Err(PkiError::MissingCert {
            identity: identity.clone(),
            path: cert_path,
        });
    }
    let cert = read_cert(&cert_path)?;
    let mismatch = |cause: String| PkiError::CertMismatch {
        identity: identity.clone(),
        path: cert_path.clone(),
        cause,
    };
    // The serial alone names nothing: make sure it is this identity's
    // certificate, from this nation's CA, before revoking it.
    let claimed = crate::identity::claimed_identity(&cert).map_err(|err| mismatch(err.to_string()))?;
    if &claimed != identity {
        return Err(mismatch(format!("it is the certificate of {claimed}")));
    }
    let ca_path = layout.ca_cert(nation);
    let ca_der = read_cert(&ca_path)?;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|err| mismatch(err.to_string()))?;
    let (_, ca_parsed) =
        X509Certificate::from_der(ca_der.as_ref()).map_err(|err| read_error(&ca_path, err))?;
    parsed
        .verify_signature(Some(ca_parsed.public_key()))
        .map_err(|err| {
            mismatch(format!(
                "it was not issued by the {nation} CA in {} ({err})",
                ca_path.display()
            ))
        })?;
    let serial = parsed.serial.to_bytes_be();

    let ca = NationalCa::load(layout, nation)?;
    let existing = read_crl(layout, nation, &ca_der)?;
    let (number, mut revoked) = match existing {
        Some(crl) => (crl.number, crl.revoked),
        None => (0, Vec::new()),
    };
    let already_revoked = revoked
        .iter()
        .any(|entry| entry.serial_number.as_ref() == serial.as_slice());
    if !already_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            // The command does not ask why; rcgen omits an unspecified
            // reason, as RFC 5280 asks.
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    let listed = revoked.len();
    let crl_path = sign_crl(layout, &ca, number, revoked)?;
    Ok(Revocation {
        crl: crl_path,
        serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        listed,
        already_revoked,
    })
}

/// Signs and writes `nation`'s CRL listing `revoked`, numbered one above
/// `number`, valid from now for [`CRL_VALIDITY_DAYS`]. Returns its path.
fn sign_crl(
    layout: &PkiLayout,
    ca: &NationalCa,
    number: u64,
    revoked: Vec<RevokedCertParams>,
) -> Result<PathBuf, PkiError> {
    let nation = ca.nation;
    let crl_path = layout.crl(nation);
    let what = format!("the {nation} CRL");
    let next_number = number.checked_add(1).ok_or_else(|| PkiError::Crl {
        path: crl_path.clone(),
        cause: "its CRL number cannot grow any further".to_owned(),
    })?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from(next_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&ca.cert, &ca.key)
        .map_err(generation_error(&what))?;
    let pem = crl.pem().map_err(generation_error(&what))?;
    write_atomically(&crl_path, &pem)?;
    Ok(crl_path)
}

/// Re-signs `nation`'s CRL with its CA, every revocation kept, valid from
/// now for [`CRL_VALIDITY_DAYS`] (a node refuses a nation's certificates
/// once its CRL is past its next update). Writes an empty one if there is
/// none. Returns its path and how many certificates it lists.
pub fn renew_crl(layout: &PkiLayout, nation: Nation) -> Result<(PathBuf, usize), PkiError> {
    let ca = NationalCa::load(layout, nation)?;
    let ca_der = read_cert(&layout.ca_cert(nation))?;
    let (number, revoked) = match read_crl(layout, nation, &ca_der)? {
        Some(crl) => (crl.number, crl.revoked),
        None => (0, Vec::new()),
    };
    let listed = revoked.len();
    Ok((sign_crl(layout, &ca, number, revoked)?, listed))
}

/// Replaces a public (0644) file so that a reader sees the old contents or
/// the new, never a half-written file: a node reloading its CRL mid-write
/// would otherwise fail to parse it.
fn write_atomically(path: &Path, contents: &str) -> Result<(), PkiError> {
    let error = |cause| PkiError::Write {
        path: path.to_owned(),
        cause,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(error)?;
    }
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|err| error(err.error))?;
    Ok(())
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|err| read_error(path, err))
}

fn read_error(path: &Path, cause: impl std::fmt::Display) -> PkiError {
    PkiError::Read {
        path: path.to_owned(),
        cause: cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{ServerName, UnixTime};

    #[test]
    fn a_principal_added_after_init_gets_a_certificate_from_its_nations_ca() {
        let dir = tempfile::tempdir().unwrap();
        let layout = PkiLayout::new(dir.path());
        let policy = crate::config::load_network(Path::new(crate::config::DEFAULT_NETWORK_FILE)).unwrap();
        generate(&policy, &layout, false).unwrap();
        let admin = principal("GBR", "gbr.admin");
        let (cert, _) = layout.cert_and_key(&admin);
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(issue_missing(&policy, &layout).unwrap(), vec![admin.clone()]);
        let store = load_trust_store(&policy, &layout).unwrap();
        assert_eq!(
            store.identify_client(&[read_cert(&cert).unwrap()], UnixTime::now()),
            Ok(admin)
        );
        assert!(issue_missing(&policy, &layout).unwrap().is_empty());
    }

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn principal(code: &str, name: &str) -> Identity {
        Identity::Principal {
            nation: nation(code),
            name: name.to_owned(),
        }
    }

    struct World {
        gbr: NationalCa,
        fra: NationalCa,
        store: TrustStore,
    }

    fn world() -> World {
        let gbr = NationalCa::generate(nation("GBR")).unwrap();
        let fra = NationalCa::generate(nation("FRA")).unwrap();
        let cas = BTreeMap::from([(gbr.nation(), gbr.cert_der()), (fra.nation(), fra.cert_der())]);
        let store = TrustStore::new(&cas, &[]).unwrap();
        World { gbr, fra, store }
    }

    #[test]
    fn the_right_nation_is_accepted() {
        let w = world();
        let analyst = principal("GBR", "gbr.analyst");
        let issued = w.gbr.issue(&analyst, &[]).unwrap();
        assert_eq!(
            w.store.identify_client(&[issued.cert_der()], UnixTime::now()),
            Ok(analyst)
        );

        let node = Identity::Node(nation("FRA"));
        let issued = w.fra.issue(&node, &["127.0.0.1".to_owned()]).unwrap();
        let chain = [issued.cert_der()];
        assert_eq!(w.store.identify_client(&chain, UnixTime::now()), Ok(node.clone()));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert_eq!(w.store.identify_server(&chain, &name, UnixTime::now()), Ok(node));
    }

    #[test]
    fn a_gbr_certificate_claiming_fra_is_refused() {
        let w = world();
        for forged in [Identity::Node(nation("FRA")), principal("FRA", "fra.analyst")] {
            let issued = w.gbr.issue(&forged, &["127.0.0.1".to_owned()]).unwrap();
            let result = w.store.identify_client(&[issued.cert_der()], UnixTime::now());
            assert!(
                matches!(&result, Err(IdentityError::WrongAnchor { claimed, .. }) if *claimed == forged),
                "{result:?}"
            );
            let name = ServerName::try_from("127.0.0.1").unwrap();
            assert!(w
                .store
                .identify_server(&[issued.cert_der()], &name, UnixTime::now())
                .is_err());
        }
    }

    #[test]
    fn an_unknown_ca_is_refused() {
        let w = world();
        // A rogue CA that calls itself GBR but is not the trusted GBR CA.
        let rogue = NationalCa::generate(nation("GBR")).unwrap();
        let issued = rogue.issue(&principal("GBR", "gbr.analyst"), &[]).unwrap();
        let result = w.store.identify_client(&[issued.cert_der()], UnixTime::now());
        assert!(
            matches!(result, Err(IdentityError::WrongAnchor { .. })),
            "{result:?}"
        );
        // Presenting the rogue CA as an intermediate does not help either.
        let chain = [issued.cert_der(), rogue.cert_der()];
        assert!(w.store.identify_client(&chain, UnixTime::now()).is_err());
    }

    #[test]
    fn a_nation_with_no_trusted_ca_is_refused() {
        let w = world();
        let usa = NationalCa::generate(nation("USA")).unwrap();
        let issued = usa.issue(&principal("USA", "usa.analyst"), &[]).unwrap();
        let result = w.store.identify_client(&[issued.cert_der()], UnixTime::now());
        assert!(
            matches!(result, Err(IdentityError::UnknownNation(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_principal_cannot_act_as_a_server() {
        // Principal certificates lack the serverAuth usage, so a principal
        // key cannot impersonate a node to a dialing peer.
        let w = world();
        let issued = w
            .gbr
            .issue(&principal("GBR", "gbr.analyst"), &["127.0.0.1".to_owned()])
            .unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(w
            .store
            .identify_server(&[issued.cert_der()], &name, UnixTime::now())
            .is_err());
    }

    #[test]
    fn a_certificate_without_identity_is_refused() {
        let w = world();
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let params = CertificateParams::new(vec!["node.example".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &w.gbr.cert, &w.gbr.key).unwrap();
        let result = w.store.identify_client(&[cert.der().clone()], UnixTime::now());
        assert_eq!(result, Err(IdentityError::NoIdentity));
        assert_eq!(
            w.store.identify_client(&[], UnixTime::now()),
            Err(IdentityError::NoCertificate)
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]);
        assert!(matches!(
            w.store.identify_client(&[garbage], UnixTime::now()),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn node_keys_are_ed25519_and_sign_envelopes() {
        let w = world();
        let issued = w.gbr.issue(&Identity::Node(nation("GBR")), &[]).unwrap();
        let public = crate::identity::ed25519_public_key(&issued.cert_der()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let signer = crate::envelope::Signer::from_pkcs8(key.secret_der()).unwrap();
        assert_eq!(signer.public_key(), public.as_slice());
    }

    #[test]
    fn generate_writes_everything_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::config::load_network(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::config::DEFAULT_NETWORK_FILE),
        )
        .unwrap();
        let layout = PkiLayout::new(dir.path());
        let summary = generate(&policy, &layout, false).unwrap();
        assert_eq!(summary.nations, 15);
        assert_eq!(summary.principals, policy.principals().count());
        let store = load_trust_store(&policy, &layout).unwrap();
        for p in policy.principals() {
            let identity = Identity::Principal {
                nation: p.nation,
                name: p.name.clone(),
            };
            let (cert, key) = layout.cert_and_key(&identity);
            let chain = [read_cert(&cert).unwrap()];
            assert_eq!(store.identify_client(&chain, UnixTime::now()), Ok(identity));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        let before = std::fs::read(layout.ca_key(nation("GBR"))).unwrap();
        assert!(matches!(
            generate(&policy, &layout, false),
            Err(PkiError::Exists(_))
        ));
        assert_eq!(std::fs::read(layout.ca_key(nation("GBR"))).unwrap(), before);
        generate(&policy, &layout, true).unwrap();
        assert_ne!(std::fs::read(layout.ca_key(nation("GBR"))).unwrap(), before);
    }

    const TWO_NATIONS: &str = r#"
[nations.GBR]
address = "127.0.0.1:7401"
peers = ["FRA"]

[nations.FRA]
address = "127.0.0.1:7402"
peers = ["GBR"]

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"

[[principals]]
name = "gbr.sigint"
nation = "GBR"
clearance = "SECRET"

[[principals]]
name = "fra.analyst"
nation = "FRA"
clearance = "SECRET"
"#;

    fn policy() -> Policy {
        crate::config::parse_network(TWO_NATIONS, Path::new("net.toml")).unwrap()
    }

    /// Every file under `root`, relative, sorted.
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for nation in std::fs::read_dir(root).unwrap() {
            let nation = nation.unwrap();
            if !nation.path().is_dir() {
                continue;
            }
            for file in std::fs::read_dir(nation.path()).unwrap() {
                out.push(format!(
                    "{}/{}",
                    nation.file_name().to_string_lossy(),
                    file.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        out.sort();
        out
    }

    /// Each nation makes its own PKI in its own folder; no folder holds
    /// another nation's private key, and a partner's bundle brings only
    /// public files, checked on the way in.
    #[test]
    fn a_national_pki_never_leaves_its_nation_and_bundles_carry_only_public_parts() {
        let policy = policy();
        let (gbr_dir, fra_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (gbr, fra) = (PkiLayout::new(gbr_dir.path()), PkiLayout::new(fra_dir.path()));
        generate_nation(&policy, &gbr, nation("GBR"), false).unwrap();
        generate_nation(&policy, &fra, nation("FRA"), false).unwrap();
        assert_eq!(
            files(gbr_dir.path()),
            [
                "GBR/ca.crt",
                "GBR/ca.key",
                "GBR/gbr.analyst.crt",
                "GBR/gbr.analyst.key",
                "GBR/gbr.sigint.crt",
                "GBR/gbr.sigint.key",
                "GBR/node.crt",
                "GBR/node.key"
            ]
        );
        // FRA revokes its analyst, then gives GBR its bundle.
        revoke(&fra, &principal("FRA", "fra.analyst")).unwrap();
        let bundle = export_bundle(&policy, &fra, nation("FRA")).unwrap();
        assert!(!toml::to_string(&bundle).unwrap().contains("PRIVATE KEY"));
        let path = gbr_dir.path().join("fra.toml");
        std::fs::write(&path, toml::to_string(&bundle).unwrap()).unwrap();
        assert_eq!(import_bundle(&policy, &gbr, &path).unwrap(), nation("FRA"));
        let keys: Vec<String> = files(gbr_dir.path())
            .into_iter()
            .filter(|f| f.ends_with(".key"))
            .collect();
        assert!(keys.iter().all(|k| k.starts_with("GBR/")), "{keys:?}");
        // GBR's node now knows FRA's CA, node and revocations.
        let material = read_trust_material(&policy, &gbr).unwrap();
        assert_eq!(material.cas.len(), 2);
        assert_eq!(material.crls.len(), 1);
        assert!(material.expired_crls.is_empty());
        // Its own bundle is not a partner's; one whose CA did not issue its
        // node certificate, or whose CRL another CA signed, is refused.
        let own = fra_dir.path().join("own.toml");
        std::fs::write(&own, toml::to_string(&bundle).unwrap()).unwrap();
        assert!(import_bundle(&policy, &fra, &own)
            .unwrap_err()
            .to_string()
            .contains("own PKI"));
        let gbr_bundle = export_bundle(&policy, &gbr, nation("GBR")).unwrap();
        let forged_ca = MemberBundle {
            ca: gbr_bundle.ca.clone(),
            ..bundle.clone()
        };
        let forged_crl = MemberBundle {
            crl: Some(renewed_crl_of(&gbr)),
            ..bundle.clone()
        };
        // Genuinely FRA's, but expired: a node certificate past its end,
        // or a CRL past its next update.
        let fra_ca = NationalCa::load(&fra, nation("FRA")).unwrap();
        let long_ago = OffsetDateTime::now_utc() - Duration::days(60);
        let expired_node = MemberBundle {
            node: fra_ca
                .issue_valid(
                    &Identity::Node(nation("FRA")),
                    &["127.0.0.1".to_owned()],
                    false,
                    long_ago,
                    long_ago + Duration::days(30),
                )
                .unwrap()
                .cert_pem,
            ..bundle.clone()
        };
        let stale_crl = CertificateRevocationListParams {
            this_update: long_ago,
            next_update: long_ago + Duration::days(30),
            crl_number: SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&fra_ca.cert, &fra_ca.key)
        .unwrap();
        let expired_crl = MemberBundle {
            crl: Some(stale_crl.pem().unwrap()),
            ..bundle.clone()
        };
        let before = files(gbr_dir.path())
            .into_iter()
            .map(|f| (std::fs::read(gbr_dir.path().join(&f)).unwrap(), f))
            .collect::<Vec<_>>();
        for (forged, why) in [
            (forged_ca, "does not check out under its CA"),
            (forged_crl, "not signed by its CA"),
            (expired_node, "expired"),
            (expired_crl, "its CRL expired at"),
        ] {
            let path = gbr_dir.path().join("forged.toml");
            std::fs::write(&path, toml::to_string(&forged).unwrap()).unwrap();
            let err = import_bundle(&policy, &gbr, &path).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
            std::fs::remove_file(&path).unwrap();
            // A refused bundle changes nothing.
            let after = files(gbr_dir.path())
                .into_iter()
                .map(|f| (std::fs::read(gbr_dir.path().join(&f)).unwrap(), f))
                .collect::<Vec<_>>();
            assert_eq!(after, before, "{why}");
        }
        let broken = gbr_dir.path().join("broken.toml");
        std::fs::write(&broken, "nation = \"FRA\"\ncolour = 1\n").unwrap();
        assert!(import_bundle(&policy, &gbr, &broken)
            .unwrap_err()
            .to_string()
            .contains("refused"));
    }

    fn renewed_crl_of(layout: &PkiLayout) -> String {
        let (path, _) = renew_crl(layout, nation("GBR")).unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    /// One principal's certificate is issued again without touching
    /// anything else; only the nation holding the CA key can do it.
    #[test]
    fn issuing_one_principal_touches_nothing_else() {
        let policy = policy();
        let dir = tempfile::tempdir().unwrap();
        let layout = PkiLayout::new(dir.path());
        generate_nation(&policy, &layout, nation("GBR"), false).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let (analyst, _) = layout.cert_and_key(&principal("GBR", "gbr.analyst"));
        let (sigint, _) = layout.cert_and_key(&principal("GBR", "gbr.sigint"));
        let (before, other) = (read(&analyst), read(&sigint));
        issue_principal(&policy, &layout, "gbr.analyst").unwrap();
        assert_ne!(read(&analyst), before);
        assert_eq!(read(&sigint), other);
        let foreign = issue_principal(&policy, &layout, "fra.analyst")
            .unwrap_err()
            .to_string();
        assert!(foreign.contains("only FRA, which holds its CA key"), "{foreign}");
        assert!(issue_principal(&policy, &layout, "nobody")
            .unwrap_err()
            .to_string()
            .contains("not a principal"));
    }

    /// A CRL past its next update is named, so the node can say so and
    /// refuse that nation's certificates; renewing it keeps every
    /// revocation and clears it.
    #[test]
    fn an_expired_crl_is_named_and_renewing_it_keeps_its_revocations() {
        let (_dir, policy, layout) = on_disk();
        revoke(&layout, &principal("GBR", "gbr.analyst")).unwrap();
        let ca = NationalCa::load(&layout, nation("GBR")).unwrap();
        let long_ago = OffsetDateTime::now_utc() - Duration::days(60);
        let stale = CertificateRevocationListParams {
            this_update: long_ago,
            next_update: long_ago + Duration::days(30),
            crl_number: SerialNumber::from(99u64),
            issuing_distribution_point: None,
            revoked_certs: read_crl(
                &layout,
                nation("GBR"),
                &read_cert(&layout.ca_cert(nation("GBR"))).unwrap(),
            )
            .unwrap()
            .unwrap()
            .revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .unwrap();
        std::fs::write(layout.crl(nation("GBR")), stale.pem().unwrap()).unwrap();
        let material = read_trust_material(&policy, &layout).unwrap();
        assert_eq!(
            material.expired_crls.keys().copied().collect::<Vec<_>>(),
            [nation("GBR")]
        );
        // The trust store refuses GBR's certificates while it is expired.
        let store = material.trust_store(&BTreeSet::new()).unwrap();
        let err = store
            .identify_client(&chain(&layout, &principal("GBR", "gbr.sigint")), UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
        let (_, listed) = renew_crl(&layout, nation("GBR")).unwrap();
        assert_eq!(listed, 1);
        let renewed = read_trust_material(&policy, &layout).unwrap();
        assert!(renewed.expired_crls.is_empty());
        let store = renewed.trust_store(&BTreeSet::new()).unwrap();
        assert!(store
            .identify_client(&chain(&layout, &principal("GBR", "gbr.sigint")), UnixTime::now())
            .is_ok());
        assert!(store
            .identify_client(&chain(&layout, &principal("GBR", "gbr.analyst")), UnixTime::now())
            .is_err());
    }

    /// A GBR + FRA PKI generated on disk, as `entente certs init` writes it.
    fn on_disk() -> (tempfile::TempDir, Policy, PkiLayout) {
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::config::parse_network(TWO_NATIONS, Path::new("net.toml")).unwrap();
        let layout = PkiLayout::new(dir.path());
        generate(&policy, &layout, false).unwrap();
        (dir, policy, layout)
    }

    fn chain(layout: &PkiLayout, identity: &Identity) -> [CertificateDer<'static>; 1] {
        [read_cert(&layout.cert_and_key(identity).0).unwrap()]
    }

    fn client(
        store: &TrustStore,
        layout: &PkiLayout,
        identity: &Identity,
    ) -> Result<Identity, IdentityError> {
        store.identify_client(&chain(layout, identity), UnixTime::now())
    }

    #[test]
    fn a_revoked_principal_is_refused_and_its_neighbour_is_not() {
        let (_dir, policy, layout) = on_disk();
        let analyst = principal("GBR", "gbr.analyst");
        let sigint = principal("GBR", "gbr.sigint");
        let revocation = revoke(&layout, &analyst).unwrap();
        assert_eq!(revocation.crl, layout.crl(nation("GBR")));
        assert_eq!(revocation.listed, 1);
        assert!(!revocation.already_revoked);
        let store = load_trust_store(&policy, &layout).unwrap();
        let refused = client(&store, &layout, &analyst).unwrap_err();
        assert_eq!(refused, IdentityError::Revoked(analyst));
        assert!(refused.to_string().contains("revoked"), "{refused}");
        assert_eq!(client(&store, &layout, &sigint), Ok(sigint));
    }

    #[test]
    fn the_crl_verifies_against_the_original_ca_certificate() {
        let (_dir, _policy, layout) = on_disk();
        revoke(&layout, &principal("GBR", "gbr.analyst")).unwrap();
        let pem = std::fs::read_to_string(layout.crl(nation("GBR"))).unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"), "{pem}");
        let ca = read_cert(&layout.ca_cert(nation("GBR"))).unwrap();
        let crl = read_crl(&layout, nation("GBR"), &ca).unwrap().unwrap();
        assert_eq!(crl.number, 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(layout.crl(nation("GBR")))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn revoking_again_keeps_every_serial() {
        let (_dir, policy, layout) = on_disk();
        let analyst = principal("GBR", "gbr.analyst");
        let sigint = principal("GBR", "gbr.sigint");
        let first = revoke(&layout, &analyst).unwrap();
        let second = revoke(&layout, &sigint).unwrap();
        assert_eq!(second.listed, 2);
        assert_ne!(first.serial, second.serial);
        let again = revoke(&layout, &analyst).unwrap();
        assert!(again.already_revoked);
        assert_eq!(again.listed, 2);
        assert_eq!(again.serial, first.serial);
        let ca = read_cert(&layout.ca_cert(nation("GBR"))).unwrap();
        assert_eq!(read_crl(&layout, nation("GBR"), &ca).unwrap().unwrap().number, 3);
        let store = load_trust_store(&policy, &layout).unwrap();
        assert_eq!(
            client(&store, &layout, &analyst),
            Err(IdentityError::Revoked(analyst))
        );
        assert_eq!(
            client(&store, &layout, &sigint),
            Err(IdentityError::Revoked(sigint))
        );
        let node = Identity::Node(nation("GBR"));
        assert_eq!(client(&store, &layout, &node), Ok(node));
    }

    #[test]
    fn a_node_certificate_can_be_revoked() {
        let (_dir, policy, layout) = on_disk();
        let node = Identity::Node(nation("GBR"));
        revoke(&layout, &node).unwrap();
        let store = load_trust_store(&policy, &layout).unwrap();
        assert_eq!(
            client(&store, &layout, &node),
            Err(IdentityError::Revoked(node.clone()))
        );
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert_eq!(
            store.identify_server(&chain(&layout, &node), &name, UnixTime::now()),
            Err(IdentityError::Revoked(node))
        );
    }

    #[test]
    fn a_crl_of_one_nation_does_not_touch_another() {
        let (_dir, policy, layout) = on_disk();
        revoke(&layout, &principal("GBR", "gbr.analyst")).unwrap();
        revoke(&layout, &Identity::Node(nation("GBR"))).unwrap();
        let store = load_trust_store(&policy, &layout).unwrap();
        let fra = principal("FRA", "fra.analyst");
        assert_eq!(client(&store, &layout, &fra), Ok(fra));
        let node = Identity::Node(nation("FRA"));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert_eq!(
            store.identify_server(&chain(&layout, &node), &name, UnixTime::now()),
            Ok(node)
        );
    }

    #[test]
    fn an_excluded_nation_is_unknown() {
        let (_dir, policy, layout) = on_disk();
        let material = read_trust_material(&policy, &layout).unwrap();
        let store = material.trust_store(&BTreeSet::from([nation("FRA")])).unwrap();
        let fra = principal("FRA", "fra.analyst");
        assert_eq!(
            client(&store, &layout, &fra),
            Err(IdentityError::UnknownNation(fra))
        );
        let gbr = principal("GBR", "gbr.analyst");
        assert_eq!(client(&store, &layout, &gbr), Ok(gbr));
    }

    #[test]
    fn a_corrupt_crl_is_named() {
        let (_dir, policy, layout) = on_disk();
        let path = layout.crl(nation("FRA"));
        std::fs::write(&path, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
        let err = read_trust_material(&policy, &layout).unwrap_err();
        assert!(
            matches!(&err, PkiError::Crl { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "not PEM at all").unwrap();
        let err = read_trust_material(&policy, &layout).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let err = revoke(&layout, &principal("FRA", "fra.analyst")).unwrap_err();
        assert!(matches!(&err, PkiError::Crl { .. }), "{err:?}");
    }

    #[test]
    fn a_crl_signed_by_another_ca_is_refused_and_dropped_on_reissue() {
        let (_dir, policy, layout) = on_disk();
        revoke(&layout, &principal("GBR", "gbr.analyst")).unwrap();
        let stale = std::fs::read(layout.crl(nation("GBR"))).unwrap();
        generate(&policy, &layout, true).unwrap();
        assert!(!layout.crl(nation("GBR")).exists());
        // The reissued identities all pass, the old CRL being gone.
        let store = load_trust_store(&policy, &layout).unwrap();
        let analyst = principal("GBR", "gbr.analyst");
        assert_eq!(client(&store, &layout, &analyst), Ok(analyst));
        std::fs::write(layout.crl(nation("GBR")), stale).unwrap();
        let err = read_trust_material(&policy, &layout).unwrap_err();
        assert!(err.to_string().contains("not signed by the GBR CA"), "{err}");
    }

    #[test]
    fn revoking_needs_the_identity_certificate() {
        let (_dir, _policy, layout) = on_disk();
        let nobody = principal("GBR", "nobody.here");
        let err = revoke(&layout, &nobody).unwrap_err();
        let path = layout.cert_and_key(&nobody).0;
        assert!(
            matches!(&err, PkiError::MissingCert { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("entente certs init"), "{err}");
        assert!(matches!(
            revoke(&layout, &principal("GBR", "../FRA/fra.analyst")),
            Err(PkiError::InvalidName(_))
        ));
        // A principal of another nation is not found under this one.
        assert!(matches!(
            revoke(&layout, &principal("FRA", "gbr.analyst")),
            Err(PkiError::MissingCert { .. })
        ));
        assert!(!layout.crl(nation("GBR")).exists());
    }

    #[test]
    fn a_loaded_ca_issues_like_the_original() {
        let (_dir, policy, layout) = on_disk();
        let ca = NationalCa::load(&layout, nation("GBR")).unwrap();
        let extra = principal("GBR", "gbr.extra");
        let issued = ca.issue(&extra, &[]).unwrap();
        let store = load_trust_store(&policy, &layout).unwrap();
        assert_eq!(
            store.identify_client(&[issued.cert_der()], UnixTime::now()),
            Ok(extra)
        );
        // The key of another nation's CA is refused.
        std::fs::copy(layout.ca_key(nation("FRA")), layout.ca_key(nation("GBR"))).unwrap();
        assert!(matches!(
            NationalCa::load(&layout, nation("GBR")),
            Err(PkiError::Read { .. })
        ));
    }
}
