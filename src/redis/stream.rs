//! The bytes of one link: plain TCP, or TLS over it (`rediss://`), both
//! non-blocking in the loop's poll.
//!
//! With TLS, rustls holds the session: ciphertext read from the socket is
//! decrypted into its plaintext buffer, and what the link writes is
//! encrypted into records that go out as the socket takes them. The
//! handshake is driven by readiness like everything else, and a link counts
//! as up only once it is done, so a certificate refused is a link that never
//! came up.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

pub(super) struct Stream {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
}

impl Stream {
    pub(super) fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// TLS to `host` (a name or an address literal) over `tcp`.
    pub(super) fn tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<Stream, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|err| format!("{host} is not a name TLS can verify: {err}"))?;
        let session = ClientConnection::new(config, name)
            .map_err(|err| format!("cannot start TLS: {err}"))?;
        Ok(Stream {
            tcp,
            tls: Some(Box::new(session)),
        })
    }

    /// The socket, for the poll and for what the kernel says of it.
    pub(super) fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Drives the TLS handshake as far as the socket allows: true once it is
    /// done (at once without TLS). An error says why it failed (a refused
    /// certificate, a peer that does not speak TLS...).
    pub(super) fn handshake(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(true);
        };
        loop {
            send_records(tls, &mut self.tcp)?;
            if !tls.is_handshaking() {
                return Ok(true);
            }
            match tls.read_tls(&mut self.tcp) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake (is it a TLS port?)",
                    ));
                }
                Ok(_) => decrypt(tls)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes the TLS records waiting for the socket, as far as it takes them.
    pub(super) fn send_pending(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => send_records(tls, &mut self.tcp),
            None => Ok(()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // Plaintext, or 0 after Redis's close_notify.
                result => return result,
            }
            match tls.read_tls(&mut self.tcp)? {
                0 => return Ok(0),
                _ => decrypt(tls)?,
            }
            send_records(tls, &mut self.tcp)?;
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write(buf);
        };
        send_records(tls, &mut self.tcp)?;
        let taken = tls.writer().write(buf)?;
        if taken == 0 && !buf.is_empty() {
            // rustls's buffer is full and the socket takes nothing more.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        send_records(tls, &mut self.tcp)?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

/// Moves the records rustls has ready into the socket until it would block
/// (what is left goes at the next writable readiness).
fn send_records(tls: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Decrypts what was read; a TLS error (a refused certificate too) ends it.
fn decrypt(tls: &mut ClientConnection) -> io::Result<()> {
    tls.process_new_packets()
        .map(|_| ())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))
}
