//! TLS on the client and peer ports (etcd's `--cert-file` ... `--peer-cert-allowed-cn`), with
//! rustls (ring; no OpenSSL).
//!
//! The scheme of a listen URL decides whether its port speaks TLS, as in etcd. Certificates
//! and keys are read and checked once, at start, so that a missing, unreadable or mismatched
//! file stops the member with one line naming the flag and the file. The ports use our own
//! acceptor ([`serve`]) rather than tonic's `ServerTlsConfig`, for two reasons: the peer
//! port's `--peer-cert-allowed-cn` check must refuse a connection during the handshake, before
//! any Raft message is read, which needs a custom [`ClientCertVerifier`]; and a slow or hostile
//! handshake must not hold up the accept loop. Outbound peer connections (Raft streams,
//! forwarding, probes, joins) present the peer certificate and trust the peer CA
//! ([`PeerClientTls`]).
//!
//! [`client_cert_cn`] gives the verified client certificate's Common Name of a request: with
//! `--client-cert-auth`, etcd takes it as the user name.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS handshakes in progress on one port, at most; a connection past that is closed at once
/// (a flood of half-open handshakes must not eat the memory).
pub const HANDSHAKES_MAX: usize = 256;
/// A handshake that takes longer than this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress from one IP address, at most: a stalled handshake holds one of
/// the port's [`HANDSHAKES_MAX`] slots for up to [`HANDSHAKE_TIMEOUT`], and one address must
/// not hold them all. A connection past that is closed at once.
pub const HANDSHAKES_PER_IP_MAX: usize = 32;
/// Handshakes one IP address may start back to back (each costs this member a key exchange
/// and a signature) ...
pub const HANDSHAKE_IP_BURST: u32 = 64;
/// ... and then one more every this long (50 a second); past that a connection is closed at
/// once.
pub const HANDSHAKE_IP_INTERVAL: Duration = Duration::from_millis(20);
/// Addresses whose handshake budgets are remembered, at most (see [`crate::budget`]).
const HANDSHAKE_IPS_MAX: usize = 4096;

const _: () = assert!(HANDSHAKES_PER_IP_MAX >= 1 && HANDSHAKES_PER_IP_MAX < HANDSHAKES_MAX);
/// Certificate, key or CA files larger than this are refused (a PEM chain is a few KiB).
const PEM_BYTES_MAX: u64 = 1024 * 1024;

/// The TLS flags of one side (client or peer), as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFlags {
    /// `--cert-file` / `--peer-cert-file`: this member's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `--key-file` / `--peer-key-file`: its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: the CA that signs the certificates this
    /// side accepts from the other end. Given, a client certificate is required and verified
    /// (as etcd's `RequireAndVerifyClientCert`); for the peer side it is also the CA that
    /// outbound peer connections trust.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: require a client certificate signed
    /// by the trusted CA (needs `trusted_ca_file`).
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn` (peer side only): a peer's client certificate must have this
    /// Common Name.
    pub allowed_cn: Option<String>,
}

/// Which port a set of flags is for; names the flags in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The etcd API port (`--listen-client-urls`).
    Client,
    /// The peer port (`--listen-peer-urls`).
    Peer,
}

impl Side {
    fn flag(self, name: &str) -> String {
        match self {
            Side::Client => format!("--{name}"),
            Side::Peer => format!("--peer-{name}"),
        }
    }
}

/// Both sides' TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The client port's flags.
    pub client: TlsFlags,
    /// The peer port's flags; also used for outbound peer connections.
    pub peer: TlsFlags,
    /// `--listen-client-urls` is `https://`: the client port speaks TLS.
    pub client_https: bool,
    /// `--listen-peer-urls` is `https://`: the peer port speaks TLS.
    pub peer_https: bool,
}

impl TlsConfig {
    /// Checks the flags against each other and the listen schemes (not the files: see
    /// [`load_server`]). `https_peers`: some peer URL in the cluster definition is `https://`.
    pub fn validate(&self, https_peers: bool) -> Result<(), String> {
        check_side(&self.client, Side::Client, self.client_https)?;
        check_side(&self.peer, Side::Peer, self.peer_https)?;
        if self.client.allowed_cn.is_some() {
            return Err("an allowed CN is a peer setting (--peer-cert-allowed-cn)".into());
        }
        if https_peers && self.peer.trusted_ca_file.is_none() {
            // etcd falls back to the system's roots; Skiff trusts only the CA it is given.
            return Err(
                "https:// peer URLs need --peer-trusted-ca-file (the CA that signs the members' \
                 peer certificates)"
                    .into(),
            );
        }
        if https_peers && (self.peer.cert_file.is_none() || self.peer.key_file.is_none()) {
            return Err(
                "https:// peer URLs need --peer-cert-file and --peer-key-file (a member presents \
                 its peer certificate to the others)"
                    .into(),
            );
        }
        Ok(())
    }
}

fn check_side(flags: &TlsFlags, side: Side, https: bool) -> Result<(), String> {
    let (cert, key) = (side.flag("cert-file"), side.flag("key-file"));
    if flags.cert_file.is_some() != flags.key_file.is_some() {
        return Err(format!("{cert} and {key} must be given together"));
    }
    if https && flags.cert_file.is_none() {
        let url = match side {
            Side::Client => "--listen-client-urls",
            Side::Peer => "--listen-peer-urls",
        };
        return Err(format!(
            "TLS key/cert ({cert}, {key}) must be provided for {url} with HTTPS scheme"
        ));
    }
    if flags.client_cert_auth && flags.trusted_ca_file.is_none() {
        return Err(format!(
            "{} requires {}",
            side.flag("client-cert-auth"),
            side.flag("trusted-ca-file")
        ));
    }
    if flags.allowed_cn.is_some() && flags.trusted_ca_file.is_none() {
        return Err(
            "--peer-cert-allowed-cn requires --peer-trusted-ca-file (a CN is only checked on a \
             verified certificate)"
                .into(),
        );
    }
    Ok(())
}

/// Reads a PEM file of at most [`PEM_BYTES_MAX`]; the error names the flag and the file.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{flag} {}: {what}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > PEM_BYTES_MAX {
        return Err(fail(format!(
            "larger than {PEM_BYTES_MAX} bytes; not a PEM file"
        )));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

/// The certificates of the PEM file `path` (given as `flag`); an error names both.
pub fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{flag} {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            path.display()
        ),
        e => format!("{flag} {}: {e}", path.display()),
    })
}

fn read_roots(flag: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{flag} {}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// ring's provider, as tonic's `tls-ring` client side uses. rustls 0.23.48 deprecates it for
/// lacking post-quantum key exchange (aws-lc-rs has it, but needs cmake and a C toolchain to
/// build); classical ECDHE is what etcd's own Go TLS offers too.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration of one side, from its files: `Ok(None)` when the port is
/// plain (`http://`; etcd ignores certificate files then, with a warning). `alpn`: the
/// application protocols offered (`h2`, and `http/1.1` on the client port for `/health` and
/// `/metrics`).
pub fn load_server(
    flags: &TlsFlags,
    side: Side,
    https: bool,
    alpn: &[&[u8]],
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    if !https {
        // A peer port meant to authenticate its peers but served in plaintext would take
        // Raft messages from anyone: refused, where etcd only warns.
        if side == Side::Peer && (flags.client_cert_auth || flags.trusted_ca_file.is_some()) {
            return Err(format!(
                "{} and {} need an https:// --listen-peer-urls: the peer port would \
                 otherwise accept unauthenticated peers",
                side.flag("client-cert-auth"),
                side.flag("trusted-ca-file")
            ));
        }
        if flags.cert_file.is_some() || flags.client_cert_auth {
            tracing::warn!(
                port = ?side,
                "the listen URL's scheme is http while TLS flags are given; the port is served \
                 without TLS and those flags are ignored for it"
            );
        }
        return Ok(None);
    }
    let (Some(cert_path), Some(key_path)) = (&flags.cert_file, &flags.key_file) else {
        return Err(format!(
            "TLS key/cert ({}, {}) must be provided with an https:// listen URL",
            side.flag("cert-file"),
            side.flag("key-file")
        ));
    };
    let cert_flag = side.flag("cert-file");
    let key_flag = side.flag("key-file");
    let chain = read_certs(&cert_flag, cert_path)?;
    let key = read_key(&key_flag, key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match &flags.trusted_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let ca_flag = side.flag("trusted-ca-file");
            let roots = read_roots(&ca_flag, ca_path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{ca_flag} {}: {e}", ca_path.display()))?;
            match &flags.allowed_cn {
                None => builder.with_client_cert_verifier(verifier),
                Some(cn) => builder.with_client_cert_verifier(Arc::new(AllowedCn {
                    inner: verifier,
                    cn: cn.clone(),
                })),
            }
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{cert_flag} {} and {key_flag} {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// A client certificate verifier that also requires a Common Name (`--peer-cert-allowed-cn`),
/// checked after the chain verified, so that a certificate of the right CA but another CN is
/// refused in the handshake.
#[derive(Debug)]
struct AllowedCn {
    /// Verifies the chain against the trusted CA.
    inner: Arc<dyn ClientCertVerifier>,
    /// The only Common Name accepted.
    cn: String,
}

/// Why a verified certificate was refused.
#[derive(Debug)]
struct WrongCn {
    found: Option<String>,
    allowed: String,
}

impl std::fmt::Display for WrongCn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allowed = &self.allowed;
        match &self.found {
            Some(cn) => write!(
                f,
                "client certificate's CN {cn:?} is not the allowed CN {allowed:?} (--peer-cert-allowed-cn)"
            ),
            None => write!(
                f,
                "client certificate has no CN; the allowed CN is {allowed:?} (--peer-cert-allowed-cn)"
            ),
        }
    }
}

impl std::error::Error for WrongCn {}

impl ClientCertVerifier for AllowedCn {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = common_name(end_entity);
        if found.as_deref() == Some(self.cn.as_str()) {
            return Ok(verified);
        }
        // `Error::Other` displays its cause (a `CertificateError::Other` would show only its
        // Debug form in the log); the peer gets a handshake_failure alert.
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(
            WrongCn {
                found,
                allowed: self.cn.clone(),
            },
        ))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The Common Name of a certificate's subject as etcd (Go's `pkix.Name`) reads it: with
/// several CN attributes, the last one that is a string (Go's `FillFromRDNSequence` assigns
/// each in turn); `None` if it has none or does not parse. Taking another one than etcd
/// would make one certificate name different users (or pass `--peer-cert-allowed-cn`
/// differently) in Skiff and in etcd.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()?;
    Some(cn.to_string())
}

/// The Common Name of the client certificate `request` came with, on a TLS port with a trusted
/// CA (`--trusted-ca-file`): the handshake verified it against that CA, or the connection
/// would not exist. `None` on a plain port, or a TLS port that asks for no certificate. Under
/// `--client-cert-auth` etcd takes it as the user name.
pub fn client_cert_cn<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    common_name(certs.first()?)
}

/// How outbound peer connections speak TLS: the peer certificate to present and the peer CA
/// to trust. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PeerClientTls {
    /// `None` when no peer TLS is configured: an `https://` peer URL is then refused.
    config: Option<ClientTlsConfig>,
}

impl PeerClientTls {
    /// No TLS: only `http://` peers can be reached.
    pub fn none() -> PeerClientTls {
        PeerClientTls::default()
    }

    /// From the peer flags: given a CA (and, as validated, a certificate and key), `https://`
    /// peers are reached with them.
    pub fn load(flags: &TlsFlags) -> Result<PeerClientTls, String> {
        let Some(ca_path) = &flags.trusted_ca_file else {
            return Ok(PeerClientTls::none());
        };
        // Read and parsed here too, so that a bad file stops the member at start rather than
        // failing every connection later.
        let ca_flag = "--peer-trusted-ca-file";
        read_roots(ca_flag, ca_path)?;
        let ca = read_pem(ca_flag, ca_path)?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert_path), Some(key_path)) = (&flags.cert_file, &flags.key_file) {
            read_certs("--peer-cert-file", cert_path)?;
            read_key("--peer-key-file", key_path)?;
            config = config.identity(Identity::from_pem(
                read_pem("--peer-cert-file", cert_path)?,
                read_pem("--peer-key-file", key_path)?,
            ));
        }
        Ok(PeerClientTls {
            config: Some(config),
        })
    }

    /// An endpoint for the peer at `url`: TLS when the URL is `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| format!("peer url {url:?}: {e}"))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let Some(config) = &self.config else {
            return Err(format!(
                "peer url {url}: https:// needs --peer-trusted-ca-file, --peer-cert-file and \
                 --peer-key-file"
            ));
        };
        endpoint
            .tls_config(config.clone())
            .map_err(|e| format!("peer url {url}: TLS: {e}"))
    }
}

/// What a server future returns.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves `router` on `listener` until `shutdown`: plain TCP, or TLS with `tls`. Every
/// accepted connection gets `TCP_NODELAY` (small gRPC answers must not wait for Nagle's
/// algorithm to meet the other side's delayed ACK; BENCHMARKS.md). `port` names the port in
/// logs.
pub fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    port: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Serving {
    match tls {
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
        Some(config) => {
            let incoming = tls_incoming(listener, config, port);
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
    }
}

/// Connections whose TLS handshake completed, in the order they did. Handshakes run
/// concurrently (at most [`HANDSHAKES_MAX`], each within [`HANDSHAKE_TIMEOUT`]), so one slow
/// client holds up no other; a failed one is logged with its reason and closed, and nothing
/// of it reaches the server. The accept task ends when the server drops the stream.
fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    port: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // Bounded by the handshake permits too: a handshake holds its permit until its stream is
    // in this queue.
    let (tx, rx) = mpsc::channel(HANDSHAKES_MAX);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        let gate = Arc::new(HandshakeGate::default());
        let failures = Arc::new(FailureLog::default());
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(port, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if let Some(more) = failures.may_log() {
                    tracing::warn!(
                        port, %remote, more_since_last_line = more,
                        "{HANDSHAKES_MAX} TLS handshakes in progress; connection closed"
                    );
                }
                continue;
            };
            // Held, like the permit, until the handshake ends.
            let slot = match gate.try_enter(remote.ip(), std::time::Instant::now()) {
                Ok(slot) => slot,
                Err(why) => {
                    if let Some(more) = failures.may_log() {
                        tracing::warn!(
                            port, %remote, more_since_last_line = more,
                            "{why}; connection closed"
                        );
                    }
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(port, %remote, %error, "TCP_NODELAY not set");
            }
            let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let why = match handshake.await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        // The slot before the permit: the accept loop may take the permit
                        // at once and count a new address (see `try_enter`).
                        drop(slot);
                        drop(permit);
                        return;
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("took longer than {HANDSHAKE_TIMEOUT:?}"),
                };
                drop(slot);
                drop(permit);
                if let Some(more) = failures.may_log() {
                    tracing::warn!(
                        port, %remote, error = %why, more_since_last_line = more,
                        "TLS handshake failed; connection refused"
                    );
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The per-address handshake budgets of one port: at most [`HANDSHAKES_PER_IP_MAX`] in
/// progress, and started at most as fast as [`HANDSHAKE_IP_BURST`] and
/// [`HANDSHAKE_IP_INTERVAL`] allow.
#[derive(Debug)]
struct HandshakeGate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    /// Address -> handshakes in progress from it (never 0: an address with none has no
    /// entry). At most [`HANDSHAKES_MAX`] entries, since each holds a port's permit.
    in_progress: std::collections::HashMap<std::net::IpAddr, usize>,
    /// Handshakes each address may still start.
    started: crate::budget::Buckets<std::net::IpAddr>,
}

impl Default for HandshakeGate {
    fn default() -> Self {
        HandshakeGate {
            state: std::sync::Mutex::new(GateState {
                in_progress: Default::default(),
                started: crate::budget::Buckets::new(
                    HANDSHAKE_IP_BURST,
                    HANDSHAKE_IP_INTERVAL,
                    HANDSHAKE_IPS_MAX,
                ),
            }),
        }
    }
}

impl HandshakeGate {
    /// A slot for a handshake from `ip` at `now`, released when dropped; or why none.
    fn try_enter(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<HandshakeSlot, &'static str> {
        // Counted by source: an IPv6 /64 is one host's (see `budget::source_of`).
        let ip = crate::budget::source_of(ip);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.in_progress.get(&ip).copied().unwrap_or(0) >= HANDSHAKES_PER_IP_MAX {
            return Err("too many TLS handshakes in progress from this address");
        }
        if s.started.level(&ip, now) < 1.0 {
            return Err("TLS handshakes started too fast from this address");
        }
        s.started.take(ip, now);
        *s.in_progress.entry(ip).or_insert(0) += 1;
        // At most one address per permit: slots are released before their permits.
        debug_assert!(s.in_progress.len() <= HANDSHAKES_MAX);
        Ok(HandshakeSlot {
            gate: self.clone(),
            ip,
        })
    }
}

/// A handshake in progress from `ip`, counted by its gate until dropped.
struct HandshakeSlot {
    gate: Arc<HandshakeGate>,
    ip: std::net::IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = s.in_progress.get_mut(&self.ip) else {
            panic!("a handshake slot of {} was not counted", self.ip);
        };
        *n -= 1;
        if *n == 0 {
            s.in_progress.remove(&self.ip);
        }
    }
}

/// Rate limit of the refused-connection lines of one port (failed handshakes, and connections
/// past [`HANDSHAKES_MAX`]): a misconfigured member retries
/// several times a second, and its every attempt must not become a log line. The first failure
/// is logged, then at most one every [`FailureLog::EVERY`], counting those left out.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    /// When the last line was logged (`None`: never), and the failures not logged since.
    state: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(5);

    /// `Some(failures left out since the last line)` if this failure is to be logged.
    pub(crate) fn may_log(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.0 {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                state.1 += 1;
                None
            }
            _ => {
                let left_out = state.1;
                *state = (Some(now), 0);
                Some(left_out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// A CA, and a leaf certificate with CN `cn` signed by it (`leaf.pem`, `leaf-key.pem`),
    /// and an unrelated key (`other-key.pem`).
    fn pki(cn: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test ca");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        let other = rcgen::KeyPair::generate().expect("other key");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("leaf.pem", leaf.pem()),
            ("leaf-key.pem", key.serialize_pem()),
            ("other-key.pem", other.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        }
        Pki { dir }
    }

    #[test]
    fn one_address_gets_a_share_of_the_handshakes_at_a_bounded_rate() {
        let gate = Arc::new(HandshakeGate::default());
        let t0 = std::time::Instant::now();
        let a: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let b: std::net::IpAddr = "10.0.0.2".parse().expect("ip");
        let held: Vec<_> = (0..HANDSHAKES_PER_IP_MAX)
            .map(|_| gate.try_enter(a, t0).expect("within the share"))
            .collect();
        assert!(gate.try_enter(a, t0).is_err(), "a's share is in progress");
        let other = gate.try_enter(b, t0).expect("b has its own");
        drop(other);
        drop(held);
        assert!(gate.state.lock().expect("lock").in_progress.is_empty());
        // a has started 32 of its 64; the rest of the burst, then the rate.
        let burst = HANDSHAKE_IP_BURST as usize - HANDSHAKES_PER_IP_MAX;
        for _ in 0..burst {
            drop(gate.try_enter(a, t0).expect("burst"));
        }
        assert!(gate.try_enter(a, t0).is_err(), "started too fast");
        drop(
            gate.try_enter(a, t0 + HANDSHAKE_IP_INTERVAL)
                .expect("refilled"),
        );
    }

    #[test]
    fn of_several_common_names_the_last_is_taken_as_etcd_does() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        // A second CN attribute (OID 2.5.4.3 given as a custom type, which rcgen keeps apart
        // from its own CommonName entry), after the first.
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), "root");
        let cert = params.self_signed(&key).expect("cert");
        let der = CertificateDer::from(cert.der().to_vec());
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parses");
        assert_eq!(parsed.subject().iter_common_name().count(), 2, "two CNs");
        // Go's crypto/x509: Subject.CommonName is "root".
        assert_eq!(common_name(&der).as_deref(), Some("root"));
    }

    fn flags(pki: &Pki, key: &str) -> TlsFlags {
        TlsFlags {
            cert_file: Some(pki.path("leaf.pem")),
            key_file: Some(pki.path(key)),
            trusted_ca_file: Some(pki.path("ca.pem")),
            client_cert_auth: true,
            allowed_cn: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn handshake_failures_are_logged_at_most_every_five_seconds() {
        let log = FailureLog::default();
        assert_eq!(log.may_log(), Some(0), "the first is logged");
        assert_eq!(log.may_log(), None);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(log.may_log(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(log.may_log(), Some(2), "with the count of those left out");
        assert_eq!(log.may_log(), None);
    }

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let pki = pki("alice");
        let certs = read_certs("--cert-file", &pki.path("leaf.pem")).expect("certs");
        assert_eq!(common_name(&certs[0]).as_deref(), Some("alice"));
        let ca = read_certs("--trusted-ca-file", &pki.path("ca.pem")).expect("ca");
        assert_eq!(common_name(&ca[0]).as_deref(), Some("test ca"));
        assert_eq!(common_name(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn good_files_load_and_bad_ones_name_the_flag_and_file() {
        let pki = pki("m1");
        let good = flags(&pki, "leaf-key.pem");
        let config = load_server(&good, Side::Peer, true, &[b"h2"])
            .expect("loads")
            .expect("https");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(load_server(&good, Side::Client, false, &[])
            .expect("plain")
            .is_none());
        PeerClientTls::load(&good).expect("client side loads");

        let mismatched = flags(&pki, "other-key.pem");
        let err = load_server(&mismatched, Side::Client, true, &[]).expect_err("mismatch");
        assert!(
            err.contains("--key-file") && err.contains("other-key.pem"),
            "{err}"
        );

        let missing = TlsFlags {
            cert_file: Some(pki.path("nope.pem")),
            ..good.clone()
        };
        let err = load_server(&missing, Side::Peer, true, &[]).expect_err("missing");
        assert!(
            err.starts_with("--peer-cert-file") && err.contains("nope.pem"),
            "{err}"
        );

        let key_as_cert = TlsFlags {
            cert_file: Some(pki.path("leaf-key.pem")),
            ..good.clone()
        };
        let err = load_server(&key_as_cert, Side::Client, true, &[]).expect_err("no cert");
        assert!(err.contains("no PEM certificate"), "{err}");

        let cert_as_key = TlsFlags {
            key_file: Some(pki.path("leaf.pem")),
            ..good.clone()
        };
        let err = PeerClientTls::load(&cert_as_key).expect_err("no key");
        assert!(
            err.starts_with("--peer-key-file") && err.contains("no PEM private key"),
            "{err}"
        );

        let bad_ca = TlsFlags {
            trusted_ca_file: Some(pki.path("leaf-key.pem")),
            ..good
        };
        let err = load_server(&bad_ca, Side::Client, true, &[]).expect_err("no ca");
        assert!(err.starts_with("--trusted-ca-file"), "{err}");
    }

    #[test]
    fn flag_combinations_are_checked() {
        let file = || Some(PathBuf::from("x.pem"));
        let https_client = TlsConfig {
            client_https: true,
            ..TlsConfig::default()
        };
        let err = https_client.validate(false).expect_err("no certs");
        assert!(err.contains("--cert-file, --key-file"), "{err}");

        let auth_without_ca = TlsConfig {
            client: TlsFlags {
                client_cert_auth: true,
                ..TlsFlags::default()
            },
            ..TlsConfig::default()
        };
        let err = auth_without_ca.validate(false).expect_err("no ca");
        assert_eq!(err, "--client-cert-auth requires --trusted-ca-file");

        let half = TlsConfig {
            peer: TlsFlags {
                cert_file: file(),
                ..TlsFlags::default()
            },
            ..TlsConfig::default()
        };
        let err = half.validate(false).expect_err("no key");
        assert!(err.contains("--peer-key-file"), "{err}");

        let peer = TlsFlags {
            cert_file: file(),
            key_file: file(),
            ..TlsFlags::default()
        };
        let no_ca = TlsConfig {
            peer: peer.clone(),
            peer_https: true,
            ..TlsConfig::default()
        };
        let err = no_ca.validate(true).expect_err("https peers need a CA");
        assert!(err.contains("--peer-trusted-ca-file"), "{err}");
        let cn_without_ca = TlsConfig {
            peer: TlsFlags {
                allowed_cn: Some("m".into()),
                ..peer.clone()
            },
            ..TlsConfig::default()
        };
        let err = cn_without_ca.validate(false).expect_err("cn needs a ca");
        assert!(err.contains("--peer-cert-allowed-cn"), "{err}");

        let full = TlsConfig {
            peer: TlsFlags {
                trusted_ca_file: file(),
                client_cert_auth: true,
                allowed_cn: Some("m".into()),
                ..peer
            },
            peer_https: true,
            ..TlsConfig::default()
        };
        full.validate(true).expect("complete peer TLS");
    }

    #[test]
    fn https_peers_need_the_peer_tls_configuration() {
        let none = PeerClientTls::none();
        none.endpoint("http://127.0.0.1:1").expect("plain");
        let err = none.endpoint("https://127.0.0.1:1").expect_err("no tls");
        assert!(err.contains("--peer-trusted-ca-file"), "{err}");
        let pki = pki("m1");
        let tls = PeerClientTls::load(&flags(&pki, "leaf-key.pem")).expect("loads");
        tls.endpoint("https://127.0.0.1:1").expect("tls endpoint");
    }

    #[test]
    fn a_refused_cn_reads_as_a_name_not_an_option() {
        let named = WrongCn {
            found: Some("root".into()),
            allowed: "member".into(),
        };
        assert_eq!(
            named.to_string(),
            "client certificate's CN \"root\" is not the allowed CN \"member\" (--peer-cert-allowed-cn)"
        );
        let none = WrongCn {
            found: None,
            allowed: "member".into(),
        };
        assert_eq!(
            none.to_string(),
            "client certificate has no CN; the allowed CN is \"member\" (--peer-cert-allowed-cn)"
        );
    }
}
