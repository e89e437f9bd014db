//! TLS for `skiff serve` (etcd's flags) and `skiff dev --tls` (a throwaway CA and
//! certificates made with rcgen).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// etcd's TLS flags of both ports.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Certificate (PEM) of the client port; needed when --listen-client-urls is https://.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA (PEM) that signs client certificates: given, clients must present a certificate it
    /// signed.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    client_cert_auth: bool,
    /// Certificate (PEM) of the peer port, also presented to other members; needed with
    /// https:// peer URLs.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// CA (PEM) that signs the members' peer certificates: a peer must present a certificate
    /// it signed, and this member trusts only it when connecting to https:// peers.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    peer_client_cert_auth: bool,
    /// Accept only peers whose certificate has this Common Name.
    #[arg(long)]
    peer_cert_allowed_cn: Option<String>,
}

impl TlsArgs {
    /// The server's TLS settings, the ports' schemes taken from their listen URLs.
    pub fn to_config(&self, listen_client: &str, listen_peer: &str) -> server::tls::TlsConfig {
        server::tls::TlsConfig {
            client: server::tls::TlsFlags {
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                trusted_ca_file: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
                allowed_cn: None,
            },
            peer: server::tls::TlsFlags {
                cert_file: self.peer_cert_file.clone(),
                key_file: self.peer_key_file.clone(),
                trusted_ca_file: self.peer_trusted_ca_file.clone(),
                client_cert_auth: self.peer_client_cert_auth,
                allowed_cn: self
                    .peer_cert_allowed_cn
                    .clone()
                    .filter(|cn| !cn.is_empty()),
            },
            client_https: server::cluster::is_https(listen_client),
            peer_https: server::cluster::is_https(listen_peer),
        }
    }
}

/// The `skiff serve` flags `skiff dev --tls` sets for each member.
pub const FLAGS_SET_BY_DEV_TLS: [&str; 9] = [
    "--cert-file",
    "--key-file",
    "--trusted-ca-file",
    "--client-cert-auth",
    "--peer-cert-file",
    "--peer-key-file",
    "--peer-trusted-ca-file",
    "--peer-client-cert-auth",
    "--peer-cert-allowed-cn",
];

/// The files `skiff dev --tls` makes under `<data-dir>/tls`.
pub struct DevCerts {
    /// The throwaway CA's certificate.
    pub ca: PathBuf,
    /// The members' certificate (CN [`DEV_MEMBER_CN`], SANs 127.0.0.1 and localhost; server
    /// and client use), for both ports. The members accept only it on the peer port
    /// (`--peer-cert-allowed-cn`), so the client certificate, signed by the same CA, cannot
    /// open it.
    pub member: PathBuf,
    /// Its key.
    pub member_key: PathBuf,
    /// A client certificate for etcdctl (CN [`DEV_CLIENT_CN`]).
    pub client: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// The Common Name of `skiff dev --tls`'s client certificate (etcd's user under
/// `--client-cert-auth`).
pub const DEV_CLIENT_CN: &str = "root";
/// The Common Name of `skiff dev --tls`'s member certificate, the only one its members
/// accept on the peer port (`--peer-cert-allowed-cn`).
pub const DEV_MEMBER_CN: &str = "skiff-dev-member";
const _: () = assert!(
    !DEV_MEMBER_CN.is_empty() && DEV_MEMBER_CN.len() != DEV_CLIENT_CN.len(),
    "the member and client certificates name different subjects"
);

impl DevCerts {
    fn under(dir: &Path) -> DevCerts {
        DevCerts {
            ca: dir.join("ca.pem"),
            member: dir.join("member.pem"),
            member_key: dir.join("member-key.pem"),
            client: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    /// The certificates under `dir`, made now unless all are there from an earlier run (a
    /// restarted dev cluster keeps its CA, so certificates handed out stay good). The CA's
    /// key is never written: nothing else can be signed with it.
    pub fn make_or_reuse(dir: &Path) -> anyhow::Result<DevCerts> {
        let certs = DevCerts::under(dir);
        let all = [
            &certs.ca,
            &certs.member,
            &certs.member_key,
            &certs.client,
            &certs.client_key,
        ];
        // Kept only if the member certificate names the member CN the peer port allows (an
        // older run may have made others): a cluster that cannot reach itself helps nobody.
        if all.iter().all(|p| p.exists())
            && member_cn(&certs.member).as_deref() == Some(DEV_MEMBER_CN)
        {
            return Ok(certs);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ca_key = rcgen::KeyPair::generate().context("generate the CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
            .context("CA certificate parameters")?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "skiff dev CA (throwaway)");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).context("self-sign the CA")?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |cn: &str, sans: Vec<String>, server_auth: bool| -> anyhow::Result<_> {
            let key = rcgen::KeyPair::generate().context("generate a key")?;
            let mut params =
                rcgen::CertificateParams::new(sans).context("certificate parameters")?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            if server_auth {
                params
                    .extended_key_usages
                    .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
            }
            let cert = params
                .signed_by(&key, &issuer)
                .with_context(|| format!("sign the certificate of {cn}"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (member, member_key) = leaf(DEV_MEMBER_CN, sans, true)?;
        let (client, client_key) = leaf(DEV_CLIENT_CN, Vec::new(), false)?;
        write(&certs.ca, &ca.pem(), false)?;
        write(&certs.member, &member, false)?;
        write(&certs.member_key, &member_key, true)?;
        write(&certs.client, &client, false)?;
        write(&certs.client_key, &client_key, true)?;
        Ok(certs)
    }
}

/// The Common Name of the certificate in the PEM file `path`, if it reads and parses.
fn member_cn(path: &Path) -> Option<String> {
    let certs = server::tls::read_certs("--peer-cert-file", path).ok()?;
    server::tls::common_name(certs.first()?)
}

/// Writes `text` to `path`; a key only its owner may read.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_load_as_a_member_and_are_kept_across_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = DevCerts::make_or_reuse(dir.path()).expect("made");
        let ca_before = std::fs::read(&certs.ca).expect("ca");
        let flags = |cert: &PathBuf, key: &PathBuf| server::tls::TlsFlags {
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            trusted_ca_file: Some(certs.ca.clone()),
            client_cert_auth: true,
            allowed_cn: None,
        };
        let member = flags(&certs.member, &certs.member_key);
        server::tls::load_server(&member, server::tls::Side::Peer, true, &[b"h2"])
            .expect("member certificate loads");
        server::tls::PeerClientTls::load(&flags(&certs.client, &certs.client_key))
            .expect("client certificate loads");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&certs.client_key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private: {mode:o}");
        let again = DevCerts::make_or_reuse(dir.path()).expect("reused");
        assert_eq!(std::fs::read(&again.ca).expect("ca"), ca_before);
    }
}
