//! TLS to Postgres, as a managed Postgres requires: `sslmode=require` in the URL makes the
//! store connect over TLS, verifying the server's certificate against
//! `cluster.postgres_ca_file`. The private server here accepts TCP over TLS only, so the
//! store working at all shows it used TLS; a plain-text URL and a server signed by another CA
//! are refused with the reason, as misconfigurations (a node fails at once, retrying would not
//! help), while a server that is not up yet is only unavailable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lockstep_shared::store::{LoadLimits, Mutation, Store, StoreError};
use lockstep_testkit::{Postgres, TestCa};
use lockstep_worker::store::postgres::{PostgresOptions, PostgresStore};

async fn open(url: String, ca_file: Option<PathBuf>) -> Result<PostgresStore, String> {
    open_as(url, ca_file, None).await
}

async fn open_as(
    url: String,
    ca_file: Option<PathBuf>,
    client: Option<&TestCa>,
) -> Result<PostgresStore, String> {
    PostgresStore::open(PostgresOptions {
        url,
        pool_size: 4,
        batch_max: 64,
        events_keep: 100,
        ca_file,
        client_identity: client.map(|c| (c.client_cert_file(), c.client_key_file())),
    })
    .await
    .map_err(|e| {
        let text = e.to_string();
        assert!(
            matches!(e, StoreError::Config(_)),
            "refused as a misconfiguration, not as unavailable: {text}"
        );
        text
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let (ca, pg) = tokio::task::spawn_blocking(|| {
        let ca = TestCa::new();
        let pg = Postgres::start_tls(&ca);
        (ca, pg)
    })
    .await
    .unwrap();
    let tls_url = format!("{}?sslmode=require", pg.url());

    let store = open(tls_url.clone(), Some(ca.ca_file())).await.unwrap();
    store.ping().await.unwrap();
    // A write and a read back, over TLS.
    let written = store.submit(vec![Mutation::Room {
        code: "TLS1".into(),
        seq: 7,
        state: Some(serde_json::json!({"over": "tls"})),
        epoch: 1,
    }]);
    written.await.unwrap().unwrap();
    let limits = LoadLimits {
        chat: 10,
        commands_since_ms: 0,
        events: 10,
        events_bytes: usize::MAX,
        events_since_ms: 0,
    };
    let loaded = store.load_room("TLS1", limits, 1).await.unwrap().unwrap();
    assert_eq!(loaded.record.seq, 7, "the room written over TLS reads back");

    let plain = open(pg.url().to_owned(), None).await.err().unwrap();
    assert!(plain.contains("no encryption"), "{plain}");
    let other_ca = TestCa::new();
    let untrusted = open(tls_url, Some(other_ca.ca_file())).await.err().unwrap();
    assert!(untrusted.contains("certificate"), "{untrusted}");
    eprintln!("refused as expected:\n  plain text: {plain}\n  another CA: {untrusted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_asking_for_a_client_certificate_gets_the_configured_one() {
    let (ca, pg) = tokio::task::spawn_blocking(|| {
        let ca = TestCa::new();
        let pg = Postgres::start_mtls(&ca);
        (ca, pg)
    })
    .await
    .unwrap();
    let tls_url = format!("{}?sslmode=require", pg.url());
    let store = open_as(tls_url.clone(), Some(ca.ca_file()), Some(&ca))
        .await
        .unwrap();
    store.ping().await.unwrap();
    let without = open(tls_url.clone(), Some(ca.ca_file()))
        .await
        .err()
        .unwrap();
    assert!(without.contains("certificate"), "{without}");
    let other = TestCa::new();
    let foreign = open_as(tls_url, Some(ca.ca_file()), Some(&other))
        .await
        .err()
        .unwrap();
    eprintln!("refused as expected:\n  no certificate: {without}\n  another CA's: {foreign}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_not_listening_is_worth_retrying() {
    // A free port: nothing listens, as while Postgres starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresStore::open(PostgresOptions {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        pool_size: 2,
        batch_max: 64,
        events_keep: 100,
        ca_file: None,
        client_identity: None,
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}
