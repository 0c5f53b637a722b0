//! The TLS client settings for `rediss://`, built once at start-up: the CA
//! certificates Redis's own must chain to (`--redis-ca`, or else the system's
//! bundle), and a client certificate for a Redis that asks for one
//! (`--redis-cert`, `--redis-key`). What is wrong with a file stops start-up
//! with its name.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Where Debian, Fedora and Alpine keep the system's CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The client settings for TLS to Redis.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    if cert.is_some() != key.is_some() {
        return Err("--redis-cert and --redis-key go together".into());
    }
    let roots = match ca {
        Some(path) => roots_from(path)?,
        None => {
            let bundle = SYSTEM_BUNDLES
                .iter()
                .map(Path::new)
                .find(|path| path.exists())
                .ok_or("rediss:// without --redis-ca, and no system CA bundle found")?;
            roots_from(bundle)?
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("TLS to redis: {err}"))?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "--redis-cert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| format!("--redis-key {}: {err}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| format!("--redis-cert and --redis-key do not work together: {err}"))?
        }
        _ => unreachable!("checked above: both or neither"),
    };
    Ok(Arc::new(config))
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(path, "--redis-ca")?);
    if added == 0 {
        return Err(format!("--redis-ca {}: no usable certificate", path.display()));
    }
    Ok(roots)
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|err| format!("{flag} {}: {err}", path.display()))?;
    match certs.is_empty() {
        true => Err(format!("{flag} {}: no certificate in the file", path.display())),
        false => Ok(certs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_and_half_a_client_certificate_is_refused() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err = client_config(Some(missing), None, None).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("redis-ca-empty-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty), None, None).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        let err = client_config(None, Some(&empty), None).unwrap_err();
        assert!(err.contains("go together"), "{err}");
        let _ = std::fs::remove_file(&empty);
    }
}
