//! `https://` gateways: the generator speaks TLS (rustls, ring) to a gateway that terminates it
//! itself (`tls.cert`/`tls.key`), verifying its certificate against `--ca-file` (a self-signed
//! or private CA, usual for a test gateway) or else the Mozilla roots (webpki-roots).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// What a TLS connection to each gateway needs.
pub struct Tls {
    connector: TlsConnector,
    /// The name each gateway's certificate must carry (its URL's host).
    names: HashMap<SocketAddr, ServerName<'static>>,
}

impl Tls {
    /// `None` for `http://` URLs; all URLs must use the same scheme.
    pub fn for_urls(
        urls: &[String],
        addrs: &[SocketAddr],
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Option<Arc<Tls>>> {
        let secure = urls.iter().filter(|u| is_https(u)).count();
        if secure == 0 {
            anyhow::ensure!(ca_file.is_none(), "--ca-file is for https:// gateway URLs");
            return Ok(None);
        }
        anyhow::ensure!(
            secure == urls.len(),
            "--url: use https:// for every gateway or for none"
        );
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("--ca-file {}", path.display()))?
                {
                    roots.add(cert.with_context(|| format!("--ca-file {}", path.display()))?)?;
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "--ca-file {} holds no certificate",
                    path.display()
                );
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut names = HashMap::new();
        for (url, addr) in urls.iter().zip(addrs) {
            let host = host_of(url);
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("`{url}`: `{host}` is no server name"))?;
            names.insert(*addr, name);
        }
        Ok(Some(Arc::new(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            names,
        })))
    }

    /// The TLS handshake over a connected socket to `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

pub fn is_https(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("wss://")
}

/// The host of `scheme://host:port/…` (brackets kept off an IPv6 literal).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => hostport
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(hostport),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_off_urls() {
        assert_eq!(host_of("https://localhost:8443"), "localhost");
        assert_eq!(host_of("https://127.0.0.1:8443/x"), "127.0.0.1");
        assert_eq!(host_of("wss://[::1]:8443"), "::1");
    }

    #[test]
    fn schemes_do_not_mix() {
        let addrs: Vec<SocketAddr> = vec![([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into()];
        let mixed = [
            "https://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        assert!(Tls::for_urls(&mixed, &addrs, None).is_err());
        let plain = ["http://127.0.0.1:1".to_owned()];
        assert!(matches!(Tls::for_urls(&plain, &addrs[..1], None), Ok(None)));
        assert!(Tls::for_urls(&plain, &addrs[..1], Some(Path::new("/ca.pem"))).is_err());
    }
}
