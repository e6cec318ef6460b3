//! TLS to the cluster's backing services (a managed Redis or Postgres usually requires it):
//! settings libpq or redis-cli users bring along that this build reads differently are
//! refused here with the spelling it wants, before any connection is tried.

use std::path::Path;

use super::ClusterConfig;

/// One parameter of a Postgres connection string, in URL form (`postgres://…?sslmode=require`)
/// or key/value form (`host=… sslmode=require`); the first occurrence wins.
fn postgres_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let pairs: Box<dyn Iterator<Item = &str>> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url.split_once('?') {
                Some((_, query)) => Box::new(query.split('&')),
                None => Box::new(std::iter::empty()),
            }
        } else {
            Box::new(url.split_whitespace())
        };
    pairs
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Whether a Redis address asks for TLS.
fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// A PEM file must be readable and hold `what` (its block's `-----BEGIN … marker-----`).
fn pem_file_problem(setting: &str, path: &Path, marker: &str, what: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Err(e) => Some(format!("{setting}: cannot read {}: {e}", path.display())),
        Ok(pem) if !pem.contains(marker) => {
            Some(format!("{setting}: {} holds no {what}", path.display()))
        }
        Ok(_) => None,
    }
}

/// A CA or certificate file must hold at least one certificate.
fn ca_file_problem(setting: &str, path: &Path) -> Option<String> {
    pem_file_problem(
        setting,
        path,
        "-----BEGIN CERTIFICATE-----",
        "PEM certificate",
    )
}

/// A key file must hold a private key.
fn key_file_problem(setting: &str, path: &Path) -> Option<String> {
    pem_file_problem(setting, path, "PRIVATE KEY-----", "PEM private key")
}

/// A client certificate and its key: both or neither, readable, and only over TLS.
fn client_pair_problems(
    service: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    tls: bool,
    turn_on: &str,
) -> Vec<String> {
    let mut errs = Vec::new();
    match (cert, key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            if !tls {
                errs.push(format!(
                    "cluster.{service}_client_cert is set but {service} is reached without TLS: {turn_on}"
                ));
            }
            errs.extend(ca_file_problem(
                &format!("cluster.{service}_client_cert"),
                cert,
            ));
            errs.extend(key_file_problem(
                &format!("cluster.{service}_client_key"),
                key,
            ));
        }
        _ => errs.push(format!(
            "cluster.{service}_client_cert and cluster.{service}_client_key must be set together"
        )),
    }
    errs
}

/// Every problem with the cluster's TLS settings.
pub(super) fn problems(c: &ClusterConfig) -> Vec<String> {
    let mut errs = Vec::new();
    let redis_tls = if c.redis_cluster_nodes.is_empty() {
        is_tls(&c.redis_url)
    } else {
        let tls = c.redis_cluster_nodes.iter().filter(|n| is_tls(n)).count();
        if tls != 0 && tls != c.redis_cluster_nodes.len() {
            errs.push(
                "cluster.redis_cluster_nodes: every seed must use the same scheme \
                 (all rediss:// or all redis://): a cluster is reached one way"
                    .into(),
            );
        }
        tls != 0
    };
    if let Some(path) = &c.redis_ca_file {
        if !redis_tls {
            errs.push(
                "cluster.redis_ca_file is set but Redis is reached without TLS: write \
                 rediss:// in cluster.redis_url (or cluster.redis_cluster_nodes)"
                    .into(),
            );
        }
        errs.extend(ca_file_problem("cluster.redis_ca_file", path));
    }
    errs.extend(client_pair_problems(
        "redis",
        c.redis_client_cert.as_deref(),
        c.redis_client_key.as_deref(),
        redis_tls,
        "write rediss://",
    ));
    if c.redis_url.contains("#insecure")
        || c.redis_cluster_nodes
            .iter()
            .any(|n| n.contains("#insecure"))
    {
        errs.push(
            "cluster: rediss://…#insecure (no certificate check) is not supported; give the \
             server's CA in cluster.redis_ca_file"
                .into(),
        );
    }
    let url = &c.postgres_url;
    let sslmode = postgres_param(url, "sslmode");
    match sslmode {
        None | Some("disable" | "prefer" | "require") => {}
        Some("verify-ca" | "verify-full") => errs.push(
            "cluster.postgres_url: write sslmode=require — it always verifies the server's \
             certificate and host name here (libpq's verify-full)"
                .into(),
        ),
        Some(other) => errs.push(format!(
            "cluster.postgres_url: sslmode={other} is not one of disable, prefer, require"
        )),
    }
    if postgres_param(url, "sslrootcert").is_some() {
        errs.push(
            "cluster.postgres_url: sslrootcert is not read from the URL; set \
             cluster.postgres_ca_file to the CA's PEM file"
                .into(),
        );
    }
    if postgres_param(url, "sslcert").is_some() || postgres_param(url, "sslkey").is_some() {
        errs.push(
            "cluster.postgres_url: sslcert and sslkey are not read from the URL; set \
             cluster.postgres_client_cert and cluster.postgres_client_key"
                .into(),
        );
    }
    errs.extend(client_pair_problems(
        "postgres",
        c.postgres_client_cert.as_deref(),
        c.postgres_client_key.as_deref(),
        sslmode == Some("require"),
        "add sslmode=require to cluster.postgres_url",
    ));
    if let Some(path) = &c.postgres_ca_file {
        if sslmode != Some("require") {
            errs.push(
                "cluster.postgres_ca_file is set but cluster.postgres_url does not say \
                 sslmode=require (without it the connection is plain text)"
                    .into(),
            );
        }
        errs.extend(ca_file_problem("cluster.postgres_ca_file", path));
    }
    errs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn postgres_params_are_read_in_both_forms() {
        let url = "postgres://u:p@db:5432/ls?application_name=x&sslmode=require";
        assert_eq!(postgres_param(url, "sslmode"), Some("require"));
        assert_eq!(postgres_param(url, "host"), None);
        let kv = "host=db user=u sslmode=disable";
        assert_eq!(postgres_param(kv, "sslmode"), Some("disable"));
        assert_eq!(postgres_param("postgres://db/ls", "sslmode"), None);
    }

    #[test]
    fn libpq_spellings_are_refused_with_the_one_wanted() {
        let mut c = ClusterConfig {
            postgres_url: "postgres://db/ls?sslmode=verify-full&sslrootcert=/ca.pem".into(),
            ..ClusterConfig::default()
        };
        let errs = problems(&c);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("sslmode=require"));
        assert!(errs[1].contains("postgres_ca_file"));
        c.postgres_url = "postgres://db/ls?sslmode=require".into();
        assert!(problems(&c).is_empty());
        c.postgres_url = "postgres://db/ls?sslmode=sometimes".into();
        assert_eq!(problems(&c).len(), 1);
    }

    #[test]
    fn a_ca_file_needs_tls_and_a_certificate() {
        let dir = std::env::temp_dir().join(format!("ls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let c = ClusterConfig {
            redis_ca_file: Some(empty.clone()),
            postgres_ca_file: Some(dir.join("missing.pem")),
            ..ClusterConfig::default()
        };
        let errs = problems(&c);
        // Redis without TLS, no certificate in it; Postgres without sslmode, unreadable.
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("rediss://"));
        assert!(errs[1].contains("no PEM certificate"));
        assert!(errs[2].contains("sslmode=require"));
        assert!(errs[3].contains("cannot read"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn client_certificates_come_in_pairs_over_tls() {
        let c = ClusterConfig {
            redis_client_cert: Some("/c.pem".into()),
            postgres_client_cert: Some("/c.pem".into()),
            postgres_client_key: Some("/missing-key.pem".into()),
            ..ClusterConfig::default()
        };
        let errs = problems(&c);
        // Redis: no key. Postgres: no TLS, cert and key unreadable.
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("must be set together"));
        assert!(errs[1].contains("sslmode=require"));
        assert!(errs[3].contains("postgres_client_key"));
    }

    #[test]
    fn cluster_seeds_use_one_scheme() {
        let mut c = ClusterConfig {
            redis_cluster_nodes: vec!["rediss://a:1".into(), "redis://b:1".into()],
            ..ClusterConfig::default()
        };
        assert_eq!(problems(&c).len(), 1);
        c.redis_cluster_nodes = vec!["rediss://a:1".into(), "rediss://b:1".into()];
        assert!(problems(&c).is_empty());
        c.redis_cluster_nodes = vec!["rediss://a:1/#insecure".into()];
        assert_eq!(problems(&c).len(), 1);
    }
}
