//! A TLS stream over a non-blocking TCP socket, driven through rustls's
//! unbuffered API: rustls keeps the session (keys, record numbers, the
//! handshake's state) and this keeps the bytes, in buffers that exist only
//! while they hold some, as the plain path does. An idle connection holds no
//! buffer at all, and what one holds is known (`held_bytes`), so it counts
//! against `--max-memory` like any other buffered byte.
//!
//! Three buffers: `incoming`, records read from the socket and not yet
//! processed (a partial record, or a handshake message split over several);
//! `plaintext`, decrypted bytes a reader had no room for; and `outgoing`,
//! records encoded and not yet written to the socket. A write is taken only
//! when `outgoing` is empty again, at most `CHUNK` bytes of plaintext at a
//! time, so a client that never reads holds one chunk's records here and the
//! rest stays in the connection's own queue, where the limits see it.

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::server::ServerConnectionData;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// Plaintext encrypted per write: one full TLS record.
const CHUNK: usize = 16 * 1024;
/// What one socket read takes: a full record with its header and tag.
const READ_SIZE: usize = CHUNK + 512;
/// Most unprocessed bytes held for one client: a handshake message of the
/// largest size rustls accepts (64 KiB) and a record.
const MAX_INCOMING: usize = 64 * 1024 + READ_SIZE;

pub struct TlsStream {
    tls: UnbufferedServerConnection,
    tcp: TcpStream,
    incoming: Vec<u8>,
    held: Held,
}

/// What the stream holds besides unprocessed records.
#[derive(Default)]
struct Held {
    plaintext: Vec<u8>,
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket took.
    sent: usize,
    /// The peer sent close_notify: reads end once `plaintext` is taken,
    /// writes go on (its answers are still owed).
    peer_closed: bool,
}

/// What the stream is asked to do in one drive.
enum Want<'a> {
    /// Decrypted bytes, into this buffer.
    Read(&'a mut [u8]),
    /// These bytes encrypted (as many as one chunk holds).
    Write(&'a [IoSlice<'a>]),
    /// A close_notify.
    CloseNotify,
}

/// Where one state of the connection left a drive.
enum Step {
    /// This many bytes were read, or taken to write.
    Done(usize),
    /// Handled: ask rustls for the next state.
    Again,
    /// Nothing more can happen until more records come in.
    NeedInput,
    /// The session is closed both ways.
    Closed,
}

impl TlsStream {
    pub fn new(tls: UnbufferedServerConnection, tcp: TcpStream) -> TlsStream {
        TlsStream {
            tls,
            tcp,
            incoming: Vec::new(),
            held: Held::default(),
        }
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Bytes held for this client: unprocessed records, plaintext not yet
    /// read and records not yet sent.
    pub fn held_bytes(&self) -> usize {
        self.incoming.len() + self.held.plaintext.len() + self.held.outgoing.len() - self.held.sent
    }

    /// Writes the records waiting for the socket; true when none is left.
    pub fn write_records(&mut self) -> io::Result<bool> {
        self.held.send(&mut self.tcp)
    }

    /// Queues a close_notify and sends what it can.
    pub fn send_close_notify(&mut self) {
        let _ = self.drive(Want::CloseNotify);
        let _ = self.write_records();
    }

    /// Runs the session until `want` is met, more records are needed (then
    /// `NeedInput`), or the peer closed.
    fn drive(&mut self, mut want: Want) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let step = match state {
                Ok(state) => self.held.step(state, &mut want),
                Err(err) => Err(tls_error(err)),
            };
            self.incoming.drain(..discard);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            match step {
                Ok(Step::Again) => {
                    // Handshake records go out as soon as they exist.
                    self.held.send(&mut self.tcp)?;
                }
                Err(err) => {
                    self.send_alert();
                    return Err(err);
                }
                Ok(step) => return Ok(step),
            }
        }
    }

    /// After a failed record: the alert rustls prepared, sent if it can be.
    fn send_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.tls.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode(&mut self.held.outgoing, |buf| data.encode(buf)).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = self.held.send(&mut self.tcp);
    }

    /// Reads more records from the socket: false at its end.
    fn fill(&mut self) -> io::Result<bool> {
        if self.incoming.len() >= MAX_INCOMING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: more unprocessed bytes than any record or handshake message",
            ));
        }
        let mut chunk = [0u8; READ_SIZE];
        let n = loop {
            match self.tcp.read(&mut chunk) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.incoming.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Records still waiting for the socket hold back new writes.
    fn blocked(&mut self) -> io::Result<bool> {
        Ok(!self.held.send(&mut self.tcp)?)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.held.plaintext.is_empty() {
                return Ok(self.held.take_plaintext(buf));
            }
            if self.held.peer_closed {
                return Ok(0);
            }
            match self.drive(Want::Read(buf))? {
                Step::Done(n) => return Ok(n),
                Step::Closed => return Ok(0),
                Step::Again | Step::NeedInput if self.held.peer_closed => {}
                Step::Again | Step::NeedInput => {
                    if !self.fill()? {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.blocked()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let accepted = match self.drive(Want::Write(bufs))? {
            Step::Done(n) => n,
            // Still handshaking: nothing can be sent yet.
            Step::Again | Step::NeedInput => return Err(io::ErrorKind::WouldBlock.into()),
            Step::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
        };
        match self.held.send(&mut self.tcp) {
            Err(err) if accepted == 0 => Err(err),
            _ => Ok(accepted), // taken: what the socket refused waits in `outgoing`
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_records().map(|_| ())
    }
}

impl Held {
    /// Handles one state of the session for `want`.
    fn step(
        &mut self,
        state: ConnectionState<'_, '_, ServerConnectionData>,
        want: &mut Want,
    ) -> io::Result<Step> {
        match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                let mut copied = 0;
                while let Some(record) = traffic.next_record() {
                    let payload = record.map_err(tls_error)?.payload;
                    let room = match want {
                        Want::Read(buf) => &mut buf[copied..],
                        _ => &mut [][..],
                    };
                    let n = room.len().min(payload.len());
                    room[..n].copy_from_slice(&payload[..n]);
                    copied += n;
                    self.plaintext.extend_from_slice(&payload[n..]);
                }
                Ok(match want {
                    Want::Read(_) if copied > 0 => Step::Done(copied),
                    _ => Step::Again,
                })
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut self.outgoing, |buf| data.encode(buf))?;
                Ok(Step::Again)
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // Ours to send from now on (`send`, after this step).
                transmit.done();
                Ok(Step::Again)
            }
            ConnectionState::WriteTraffic(mut traffic) => match want {
                Want::Read(_) => Ok(Step::NeedInput),
                Want::Write(bufs) => {
                    let taken = match bufs {
                        [] => 0,
                        [first, ..] if bufs.len() == 1 || first.len() >= CHUNK => {
                            // One frame (a fan-out delivery): encrypted where it is.
                            let plain = &first[..first.len().min(CHUNK)];
                            encrypt(&mut self.outgoing, plain.len(), |out| {
                                traffic.encrypt(plain, out)
                            })?;
                            plain.len()
                        }
                        _ => {
                            let mut plain = Vec::with_capacity(CHUNK);
                            for buf in bufs.iter() {
                                let n = buf.len().min(CHUNK - plain.len());
                                plain.extend_from_slice(&buf[..n]);
                            }
                            encrypt(&mut self.outgoing, plain.len(), |out| {
                                traffic.encrypt(&plain, out)
                            })?;
                            plain.len()
                        }
                    };
                    Ok(Step::Done(taken))
                }
                Want::CloseNotify => {
                    encrypt(&mut self.outgoing, 0, |out| traffic.queue_close_notify(out))?;
                    Ok(Step::Done(0))
                }
            },
            ConnectionState::BlockedHandshake => Ok(Step::NeedInput),
            // Told once; what was read before it is in `plaintext` already.
            ConnectionState::PeerClosed => {
                self.peer_closed = true;
                Ok(Step::Again)
            }
            ConnectionState::Closed => Ok(Step::Closed),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: early data, which this server never accepts",
            )),
        }
    }

    fn take_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plaintext.len());
        buf[..n].copy_from_slice(&self.plaintext[..n]);
        self.plaintext.drain(..n);
        if self.plaintext.is_empty() {
            self.plaintext = Vec::new();
        }
        n
    }

    /// Writes `outgoing` until it is empty (then freed; true) or the socket
    /// is full (false).
    fn send(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        while self.sent < self.outgoing.len() {
            match tcp.write(&self.outgoing[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(true)
    }
}

/// Appends what `encode` writes to `out`, grown as it asks.
fn encode(
    out: &mut Vec<u8>,
    encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    append(out, 1024, encode, |err| match err {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// Appends what `encrypt` writes of `plain` bytes to `out`, grown as it asks.
fn encrypt(
    out: &mut Vec<u8>,
    plain: usize,
    encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    // A record's header, content type, nonce and tag (TLS 1.2 or 1.3).
    append(out, plain + 64, encrypt, |err| match err {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// Appends to `out` what `write` puts in the `room` bytes it is given; when
/// that is too little (`needed` reads how much it wants from its error), it
/// is asked again with that much.
fn append<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        let written = write(&mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        match written {
            Ok(_) => return Ok(()),
            Err(err) => match needed(&err) {
                Some(more) if more > room => room = more,
                _ => return Err(io::Error::other(format!("TLS: {err}"))),
            },
        }
    }
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}
