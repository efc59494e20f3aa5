//! rustls configurations for the two ends of the gateway that speak TLS: the
//! `https` listeners that terminate client connections, and the upstream
//! connector that opens TLS to targets.
//!
//! Everything here reads its files when the configuration is built, never
//! during a handshake, so that a reload (which builds a new snapshot and so a
//! new configuration) picks up rotated certificates, and so that every bad file
//! is reported by `portcullis check` and by a failed reload instead of by the
//! first client that connects. The cryptography provider is always aws-lc-rs,
//! passed explicitly, so the result never depends on which provider some other
//! crate installed as the process default.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, CommonState, InconsistentKeys, RootCertStore, ServerConfig};
use x509_parser::asn1_rs::{Tag, ToDer};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_DOMAIN_COMPONENT, OID_PKCS9_EMAIL_ADDRESS, OID_USERID, OID_X509_COMMON_NAME,
    OID_X509_COUNTRY_NAME, OID_X509_LOCALITY_NAME, OID_X509_ORGANIZATION_NAME,
    OID_X509_ORGANIZATIONAL_UNIT, OID_X509_SERIALNUMBER, OID_X509_STATE_OR_PROVINCE_NAME,
    OID_X509_STREET_ADDRESS,
};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// A certificate chain (leaf first) and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM file holding the leaf certificate followed by any intermediates.
    pub cert: PathBuf,
    /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The oldest TLS version a listener accepts (`min_version` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and TLS 1.3 (`"1.2"`, the default).
    #[default]
    V1_2,
    /// TLS 1.3 only (`"1.3"`).
    V1_3,
}

/// Whether a listener asks clients for a certificate (`client_auth` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is requested.
    #[default]
    None,
    /// A client certificate is verified when presented; anonymous clients are let in.
    Optional,
    /// The handshake fails without a client certificate signed by `client_ca`.
    Required,
}

/// The `tls` section of an `https` listener, borrowed from the configuration model.
#[derive(Clone, Copy, Debug)]
pub struct ServerTlsSettings<'a> {
    /// Certificates chosen by SNI; the first one also serves clients without a known name.
    pub certificates: &'a [CertificateFiles],
    /// The oldest TLS version accepted.
    pub min_version: TlsVersion,
    /// PEM bundle of the CAs that sign client certificates; ignored when `client_auth` is `None`.
    pub client_ca: Option<&'a Path>,
    /// Whether client certificates are requested and required.
    pub client_auth: ClientAuth,
}

/// Why a TLS configuration could not be built; every file problem names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("malformed PEM in {}: {error}", path.display())]
    MalformedPem {
        /// The malformed file.
        path: PathBuf,
        /// What the PEM reader objected to.
        error: pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("no certificate in {}: expected a PEM `CERTIFICATE` section", path.display())]
    NoCertificate {
        /// The file without a certificate.
        path: PathBuf,
    },
    /// A key file holds no private key section.
    #[error(
        "no private key in {}: expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section",
        path.display()
    )]
    NoPrivateKey {
        /// The file without a key.
        path: PathBuf,
    },
    /// A private key was found but the provider cannot use it (unsupported algorithm or curve).
    #[error("unusable private key in {}: {error}", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        error: rustls::Error,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error(
        "private key {} does not match certificate {}: pair each certificate with its own key",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file that does not match it.
        key: PathBuf,
    },
    /// A certificate could not be parsed as X.509.
    #[error("bad certificate in {}: {reason}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A CA bundle is empty or holds a certificate that cannot be a trust anchor.
    #[error("bad CA file {}: {reason}", path.display())]
    BadCa {
        /// The CA bundle.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A listener has TLS but no certificate.
    #[error("no certificates: an https listener needs at least one cert/key pair")]
    NoCertificates,
    /// `client_auth` asks for client certificates but nothing says who may sign them.
    #[error(
        "client_auth is optional or required but client_ca is not set: add client_ca with the CA bundle that signs client certificates"
    )]
    ClientAuthWithoutCa,
    /// rustls refused the assembled configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads every file now (so a reload re-reads rotated certificates) and returns a config with ALPN ["h2", "http/1.1"].
pub fn server_config(settings: &ServerTlsSettings<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = SniResolver::load(settings.certificates, &provider)?;

    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;

    let builder = match (settings.client_auth, settings.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (ClientAuth::Optional | ClientAuth::Required, None) => {
            return Err(TlsError::ClientAuthWithoutCa);
        }
        (mode, Some(ca)) => {
            let roots = Arc::new(load_roots(ca)?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            // load_roots never returns an empty store, which is the only way
            // this build can fail without CRLs; keep the file in the message anyway.
            let verifier = verifier.build().map_err(|error| TlsError::BadCa {
                path: ca.to_path_buf(),
                reason: error.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // Server order wins in rustls, so h2 is chosen whenever the client offers it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption by stateless tickets (keys rotated every 6 hours, new keys
    // with every load of the configuration, so a reload also ends sessions
    // verified against an old client_ca): any number of clients can resume,
    // not only as many as a session cache holds.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One ticket per handshake, as Go's TLS (Traefik, Caddy) sends: a client
    // reconnecting uses one and gets the next. rustls's default of two costs
    // every OpenSSL client a second session object per connection (OpenSSL
    // servers send one on resumption).
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// The verified client certificate's subject as an RFC 4514-style string ("CN=alice,O=Acme"), for forwarding in a header.
///
/// rustls only records a peer certificate once it has been verified, so a
/// `Some` here always names a client that `client_ca` vouched for. The result
/// is printable ASCII (anything else is escaped as `\XX`), so it is always a
/// valid header value. Call it once per connection, not per request.
pub fn client_subject(conn: &CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(rfc4514(cert.subject()))
}

/// Client config for TLS to upstream targets: trust `ca` (PEM bundle) or, when None, the Mozilla roots (webpki-roots crate); present `client_cert` for mTLS. No ALPN set here (the connector sets it).
pub fn upstream_client_config(
    ca: Option<&Path>,
    client_cert: Option<&CertificateFiles>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = match ca {
        Some(path) => load_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some(files) => {
            let key = load_certified_key(files, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Longest DNS name without its trailing dot (RFC 1035); anything longer cannot
/// match a certificate, so the lookup buffer never needs to grow.
const MAX_DNS_NAME: usize = 253;

/// Picks a certificate by the SNI name: exact names, then one-label wildcards,
/// then the first configured certificate.
struct SniResolver {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`, so a lookup strips one label and probes once.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn load(
        certificates: &[CertificateFiles],
        provider: &CryptoProvider,
    ) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for files in certificates {
            let key = Arc::new(load_certified_key(files, provider)?);
            let names = match key.cert.first() {
                Some(leaf) => dns_names(leaf, &files.cert)?,
                None => Vec::new(),
            };
            if names.is_empty() && default.is_some() {
                tracing::warn!(
                    cert = %files.cert.display(),
                    "certificate has no DNS name and is not the first one, so SNI can never select it"
                );
            }
            for name in names {
                // The first certificate to claim a name keeps it, so file order
                // decides overlaps the same way it decides the default.
                match name.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                        wildcard
                            .entry(parent.into())
                            .or_insert_with(|| Arc::clone(&key));
                    }
                    // Partial-label wildcards ("f*.example.com") are deprecated
                    // by RFC 6125 and refused by browsers; never serve them.
                    _ if name.contains('*') => {}
                    _ => {
                        exact
                            .entry(name.into_boxed_str())
                            .or_insert_with(|| Arc::clone(&key));
                    }
                }
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or(TlsError::NoCertificates)?;
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }

    fn lookup(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let mut buf = [0u8; MAX_DNS_NAME];
        let name = normalize_into(server_name, &mut buf)?;
        if let Some(key) = self.exact.get(name) {
            return Some(key);
        }
        // RFC 6125 6.4.3: the wildcard stands for exactly one whole label.
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = client_hello
            .server_name()
            .and_then(|name| self.lookup(name))
            .unwrap_or(&self.default);
        Some(Arc::clone(key))
    }
}

impl fmt::Debug for SniResolver {
    // Certificates and keys are noise in a debug dump; the names are what matter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut exact: Vec<&str> = self.exact.keys().map(|name| &**name).collect();
        exact.sort_unstable();
        let mut wildcard: Vec<&str> = self.wildcard.keys().map(|name| &**name).collect();
        wildcard.sort_unstable();
        f.debug_struct("SniResolver")
            .field("exact", &exact)
            .field("wildcard_parents", &wildcard)
            .finish_non_exhaustive()
    }
}

/// Lowercases `name` and drops one trailing dot, copying into `buf` only when
/// the name has uppercase letters, so that a lookup never allocates. `None`
/// for names that no certificate can hold (empty, too long, not ASCII).
fn normalize_into<'a>(name: &'a str, buf: &'a mut [u8; MAX_DNS_NAME]) -> Option<&'a str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_DNS_NAME || !name.is_ascii() {
        return None;
    }
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// The names a certificate is valid for, normalized like SNI names: the DNS
/// entries of subjectAltName, or the subject CN when there is no SAN at all
/// (RFC 6125 forbids the CN fallback once a SAN is present).
fn dns_names(leaf: &CertificateDer<'_>, path: &Path) -> Result<Vec<String>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subjectAltName: {e}")))?;
    let raw: Vec<&str> = match san {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
            .collect(),
        None => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect(),
    };
    Ok(raw
        .into_iter()
        .filter_map(|name| {
            let mut buf = [0u8; MAX_DNS_NAME];
            normalize_into(name, &mut buf).map(str::to_owned)
        })
        .collect())
}

fn load_certified_key(
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(&files.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: files.key.clone(),
        },
        error => pem_error(&files.key, error),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| TlsError::UnusableKey {
            path: files.key.clone(),
            error,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Checked here so a swapped key is a config error naming both files,
    // instead of every handshake failing with a signature error later.
    match certified.keys_match() {
        // A key type that cannot report its public half is not evidence of a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(error) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            reason: error.to_string(),
        }),
    }
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(path, error))?
        .map(|item| item.map_err(|error| pem_error(path, error)))
        .collect()
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let certificates = load_certificates(path).map_err(|error| match error {
        TlsError::MalformedPem { error, .. } => bad(format!("malformed PEM: {error}")),
        other => other,
    })?;
    if certificates.is_empty() {
        return Err(bad("no certificate in the file".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|error| bad(format!("certificate #{}: {error}", index + 1)))?;
    }
    Ok(roots)
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(error) => TlsError::Unreadable {
            path: path.to_path_buf(),
            error,
        },
        error => TlsError::MalformedPem {
            path: path.to_path_buf(),
            error,
        },
    }
}

/// Formats a distinguished name as RFC 4514 does: most specific RDN first,
/// `+` inside a multi-valued RDN, special characters escaped.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attribute);
        }
    }
    out
}

fn push_attribute(out: &mut String, attribute: &AttributeTypeAndValue<'_>) {
    let oid = attribute.attr_type();
    // RFC 4514's table, plus the two names OpenSSL (and so nginx's
    // $ssl_client_s_dn) prints, which backends already expect.
    let short = [
        (&OID_X509_COMMON_NAME, "CN"),
        (&OID_X509_LOCALITY_NAME, "L"),
        (&OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (&OID_X509_ORGANIZATION_NAME, "O"),
        (&OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (&OID_X509_COUNTRY_NAME, "C"),
        (&OID_X509_STREET_ADDRESS, "STREET"),
        (&OID_DOMAIN_COMPONENT, "DC"),
        (&OID_USERID, "UID"),
        (&OID_PKCS9_EMAIL_ADDRESS, "emailAddress"),
        (&OID_X509_SERIALNUMBER, "serialNumber"),
    ]
    .into_iter()
    .find(|(known, _)| *known == oid)
    .map(|(_, short)| short);
    match short {
        Some(short) => out.push_str(short),
        None => out.push_str(&oid.to_id_string()),
    }
    out.push('=');

    let value = attribute.attr_value();
    let text = match attribute.as_str() {
        Ok(text) => Some(text.to_owned()),
        Err(_) if value.tag() == Tag::BmpString => decode_bmp(value.as_bytes()),
        Err(_) => None,
    };
    match text {
        Some(text) => push_escaped(out, &text),
        // RFC 4514 2.4: a value with no string form is `#` and its BER in hex.
        None => {
            out.push('#');
            let der = value
                .to_der_vec()
                .unwrap_or_else(|_| value.as_bytes().to_vec());
            out.push_str(&hex::encode(der));
        }
    }
}

fn decode_bmp(bytes: &[u8]) -> Option<String> {
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .ok()
}

/// RFC 4514 2.4 escaping, extended to hex-escape every byte that is not
/// printable ASCII so that the subject can go into a header unchanged.
fn push_escaped(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::DigitallySignedStruct;
    use rustls::SignatureScheme;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use std::net::SocketAddr;
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A throwaway CA in a temporary directory that issues server and client
    /// certificates as PEM files, the way an operator would lay them out.
    struct Pki {
        dir: TempDir,
        ca: Issuer<'static, KeyPair>,
        ca_path: PathBuf,
    }

    struct Issued {
        files: CertificateFiles,
        der: CertificateDer<'static>,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (ca, ca_path) = make_ca(&dir, "ca", "portcullis test CA");
            Self { dir, ca, ca_path }
        }

        /// A second, unrelated CA in the same directory.
        fn other_ca(&self, stem: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
            make_ca(&self.dir, stem, "some other CA")
        }

        fn server(&self, stem: &str, names: &[&str]) -> Issued {
            let mut params = CertificateParams::new(
                names
                    .iter()
                    .map(|name| name.to_string())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            params.distinguished_name = DistinguishedName::new();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            self.issue(stem, params, &self.ca)
        }

        /// A server certificate with no subjectAltName, only a subject CN.
        fn server_cn_only(&self, stem: &str, cn: &str) -> Issued {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            self.issue(stem, params, &self.ca)
        }

        fn client(&self, stem: &str, cn: &str, org: &str) -> Issued {
            self.client_by(stem, cn, org, &self.ca)
        }

        fn client_by(
            &self,
            stem: &str,
            cn: &str,
            org: &str,
            issuer: &Issuer<'static, KeyPair>,
        ) -> Issued {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            // Most general first in the DER, so RFC 4514 prints CN first.
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(stem, params, issuer)
        }

        fn issue(
            &self,
            stem: &str,
            params: CertificateParams,
            issuer: &Issuer<'static, KeyPair>,
        ) -> Issued {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            let files = CertificateFiles {
                cert: self.dir.path().join(format!("{stem}.pem")),
                key: self.dir.path().join(format!("{stem}.key")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            Issued {
                files,
                der: cert.der().clone(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn make_ca(dir: &TempDir, stem: &str, cn: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join(format!("{stem}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (Issuer::new(params, key), path)
    }

    /// Three certificates: `a.test` (first, so the default), `b.test` and `*.wild.test`.
    struct Site {
        pki: Pki,
        a: Issued,
        b: Issued,
        wild: Issued,
    }

    impl Site {
        fn new() -> Self {
            let pki = Pki::new();
            let a = pki.server("a", &["a.test"]);
            let b = pki.server("b", &["b.test"]);
            let wild = pki.server("wild", &["*.wild.test"]);
            Self { pki, a, b, wild }
        }

        fn certificates(&self) -> Vec<CertificateFiles> {
            vec![
                self.a.files.clone(),
                self.b.files.clone(),
                self.wild.files.clone(),
            ]
        }

        fn config(&self, min_version: TlsVersion, client_auth: ClientAuth) -> Arc<ServerConfig> {
            let certificates = self.certificates();
            server_config(&ServerTlsSettings {
                certificates: &certificates,
                min_version,
                client_ca: Some(&self.pki.ca_path),
                client_auth,
            })
            .unwrap()
        }

        fn plain_config(&self) -> Arc<ServerConfig> {
            self.config(TlsVersion::V1_2, ClientAuth::None)
        }

        /// A client that trusts the test CA and sends no certificate.
        fn client(&self) -> ClientConfig {
            (*upstream_client_config(Some(&self.pki.ca_path), None).unwrap()).clone()
        }
    }

    /// What the server saw of one connection.
    #[derive(Debug)]
    struct ServerSide {
        sni: Option<String>,
        alpn: Option<Vec<u8>>,
        subject: Option<String>,
    }

    /// What the client saw of one connection.
    #[derive(Debug)]
    struct ClientSide {
        peer: CertificateDer<'static>,
        alpn: Option<Vec<u8>>,
        version: Option<rustls::ProtocolVersion>,
    }

    /// Accepts one TLS connection, answers `ok` and reports what it saw.
    async fn serve_once(
        config: Arc<ServerConfig>,
    ) -> (SocketAddr, JoinHandle<io::Result<ServerSide>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let (_, conn) = tls.get_ref();
            let seen = ServerSide {
                sni: conn.server_name().map(str::to_owned),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                subject: client_subject(conn),
            };
            tls.write_all(b"ok").await?;
            tls.shutdown().await?;
            Ok(seen)
        });
        (addr, task)
    }

    /// Connects, reads the server's `ok` (which is where a TLS 1.3 client learns
    /// that the server rejected its certificate) and reports what it saw.
    async fn talk(addr: SocketAddr, config: ClientConfig, name: &str) -> io::Result<ClientSide> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        assert_eq!(answer, b"ok");
        let (_, conn) = tls.get_ref();
        Ok(ClientSide {
            peer: conn.peer_certificates().unwrap()[0].clone(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: conn.protocol_version(),
        })
    }

    /// One full connection; panics unless both sides succeed.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
        name: &str,
    ) -> (ServerSide, ClientSide) {
        let (addr, task) = serve_once(server).await;
        let client = talk(addr, client, name).await.unwrap();
        let server = task.await.unwrap().unwrap();
        (server, client)
    }

    /// One connection that must fail; returns both sides' errors.
    async fn failed_handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
        name: &str,
    ) -> (io::Error, io::Error) {
        let (addr, task) = serve_once(server).await;
        let client = talk(addr, client, name).await.unwrap_err();
        let server = task.await.unwrap().unwrap_err();
        (server, client)
    }

    /// Accepts any server certificate, so a test can see which one was sent
    /// even when it does not match the name the client asked for.
    #[derive(Debug)]
    struct AcceptAnyServerCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyServerCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn accept_any_client() -> ClientConfig {
        let provider = provider();
        ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
            .with_no_client_auth()
    }

    fn tls12_only_client(ca: &Path) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(load_roots(ca).unwrap())
            .with_no_client_auth()
    }

    fn with_client_cert(ca: &Path, cert: &Issued) -> ClientConfig {
        (*upstream_client_config(Some(ca), Some(&cert.files)).unwrap()).clone()
    }

    #[tokio::test]
    async fn sni_picks_certificate_by_san() {
        let site = Site::new();
        for (name, expected) in [("b.test", &site.b), ("a.test", &site.a)] {
            let (server, client) = handshake(site.plain_config(), site.client(), name).await;
            assert_eq!(client.peer, expected.der, "certificate for {name}");
            assert_eq!(server.sni.as_deref(), Some(name));
        }
    }

    #[tokio::test]
    async fn wildcard_san_matches_one_label() {
        let site = Site::new();
        let (_, client) = handshake(site.plain_config(), site.client(), "api.wild.test").await;
        assert_eq!(client.peer, site.wild.der);

        // Neither the bare parent nor a deeper name is covered: they get the default.
        for name in ["wild.test", "a.b.wild.test"] {
            let (_, client) = handshake(site.plain_config(), accept_any_client(), name).await;
            assert_eq!(client.peer, site.a.der, "certificate for {name}");
        }
    }

    #[tokio::test]
    async fn no_sni_gets_default_certificate() {
        let site = Site::new();
        let mut client = site.client();
        client.enable_sni = false;
        let (server, client) = handshake(site.plain_config(), client, "a.test").await;
        assert_eq!(server.sni, None);
        assert_eq!(client.peer, site.a.der);
    }

    #[tokio::test]
    async fn unknown_name_gets_default_certificate() {
        let site = Site::new();
        let (server, client) =
            handshake(site.plain_config(), accept_any_client(), "unknown.test").await;
        assert_eq!(server.sni.as_deref(), Some("unknown.test"));
        assert_eq!(client.peer, site.a.der);
    }

    #[tokio::test]
    async fn certificate_without_san_is_chosen_by_common_name() {
        let site = Site::new();
        let legacy = site.pki.server_cn_only("legacy", "legacy.test");
        let certificates = [site.a.files.clone(), legacy.files.clone()];
        let config = server_config(&ServerTlsSettings {
            certificates: &certificates,
            min_version: TlsVersion::V1_2,
            client_ca: None,
            client_auth: ClientAuth::None,
        })
        .unwrap();
        let (_, client) = handshake(config, accept_any_client(), "legacy.test").await;
        assert_eq!(client.peer, legacy.der);
    }

    #[test]
    fn name_lookup_ignores_case_and_trailing_dot() {
        let site = Site::new();
        let resolver = SniResolver::load(&site.certificates(), &provider()).unwrap();
        let pick = |name: &str| resolver.lookup(name).map(|key| key.cert[0].clone());
        assert_eq!(pick("B.Test"), Some(site.b.der.clone()));
        assert_eq!(pick("b.test."), Some(site.b.der.clone()));
        assert_eq!(pick("API.WILD.TEST."), Some(site.wild.der.clone()));
        assert_eq!(pick(".wild.test"), None);
        assert_eq!(pick("wild.test"), None);
        assert_eq!(pick("x.y.wild.test"), None);
        assert_eq!(pick("ünïcode.test"), None);
        assert_eq!(pick(&"a".repeat(300)), None);
    }

    #[tokio::test]
    async fn min_version_1_3_rejects_tls12_client() {
        let site = Site::new();
        let config = site.config(TlsVersion::V1_3, ClientAuth::None);
        failed_handshake(
            config.clone(),
            tls12_only_client(&site.pki.ca_path),
            "a.test",
        )
        .await;

        let (_, client) = handshake(config, site.client(), "a.test").await;
        assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[tokio::test]
    async fn min_version_1_2_accepts_tls12_client() {
        let site = Site::new();
        let (_, client) = handshake(
            site.plain_config(),
            tls12_only_client(&site.pki.ca_path),
            "b.test",
        )
        .await;
        assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(client.peer, site.b.der);
    }

    #[tokio::test]
    async fn client_auth_required_rejects_anonymous_client() {
        let site = Site::new();
        let config = site.config(TlsVersion::V1_2, ClientAuth::Required);
        let (server, _) = failed_handshake(config, site.client(), "a.test").await;
        assert!(
            server.to_string().contains("certificate"),
            "server error: {server}"
        );
    }

    #[tokio::test]
    async fn client_auth_required_rejects_client_signed_by_another_ca() {
        let site = Site::new();
        let (other, _) = site.pki.other_ca("other-ca");
        let mallory = site.pki.client_by("mallory", "mallory", "Evil", &other);
        let config = site.config(TlsVersion::V1_2, ClientAuth::Required);
        failed_handshake(
            config,
            with_client_cert(&site.pki.ca_path, &mallory),
            "a.test",
        )
        .await;
    }

    #[tokio::test]
    async fn client_auth_required_accepts_signed_client_and_reports_subject() {
        let site = Site::new();
        let alice = site.pki.client("alice", "alice", "Acme");
        let config = site.config(TlsVersion::V1_2, ClientAuth::Required);
        let (server, _) = handshake(
            config,
            with_client_cert(&site.pki.ca_path, &alice),
            "a.test",
        )
        .await;
        assert_eq!(server.subject.as_deref(), Some("CN=alice,O=Acme"));
    }

    #[tokio::test]
    async fn client_auth_optional_accepts_anonymous_client() {
        let site = Site::new();
        let config = site.config(TlsVersion::V1_2, ClientAuth::Optional);
        let (server, _) = handshake(config.clone(), site.client(), "a.test").await;
        assert_eq!(server.subject, None);

        let alice = site.pki.client("alice", "alice", "Acme");
        let (server, _) = handshake(
            config,
            with_client_cert(&site.pki.ca_path, &alice),
            "a.test",
        )
        .await;
        assert_eq!(server.subject.as_deref(), Some("CN=alice,O=Acme"));
    }

    #[tokio::test]
    async fn client_subject_escapes_special_characters() {
        let site = Site::new();
        let odd = site
            .pki
            .client("odd", " #a,b+c\"d\\e\r\nünï ", "Acme; Inc.");
        let config = site.config(TlsVersion::V1_2, ClientAuth::Required);
        let (server, _) =
            handshake(config, with_client_cert(&site.pki.ca_path, &odd), "a.test").await;
        assert_eq!(
            server.subject.as_deref(),
            Some("CN=\\ #a\\,b\\+c\\\"d\\\\e\\0D\\0A\\C3\\BCn\\C3\\AF\\ ,O=Acme\\; Inc.")
        );
    }

    #[tokio::test]
    async fn alpn_offers_h2_and_http11() {
        let site = Site::new();
        for (offered, chosen) in [
            (vec![b"h2".to_vec()], b"h2".as_slice()),
            (vec![b"http/1.1".to_vec()], b"http/1.1".as_slice()),
            (vec![b"http/1.1".to_vec(), b"h2".to_vec()], b"h2".as_slice()),
        ] {
            let mut client = site.client();
            client.alpn_protocols = offered;
            let (server, client) = handshake(site.plain_config(), client, "a.test").await;
            assert_eq!(client.alpn.as_deref(), Some(chosen));
            assert_eq!(server.alpn.as_deref(), Some(chosen));
        }
    }

    #[test]
    fn missing_key_file_is_error_naming_path() {
        let site = Site::new();
        let missing = site.pki.path("nowhere.key");
        let certificates = [CertificateFiles {
            cert: site.a.files.cert.clone(),
            key: missing.clone(),
        }];
        let error = server_config(&ServerTlsSettings {
            certificates: &certificates,
            min_version: TlsVersion::V1_2,
            client_ca: None,
            client_auth: ClientAuth::None,
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::Unreadable { ref path, .. } if *path == missing));
        assert!(
            error.to_string().contains(&*missing.to_string_lossy()),
            "{error}"
        );
    }

    #[test]
    fn mismatched_key_is_error() {
        let site = Site::new();
        let certificates = [CertificateFiles {
            cert: site.a.files.cert.clone(),
            key: site.b.files.key.clone(),
        }];
        let error = server_config(&ServerTlsSettings {
            certificates: &certificates,
            min_version: TlsVersion::V1_2,
            client_ca: None,
            client_auth: ClientAuth::None,
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&*site.b.files.key.to_string_lossy()),
            "{message}"
        );
        assert!(
            message.contains(&*site.a.files.cert.to_string_lossy()),
            "{message}"
        );
    }

    #[test]
    fn file_without_certificate_or_key_is_error_naming_path() {
        let site = Site::new();
        // Each file holds only the other kind of PEM section.
        let swapped = [CertificateFiles {
            cert: site.a.files.key.clone(),
            key: site.a.files.cert.clone(),
        }];
        let settings = |certificates| ServerTlsSettings {
            certificates,
            min_version: TlsVersion::V1_2,
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let error = server_config(&settings(&swapped)).unwrap_err();
        assert!(
            matches!(error, TlsError::NoCertificate { ref path } if *path == site.a.files.key),
            "{error:?}"
        );
        let no_key = [CertificateFiles {
            cert: site.a.files.cert.clone(),
            key: site.a.files.cert.clone(),
        }];
        let error = server_config(&settings(&no_key)).unwrap_err();
        assert!(
            matches!(error, TlsError::NoPrivateKey { ref path } if *path == site.a.files.cert),
            "{error:?}"
        );
        let error = server_config(&settings(&[])).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificates), "{error:?}");
    }

    #[test]
    fn client_auth_without_client_ca_is_error() {
        let site = Site::new();
        let certificates = site.certificates();
        for client_auth in [ClientAuth::Optional, ClientAuth::Required] {
            let error = server_config(&ServerTlsSettings {
                certificates: &certificates,
                min_version: TlsVersion::V1_2,
                client_ca: None,
                client_auth,
            })
            .unwrap_err();
            assert!(matches!(error, TlsError::ClientAuthWithoutCa), "{error:?}");
        }
    }

    #[test]
    fn bad_ca_file_is_error_naming_path() {
        let site = Site::new();
        let certificates = site.certificates();
        let garbage = site.pki.path("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let truncated = site.pki.path("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        for ca in [&garbage, &truncated, &site.a.files.key] {
            let error = server_config(&ServerTlsSettings {
                certificates: &certificates,
                min_version: TlsVersion::V1_2,
                client_ca: Some(ca),
                client_auth: ClientAuth::Required,
            })
            .unwrap_err();
            assert!(
                matches!(error, TlsError::BadCa { ref path, .. } if path == ca),
                "{error:?}"
            );
            assert!(
                error.to_string().contains(&*ca.to_string_lossy()),
                "{error}"
            );
        }
        let error = upstream_client_config(Some(&garbage), None).unwrap_err();
        assert!(matches!(error, TlsError::BadCa { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn upstream_client_trusts_given_ca() {
        let site = Site::new();
        let client = upstream_client_config(Some(&site.pki.ca_path), None).unwrap();
        assert!(client.alpn_protocols.is_empty());
        let (server, client) = handshake(site.plain_config(), (*client).clone(), "b.test").await;
        assert_eq!(server.sni.as_deref(), Some("b.test"));
        assert_eq!(client.peer, site.b.der);
    }

    #[tokio::test]
    async fn upstream_client_without_ca_uses_public_roots() {
        let site = Site::new();
        let client = upstream_client_config(None, None).unwrap();
        let (_, client_error) =
            failed_handshake(site.plain_config(), (*client).clone(), "b.test").await;
        assert!(
            client_error.to_string().contains("UnknownIssuer"),
            "client error: {client_error}"
        );
    }

    #[tokio::test]
    async fn upstream_client_presents_client_cert() {
        let site = Site::new();
        let gateway = site.pki.client("gateway", "portcullis", "Acme");
        let client = upstream_client_config(Some(&site.pki.ca_path), Some(&gateway.files)).unwrap();
        let config = site.config(TlsVersion::V1_3, ClientAuth::Required);
        let (server, _) = handshake(config, (*client).clone(), "a.test").await;
        assert_eq!(server.subject.as_deref(), Some("CN=portcullis,O=Acme"));
    }

    #[test]
    fn upstream_client_rejects_mismatched_client_key() {
        let site = Site::new();
        let gateway = site.pki.client("gateway", "portcullis", "Acme");
        let files = CertificateFiles {
            cert: gateway.files.cert.clone(),
            key: site.a.files.key.clone(),
        };
        let error = upstream_client_config(Some(&site.pki.ca_path), Some(&files)).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    }
}
