//! A connection's byte stream: plain TCP, or TLS over TCP (`--url https://`).
//!
//! TLS is rustls driven by hand, as the server's `transport.rs` does it
//! (`read_tls` / `process_new_packets` / `write_tls`), so nothing blocks: the
//! handshake runs inside the first reads and writes. The plain arm is the
//! socket itself, so plain TCP costs one match per call.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    tls: rustls::ClientConnection,
    tcp: TcpStream,
}

/// What a connection to one server needs for TLS: the shared client config
/// (trusting `--ca`) and the name its certificate must carry.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// A client config trusting exactly the certificates in the PEM file
/// `ca_path` (a CA, or the server's self-signed certificate).
pub fn client_config(ca_path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_path)
        .and_then(|certs| certs.collect())
        .map_err(|err| format!("--ca {ca_path}: {err}"))?;
    if certs.is_empty() {
        return Err(format!("--ca {ca_path}: no certificate in the file"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| format!("--ca {ca_path}: {err}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify the certificate against: the URL's host without its
/// port (an IP address or a DNS name; `[v6]` without its brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            _ => host,
        },
    };
    ServerName::try_from(bare.to_string()).map_err(|err| format!("{host}: {err}"))
}

impl Stream {
    pub fn new(tcp: TcpStream, tls: Option<&TlsTarget>) -> io::Result<Stream> {
        Ok(match tls {
            None => Stream::Plain(tcp),
            Some(target) => {
                let tls = rustls::ClientConnection::new(target.config.clone(), target.name.clone())
                    .map_err(io::Error::other)?;
                Stream::Tls(Box::new(TlsStream { tls, tcp }))
            }
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(stream) => &stream.tcp,
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(stream) => &mut stream.tcp,
        }
    }

    /// A read shorter than the buffer means the socket is empty now (true
    /// for TCP; with TLS, records may still wait in the socket or in rustls).
    #[inline]
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }

    /// Writes the TLS records rustls still holds (nothing for plain TCP).
    #[inline]
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(stream) => stream.write_records(),
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(err) = self.tls.process_new_packets() {
                // Send the alert rustls prepared, then give up.
                let _ = self.write_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
            // Handshake messages (and plaintext queued before the handshake
            // finished) go out as soon as they exist.
            self.write_records()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let accepted = self.tls.writer().write(buf)?;
        self.write_records()?;
        if accepted == 0 && !buf.is_empty() {
            // rustls's plaintext buffer is full until the socket drains.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    /// Writes pending records until done or the socket is full (then the
    /// next writable edge flushes the rest).
    fn write_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_the_port() {
        assert_eq!(
            server_name("127.0.0.1:8443").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("localhost").unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        assert_eq!(
            server_name("[::1]:443").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }
}
