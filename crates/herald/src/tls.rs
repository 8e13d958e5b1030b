//! TLS termination: builds the rustls acceptor from the `[tls]` PEM files, so `wss://` and
//! `https://` work without a proxy in front.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsConfig};

/// Reads the certificate chain and key named by `config` and builds the acceptor. TLS
/// 1.2 and 1.3 on the ring provider; HTTP/1.1 is advertised through ALPN, since the
/// WebSocket upgrade needs it.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let (Some(cert_path), Some(key_path)) = (&config.cert, &config.key) else {
        let missing = if config.cert.is_none() {
            "tls.cert"
        } else {
            "tls.key"
        };
        return Err(ConfigError::new(
            missing,
            "tls.cert and tls.key go together: set both or neither",
        ));
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                "tls.cert",
                format!(
                    "cannot read a PEM certificate from {}: {e}",
                    cert_path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            "tls.cert",
            format!("{} holds no certificate", cert_path.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        ConfigError::new(
            "tls.key",
            format!(
                "cannot read a PEM private key from {}: {e}",
                key_path.display()
            ),
        )
    })?;
    let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new("tls.key", format!("does not fit tls.cert: {e}")))?;
    // h2 first: browsers then multiplex SSE streams and publishes on one connection;
    // WebSocket upgrades still negotiate HTTP/1.1 (RFC 6455 needs it).
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
