//! A TLS stream over a non-blocking TCP socket. rustls's unbuffered API
//! drives the handshake (and a TLS 1.2 session for good); a TLS 1.3 session
//! then switches to `tls_records`, which keeps only its keys and record
//! numbers. Either way this keeps the bytes, in buffers that exist only
//! while they hold some, as the plain path does. An idle connection holds
//! no buffer at all, and what one holds is known (`held_bytes`), so it
//! counts against `--max-memory` like any other buffered byte.
//!
//! Three buffers: `incoming`, records read from the socket and not yet
//! processed (a partial record, or a handshake message split over several);
//! `plaintext`, decrypted bytes a reader had no room for; and `outgoing`,
//! records encoded and not yet written to the socket. A write is taken only
//! when `outgoing` is empty again, at most `CHUNK` bytes of plaintext at a
//! time, so a client that never reads holds one chunk's records here and the
//! rest stays in the connection's own queue, where the limits see it. After
//! the switch, records are sealed and opened in one scratch buffer per
//! thread, and only what the socket refuses (or a partial record) is copied
//! into `outgoing` (or `incoming`).

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;
use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use crate::tls_records::{
    self, ALERT_CLOSE_NOTIFY, Fatal, HEADER, KEY_UPDATE_RECORD, OVERHEAD, Opened, RecordLayer,
    TrafficSecrets,
};

/// Plaintext encrypted per write: one full TLS record.
const CHUNK: usize = tls_records::MAX_PLAINTEXT;
/// What one socket read takes: a full record with its header and tag.
const READ_SIZE: usize = CHUNK + 512;
/// Most unprocessed bytes held for one client: a handshake message of the
/// largest size rustls accepts (64 KiB) and a record.
const MAX_INCOMING: usize = 64 * 1024 + READ_SIZE;
/// The scratch buffer: one read, or a KeyUpdate and a full record.
const SCRATCH: usize = if READ_SIZE > KEY_UPDATE_RECORD + CHUNK + OVERHEAD {
    READ_SIZE
} else {
    KEY_UPDATE_RECORD + CHUNK + OVERHEAD
};

thread_local! {
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Runs `f` on this thread's scratch buffer (a fresh one, should it be in
/// use already).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUFFER.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut vec![0; SCRATCH]),
    })
}

pub struct TlsStream {
    session: Session,
    tcp: TcpStream,
    incoming: Vec<u8>,
    held: Held,
}

/// Who keeps the session.
enum Session {
    /// rustls: during the handshake, and for good on TLS 1.2. The TLS 1.3
    /// traffic secrets its key log gave wait here for the switch.
    Rustls(Box<UnbufferedServerConnection>, TrafficSecrets),
    /// A TLS 1.3 session after its handshake.
    Records(RecordLayer),
    /// The switch failed: the connection is closed.
    Failed,
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
    /// The handshake is over and `tls_records` keeps the session now.
    Switched,
}

impl TlsStream {
    pub fn new(tls: UnbufferedServerConnection, tcp: TcpStream) -> TlsStream {
        TlsStream {
            session: Session::Rustls(Box::new(tls), TrafficSecrets::default()),
            tcp,
            incoming: Vec::new(),
            held: Held::default(),
        }
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    pub fn is_handshaking(&self) -> bool {
        match &self.session {
            Session::Rustls(tls, _) => tls.is_handshaking(),
            Session::Records(_) | Session::Failed => false,
        }
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
        if let Session::Rustls(..) = self.session
            && !matches!(self.drive(Want::CloseNotify), Ok(Step::Switched))
        {
            let _ = self.write_records();
            return;
        }
        if let Session::Records(records) = &mut self.session {
            let _ = records.seal_alert(ALERT_CLOSE_NOTIFY, &mut self.held.outgoing);
        }
        let _ = self.write_records();
    }

    /// Runs rustls until `want` is met, more records are needed (then
    /// `NeedInput`), the peer closed, or the handshake of a TLS 1.3 session
    /// is over (then `Switched`).
    fn drive(&mut self, mut want: Want) -> io::Result<Step> {
        loop {
            let Session::Rustls(tls, secrets) = &mut self.session else {
                return Ok(Step::Switched);
            };
            let UnbufferedStatus { discard, state } = tls.process_tls_records(&mut self.incoming);
            crate::tls::take_traffic_secrets(secrets);
            let step = match state {
                // Only a TLS 1.3 handshake gives the secrets.
                Ok(ConnectionState::WriteTraffic(_)) if secrets.client.is_some() => {
                    Ok(Step::Switched)
                }
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
                Ok(Step::Switched) => {
                    self.switch()?;
                    return Ok(Step::Switched);
                }
                Err(err) => {
                    self.send_alert();
                    return Err(err);
                }
                Ok(step) => return Ok(step),
            }
        }
    }

    /// Hands a TLS 1.3 session whose handshake is over from rustls to
    /// `tls_records`, with the keys and record numbers rustls hands over.
    fn switch(&mut self) -> io::Result<()> {
        let Session::Rustls(tls, secrets) = std::mem::replace(&mut self.session, Session::Failed)
        else {
            return Ok(());
        };
        let suite = tls.negotiated_cipher_suite().map(|suite| suite.suite());
        let (handed_over, _kernel) = tls.dangerous_into_kernel_connection().map_err(tls_error)?;
        let suite = suite.ok_or_else(|| invalid("TLS: no suite after the handshake"))?;
        let records = RecordLayer::after_handshake(suite, &secrets, &handed_over)
            .map_err(|why| invalid(&format!("TLS: {why}")))?;
        self.session = Session::Records(records);
        Ok(())
    }

    /// After a failed record: the alert rustls prepared, sent if it can be.
    fn send_alert(&mut self) {
        let Session::Rustls(tls, _) = &mut self.session else {
            return;
        };
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = tls.process_tls_records(&mut []);
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
            return Err(invalid(
                "TLS: more unprocessed bytes than any record or handshake message",
            ));
        }
        with_scratch(|chunk| {
            let n = read_socket(&mut self.tcp, &mut chunk[..READ_SIZE])?;
            self.incoming.extend_from_slice(&chunk[..n]);
            Ok(n > 0)
        })
    }

    /// Records still waiting for the socket hold back new writes.
    fn blocked(&mut self) -> io::Result<bool> {
        Ok(!self.held.send(&mut self.tcp)?)
    }

    /// A read once `tls_records` keeps the session: records are opened
    /// where they were read, and only a partial one is kept (`incoming`).
    fn read_records(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.held.plaintext.is_empty() {
                return Ok(self.held.take_plaintext(buf));
            }
            if self.held.peer_closed {
                return Ok(0);
            }
            let Session::Records(records) = &mut self.session else {
                return Err(failed());
            };
            if !self.incoming.is_empty() {
                let opened = open_records(records, &mut self.incoming, buf, &mut self.held);
                if let Ok(Opening { used, .. }) = opened {
                    self.incoming.drain(..used);
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                let copied = self.after_opening(opened)?;
                if copied > 0 {
                    return Ok(copied);
                }
                if !self.held.plaintext.is_empty() || self.held.peer_closed {
                    continue;
                }
                if self.incoming.len() >= MAX_INCOMING {
                    return Err(invalid("TLS: a record longer than any"));
                }
            }
            let Session::Records(records) = &mut self.session else {
                return Err(failed());
            };
            let (tcp, incoming, held) = (&mut self.tcp, &mut self.incoming, &mut self.held);
            let opened = with_scratch(|chunk| -> io::Result<_> {
                let n = read_socket(tcp, &mut chunk[..READ_SIZE])?;
                if n == 0 {
                    return Ok(None);
                }
                if !incoming.is_empty() {
                    incoming.extend_from_slice(&chunk[..n]);
                    return Ok(Some(Ok(Opening::default())));
                }
                // The usual case: whole records, opened in the scratch.
                let opened = open_records(records, &mut chunk[..n], buf, held);
                if let Ok(Opening { used, .. }) = opened {
                    incoming.extend_from_slice(&chunk[used..n]);
                }
                Ok(Some(opened))
            })?;
            let Some(opened) = opened else {
                return Ok(0); // the end of the stream
            };
            let copied = self.after_opening(opened)?;
            if copied > 0 {
                return Ok(copied);
            }
        }
    }

    /// After records were opened (and what they used dropped): a fatal
    /// error is answered with its alert and ends the stream; a KeyUpdate
    /// the peer asked for is sent. Returns the bytes copied to the reader.
    fn after_opening(&mut self, opened: Result<Opening, Fatal>) -> io::Result<usize> {
        let Session::Records(records) = &mut self.session else {
            return Err(failed());
        };
        let sealed = opened.and_then(|Opening { copied, .. }| {
            records.seal_owed_onto(&mut self.held.outgoing)?;
            Ok(copied)
        });
        match sealed {
            Ok(copied) => {
                self.held.send(&mut self.tcp)?;
                Ok(copied)
            }
            Err(fatal) => {
                let _ = records.seal_alert(fatal.alert, &mut self.held.outgoing);
                let _ = self.held.send(&mut self.tcp);
                self.held.peer_closed = true;
                Err(fatal_error(fatal))
            }
        }
    }

    /// A write once `tls_records` keeps the session: sealed in the scratch
    /// buffer, and only what the socket refuses is copied to `outgoing`.
    fn write_sealed(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.blocked()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Session::Records(records) = &mut self.session else {
            return Err(failed());
        };
        let (tcp, held) = (&mut self.tcp, &mut self.held);
        with_scratch(|scratch| {
            let mut end = records.seal_owed(scratch).map_err(fatal_error)?;
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(CHUNK - taken);
                let at = end + HEADER + taken;
                scratch[at..at + n].copy_from_slice(&buf[..n]);
                taken += n;
            }
            if taken > 0 {
                let sealed = records.seal(tls_records::CONTENT_DATA, &mut scratch[end..], taken);
                end += sealed.map_err(fatal_error)?;
            }
            let sent = write_socket(tcp, &scratch[..end])?;
            held.outgoing.extend_from_slice(&scratch[sent..end]);
            Ok(taken)
        })
    }
}

/// How far `open_records` went: the bytes of whole records it opened, and
/// the plaintext it copied to the reader.
#[derive(Default)]
struct Opening {
    used: usize,
    copied: usize,
}

/// Opens the whole records at the start of `bytes`, in place, until the
/// reader's `buf` is full, the peer closed or a record is partial. Plaintext
/// the reader has no room for goes to `held`.
fn open_records(
    records: &mut RecordLayer,
    bytes: &mut [u8],
    buf: &mut [u8],
    held: &mut Held,
) -> Result<Opening, Fatal> {
    let mut opening = Opening::default();
    while !held.peer_closed && (opening.copied < buf.len() || buf.is_empty()) {
        let rest = &mut bytes[opening.used..];
        let Some(len) = RecordLayer::record_len(rest)? else {
            break;
        };
        let Some(record) = rest.get_mut(..len) else {
            break;
        };
        match records.open(record)? {
            Opened::Data(range) => {
                let data = &record[range];
                let room = &mut buf[opening.copied..];
                let n = room.len().min(data.len());
                room[..n].copy_from_slice(&data[..n]);
                held.plaintext.extend_from_slice(&data[n..]);
                opening.copied += n;
            }
            Opened::Nothing => {}
            Opened::CloseNotify => held.peer_closed = true,
        }
        opening.used += len;
        if buf.is_empty() {
            break;
        }
    }
    Ok(opening)
}

/// One read from the socket, retried when interrupted.
fn read_socket(tcp: &mut TcpStream, chunk: &mut [u8]) -> io::Result<usize> {
    loop {
        match tcp.read(chunk) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Writes `bytes` until the socket is full; how many it took.
fn write_socket(tcp: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match tcp.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(sent)
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
            let step = match self.session {
                Session::Rustls(..) => self.drive(Want::Read(buf))?,
                Session::Records(_) => return self.read_records(buf),
                Session::Failed => return Err(failed()),
            };
            match step {
                Step::Done(n) => return Ok(n),
                Step::Closed => return Ok(0),
                Step::Switched => {}
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
        match self.session {
            Session::Rustls(..) => {}
            Session::Records(_) => return self.write_sealed(bufs),
            Session::Failed => return Err(failed()),
        }
        if self.blocked()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let accepted = match self.drive(Want::Write(bufs))? {
            Step::Done(n) => n,
            Step::Switched => return self.write_sealed(bufs),
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

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn fatal_error(fatal: Fatal) -> io::Error {
    invalid(&format!("TLS: {}", fatal.why))
}

/// The stream after a failed switch.
fn failed() -> io::Error {
    invalid("TLS: the session could not go on after its handshake")
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}
