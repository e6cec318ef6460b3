//! TLS to Postgres (a managed Postgres usually requires it): on when the URL says
//! `sslmode=require`, always verifying the server's certificate and host name against the
//! Mozilla root program's CAs (webpki-roots, as for Redis and the chat upstreams), or against
//! `cluster.postgres_ca_file` alone when set; with a client certificate when one is configured
//! (a server that authenticates by certificate).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use lockstep_shared::store::StoreError;

/// The TLS connector `url` asks for, or `None` for plain text.
pub(super) fn connector(
    url: &str,
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Option<MakeRustlsConnect>, StoreError> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Config(format!("cluster.postgres_url: {e}")))?;
    if config.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("postgres TLS: {e}")))?
        .with_root_certificates(roots);
    let tls = match client {
        Some((cert, key)) => {
            let chain = certs_from_file("cluster.postgres_client_cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                StoreError::Config(format!(
                    "cluster.postgres_client_key {}: {e}",
                    key.display()
                ))
            })?;
            tls.with_client_auth_cert(chain, key)
                .map_err(|e| StoreError::Config(format!("postgres client certificate: {e}")))?
        }
        None => tls.with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(tls)))
}

/// Every certificate in a PEM file, as roots.
fn roots_from_file(path: &Path) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_file("cluster.postgres_ca_file", path)? {
        roots.add(cert).map_err(|e| {
            StoreError::Config(format!("cluster.postgres_ca_file {}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

/// Every certificate in a PEM file (at least one).
fn certs_from_file(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let bad = |e: String| StoreError::Config(format!("{setting} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}
