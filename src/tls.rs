//! TLS configuration: the certificate chain and key from PEM files, rustls
//! with the ring provider, TLS 1.2 and 1.3, HTTP/1.1 over ALPN.
//!
//! The TLS stream itself lives in `tls_stream.rs`; this module builds the
//! shared `ServerConfig` once at start-up and says clearly what is wrong with
//! the files when it cannot. It also owns the config's key log, which is no
//! log: it hands a TLS 1.3 handshake's two application traffic secrets to
//! the stream being driven (`take_traffic_secrets`), so that after the
//! handshake `tls_records` can keep the session instead of rustls.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use rustls::{KeyLog, ServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls_records::{Secret, TrafficSecrets};

pub fn load_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|err| format!("TLS certificate {}: {err}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|err| format!("TLS key {}: {err}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| {
            format!(
                "TLS certificate {} and key {} do not work together: {err}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.key_log = Arc::new(TrafficSecretCatch);
    // rustls hands over the keys and record numbers at the switch, which
    // checks them against the caught secrets.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

const CLIENT_TRAFFIC: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC: &str = "SERVER_TRAFFIC_SECRET_0";

thread_local! {
    /// What the key log caught during the last call into rustls on this
    /// thread: the client's and the server's traffic secret.
    static CAUGHT: Cell<(Option<Secret>, Option<Secret>)> = const { Cell::new((None, None)) };
}

/// The key log that catches the TLS 1.3 application traffic secrets.
/// rustls calls it from inside `process_tls_records`, on the thread that
/// drives the connection, so what it caught belongs to the connection that
/// call drove; the stream takes it right after each call.
#[derive(Debug)]
struct TrafficSecretCatch;

impl KeyLog for TrafficSecretCatch {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC || label == SERVER_TRAFFIC
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Some(secret) = Secret::new(secret) else {
            return;
        };
        CAUGHT.with(|caught| {
            let (client, server) = caught.get();
            caught.set(match label {
                CLIENT_TRAFFIC => (Some(secret), server),
                SERVER_TRAFFIC => (client, Some(secret)),
                _ => (client, server),
            });
        });
    }
}

/// Moves what the key log caught since the last take into `into`.
pub fn take_traffic_secrets(into: &mut TrafficSecrets) {
    let (client, server) = CAUGHT.with(|caught| caught.replace((None, None)));
    into.client = client.or(into.client);
    into.server = server.or(into.server);
}
