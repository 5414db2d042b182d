//! The national PKI of a network: one CA per nation, a node certificate
//! per nation, a client certificate per principal (rcgen), the on-disk
//! layout, and loading it back into a [`TrustStore`].
//!
//! Layout under the certs folder (all PEM; keys are written 0600):
//! ```text
//! <NATION>/ca.crt  <NATION>/ca.key          the nation's CA
//! <NATION>/node.crt  <NATION>/node.key      the nation's node
//! <NATION>/<principal>.crt  .key            each principal of the nation
//! ```
//! All keys are Ed25519; the node key also signs envelopes.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ED25519,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::identity::{Identity, IdentityError, TrustStore};
use crate::label::Nation;
use crate::policy::Policy;

/// The folder `entente` uses when `--certs` is not given.
pub const DEFAULT_CERTS_DIR: &str = "certs";

const CA_VALIDITY_DAYS: i64 = 10 * 365;
const LEAF_VALIDITY_DAYS: i64 = 2 * 365;

/// Why a PKI could not be generated, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
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
        validity(&mut params, LEAF_VALIDITY_DAYS);
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
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let mut summary = GeneratedPki::default();
    for (&nation, nation_policy) in policy.nations() {
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
            let issued = ca.issue(&identity, &[])?;
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
    Ok(summary)
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

/// Every nation's CA certificate from `layout`.
pub fn read_cas(
    policy: &Policy,
    layout: &PkiLayout,
) -> Result<BTreeMap<Nation, CertificateDer<'static>>, PkiError> {
    policy
        .nations()
        .keys()
        .map(|&nation| Ok((nation, read_cert(&layout.ca_cert(nation))?)))
        .collect()
}

/// The trust store of a network: every nation's CA, each trusted only for
/// its own nation's identities.
pub fn load_trust_store(policy: &Policy, layout: &PkiLayout) -> Result<TrustStore, PkiError> {
    Ok(TrustStore::new(&read_cas(policy, layout)?, &[])?)
}

/// What a node trusts, as read from disk (placeholder until CRLs land).
#[derive(Debug, Clone)]
pub struct TrustMaterial {
    /// Each nation's CA certificate.
    pub cas: BTreeMap<Nation, CertificateDer<'static>>,
    /// The CRL of each nation that has one, each verified against its CA.
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
}

impl TrustMaterial {
    /// The trust store of every CA except those of the `excluding` nations.
    pub fn trust_store(&self, excluding: &std::collections::BTreeSet<Nation>) -> Result<TrustStore, IdentityError> {
        let cas: BTreeMap<Nation, CertificateDer<'static>> = self
            .cas
            .iter()
            .filter(|(nation, _)| !excluding.contains(nation))
            .map(|(&nation, ca)| (nation, ca.clone()))
            .collect();
        TrustStore::new(&cas, &self.crls)
    }
}

/// Every nation's CA certificate (placeholder until CRLs land).
pub fn read_trust_material(policy: &Policy, layout: &PkiLayout) -> Result<TrustMaterial, PkiError> {
    Ok(TrustMaterial { cas: read_cas(policy, layout)?, crls: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{ServerName, UnixTime};

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
}
