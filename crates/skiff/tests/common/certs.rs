//! Certificates for the TLS tests, made with rcgen: CAs, member certificates (server and
//! client use, SANs 127.0.0.1 and localhost) and client certificates, as PEM files.

use std::path::{Path, PathBuf};

/// A certificate authority whose key is kept in memory to sign with.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate's PEM file.
    pub cert: PathBuf,
}

/// A certificate and its key, as files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA called `name`, its certificate written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).expect("write CA");
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            cert: path,
        }
    }

    /// A member certificate with Common Name `cn`: `<dir>/<file>.pem` and
    /// `<dir>/<file>-key.pem`.
    pub fn member(&self, dir: &Path, file: &str, cn: &str) -> Pair {
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        self.sign(dir, file, cn, sans, true)
    }

    /// A client certificate with Common Name `cn` (the etcd user under `--client-cert-auth`).
    pub fn client(&self, dir: &Path, file: &str, cn: &str) -> Pair {
        self.sign(dir, file, cn, Vec::new(), false)
    }

    fn sign(&self, dir: &Path, file: &str, cn: &str, sans: Vec<String>, server: bool) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = Pair {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write certificate");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}

/// The `skiff serve` flags for TLS on both ports with certificate authentication, with
/// `member` as the certificate of both and `ca` trusted on both.
pub fn serve_flags(ca: &Path, member: &Pair) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--cert-file".into(),
        path(&member.cert),
        "--key-file".into(),
        path(&member.key),
        "--trusted-ca-file".into(),
        path(ca),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        path(&member.cert),
        "--peer-key-file".into(),
        path(&member.key),
        "--peer-trusted-ca-file".into(),
        path(ca),
        "--peer-client-cert-auth".into(),
    ]
}

/// etcdctl's flags to use `client` and trust `ca`.
pub fn etcdctl_flags(ca: &Path, client: &Pair) -> Vec<String> {
    vec![
        format!("--cacert={}", ca.display()),
        format!("--cert={}", client.cert.display()),
        format!("--key={}", client.key.display()),
    ]
}
