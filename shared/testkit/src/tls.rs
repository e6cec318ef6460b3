//! A throwaway certificate authority and a server certificate it signed for `localhost` and
//! `127.0.0.1`, as PEM files: private Redis and Postgres servers serve TLS with them, and a
//! client that trusts the CA file verifies them as it would a managed service's.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::util::temp_dir;

/// A CA and one server certificate, removed on drop.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// A new CA (each call makes a different one, so a client trusting another CA fails).
    pub fn new() -> TestCa {
        let dir = temp_dir("tls");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: another test CA is then an unknown issuer, not a bad signature.
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("Lockstep test CA {}", name.unwrap_or_default()),
        );
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = server.signed_by(&key, &ca).unwrap();
        // A client certificate for servers that ask for one; Postgres takes its common name
        // as the user's.
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "postgres");
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        let key_file = dir.join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        // Postgres refuses a key others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        TestCa { dir }
    }

    /// The CA certificate a client trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (mode 0600).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A client certificate this CA signed (common name `postgres`).
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key.
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The files, for launchers that restart servers later.
    pub(crate) fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca_file(),
            cert: self.cert_file(),
            key: self.key_file(),
        }
    }
}

/// Where a [`TestCa`]'s files are (valid while it lives).
#[derive(Clone)]
pub(crate) struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// `redis-server` settings serving TLS only, on `port`, with this certificate; clients
    /// need a certificate of their own when `client_certs`. Cluster nodes talk TLS to each
    /// other too.
    pub(crate) fn redis_server_args(&self, port: u16, client_certs: bool) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
            "--tls-cluster".into(),
            "yes".into(),
        ]
    }

    /// `redis-cli` flags to reach such a server.
    pub(crate) fn redis_cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
