//! TLS 1.3 records once the handshake is over, without rustls's session.
//!
//! rustls agrees the keys; after that a TLS 1.3 connection needs only its two
//! application traffic secrets, the key and IV derived from each, and two
//! record numbers: about 200 B, where rustls's session keeps 3.4 KB (its
//! record layer's AEAD contexts, key schedule and queues) for as long as the
//! connection lives. This module owns those and seals and opens records with
//! ring (RFC 8446 section 5.2), building the AEAD key for each batch of
//! records rather than keeping it.
//!
//! What TLS 1.3 may still say after the handshake is handled here as well:
//! KeyUpdate both ways (section 4.6.3: the peer's, and ours before a key has
//! sealed `KEY_LIFETIME` records), close_notify and the other alerts. A
//! handshake message split over records is refused (decode_error): KeyUpdate,
//! the only one a client may send, is five bytes.
//!
//! Every connection's keys are checked at the switch: the key and IV derived
//! here from the caught traffic secrets must equal the ones rustls hands over
//! (`RecordLayer::after_handshake`), or the connection is refused.

use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{self, KeyType};
use rustls::{CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets};

/// A record's header: type, legacy version, length.
pub const HEADER: usize = 5;
/// What sealing adds to the plaintext: header, inner content type, tag.
pub const OVERHEAD: usize = HEADER + 1 + TAG;
/// A sealed KeyUpdate record, which may go before a data record.
pub const KEY_UPDATE_RECORD: usize = OVERHEAD + 5;
/// The most plaintext one record carries.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest record body a peer may send (RFC 8446 section 5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG: usize = 16;
/// Records sealed under one key before ours is updated: below the AES-GCM
/// suites' confidentiality limits (2^24 and 2^23 records, as rustls counts).
const KEY_LIFETIME: u64 = 1 << 22;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
/// Application data, the content type of every record after the handshake.
pub const CONTENT_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;

/// Alert descriptions this layer sends (RFC 8446 section 6).
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

/// The session of one TLS 1.3 connection after its handshake.
pub struct RecordLayer {
    suite: Suite,
    /// Ours: what we seal.
    tx: TrafficKeys,
    /// The peer's: what we open.
    rx: TrafficKeys,
    /// The peer asked for our KeyUpdate; it goes before our next record.
    key_update_owed: bool,
}

/// A fatal error in the session: the alert to send and why, for the log.
#[derive(Debug)]
pub struct Fatal {
    pub alert: u8,
    pub why: &'static str,
}

/// What one record from the peer turned out to hold.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Application data, at this range of the record's bytes.
    Data(Range<usize>),
    /// Something handled here (a KeyUpdate, a warning, an empty record).
    Nothing,
    /// close_notify: the peer sends nothing more.
    CloseNotify,
}

/// The two traffic secrets of a TLS 1.3 connection, as rustls's key log
/// hands them over during the handshake.
#[derive(Default)]
pub struct TrafficSecrets {
    pub client: Option<Secret>,
    pub server: Option<Secret>,
}

/// One traffic secret: 32 or 48 bytes, by the suite's hash.
#[derive(Clone, Copy)]
pub struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    /// None when `bytes` is longer than any TLS 1.3 suite's hash.
    pub fn new(bytes: &[u8]) -> Option<Secret> {
        let mut secret = Secret {
            bytes: [0; 48],
            len: u8::try_from(bytes.len()).ok()?,
        };
        secret.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(secret)
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[derive(Clone, Copy)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn of(suite: CipherSuite) -> Option<Suite> {
        match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::Chacha20Poly1305),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            Suite::Aes128Gcm | Suite::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn secret_len(self) -> usize {
        self.hkdf().len()
    }
}

/// One direction's keys: the traffic secret (for KeyUpdate), the AEAD key
/// and IV derived from it, and the next record's number.
struct TrafficKeys {
    secret: Secret,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl TrafficKeys {
    fn derive(suite: Suite, secret: Secret, seq: u64) -> Result<TrafficKeys, Fatal> {
        let mut keys = TrafficKeys {
            secret,
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        let key_len = suite.aead().key_len();
        expand_label(suite, secret.as_slice(), b"key", &mut keys.key[..key_len])?;
        expand_label(suite, secret.as_slice(), b"iv", &mut keys.iv)?;
        Ok(keys)
    }

    /// The next generation (RFC 8446 section 7.2), numbered from 0.
    fn update(&mut self, suite: Suite) -> Result<(), Fatal> {
        let mut next = [0u8; 48];
        let len = suite.secret_len();
        expand_label(suite, self.secret.as_slice(), b"traffic upd", &mut next[..len])?;
        let secret = Secret::new(&next[..len]).ok_or(INTERNAL)?;
        *self = TrafficKeys::derive(suite, secret, 0)?;
        Ok(())
    }

    /// Whether these are the key and IV rustls derived.
    fn matches(&self, suite: Suite, theirs: &ConnectionTrafficSecrets) -> bool {
        let (key, iv) = match theirs {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return false,
        };
        key.as_ref() == &self.key[..suite.aead().key_len()] && iv.as_ref() == self.iv
    }

    fn aead_key(&self, suite: Suite) -> Result<LessSafeKey, Fatal> {
        let key = UnboundKey::new(suite.aead(), &self.key[..suite.aead().key_len()]);
        Ok(LessSafeKey::new(key.map_err(|_| INTERNAL)?))
    }

    /// The nonce of the next record, which it uses up.
    fn next_nonce(&mut self) -> Result<Nonce, Fatal> {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq = self.seq.checked_add(1).ok_or(Fatal {
            alert: ALERT_INTERNAL_ERROR,
            why: "record numbers ran out",
        })?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

const INTERNAL: Fatal = Fatal {
    alert: ALERT_INTERNAL_ERROR,
    why: "key derivation failed",
};

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 section 7.1).
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Result<(), Fatal> {
    struct Len(usize);
    impl KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len()).map_err(|_| INTERNAL)?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| INTERNAL)?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(suite.hkdf(), secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| INTERNAL)
}

impl RecordLayer {
    /// The session from here on, from the suite rustls negotiated, the
    /// secrets its key log gave and the keys and record numbers it hands
    /// over. The keys derived from the secrets must be the ones handed over.
    pub fn after_handshake(
        suite: CipherSuite,
        secrets: &TrafficSecrets,
        handed_over: &ExtractedSecrets,
    ) -> Result<RecordLayer, &'static str> {
        let suite = Suite::of(suite).ok_or("a suite this record layer does not know")?;
        let (Some(client), Some(server)) = (secrets.client, secrets.server) else {
            return Err("the key log did not give both traffic secrets");
        };
        let (tx_seq, tx_theirs) = &handed_over.tx;
        let (rx_seq, rx_theirs) = &handed_over.rx;
        let tx = TrafficKeys::derive(suite, server, *tx_seq).map_err(|fatal| fatal.why)?;
        let rx = TrafficKeys::derive(suite, client, *rx_seq).map_err(|fatal| fatal.why)?;
        if !tx.matches(suite, tx_theirs) || !rx.matches(suite, rx_theirs) {
            return Err("the caught traffic secrets do not give rustls's keys");
        }
        Ok(RecordLayer {
            suite,
            tx,
            rx,
            key_update_owed: false,
        })
    }

    /// Seals the KeyUpdate owed before our next record, if one is (the
    /// peer asked, or our key's lifetime is over), into the start of `out`
    /// (room for `KEY_UPDATE_RECORD`), and moves to the next key. Returns
    /// the bytes written.
    pub fn seal_owed(&mut self, out: &mut [u8]) -> Result<usize, Fatal> {
        if !self.key_update_owed && self.tx.seq < KEY_LIFETIME {
            return Ok(0);
        }
        // update_not_requested: we answer, or renew our own key alone.
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
        let plain = out.get_mut(HEADER..HEADER + message.len()).ok_or(INTERNAL)?;
        plain.copy_from_slice(&message);
        let written = self.seal(CONTENT_HANDSHAKE, out, message.len())?;
        self.tx.update(self.suite)?;
        self.key_update_owed = false;
        Ok(written)
    }

    /// Seals one record of `kind` whose plaintext the caller put at
    /// `record[HEADER..HEADER + len]`: writes its header, content type and
    /// tag around it and returns the record's length (`len + OVERHEAD`).
    pub fn seal(&mut self, kind: u8, record: &mut [u8], len: usize) -> Result<usize, Fatal> {
        if len > MAX_PLAINTEXT {
            return Err(INTERNAL);
        }
        let body = len + 1 + TAG;
        let record = record.get_mut(..HEADER + body).ok_or(INTERNAL)?;
        let [lo, hi] = u16::try_from(body).map_err(|_| INTERNAL)?.to_le_bytes();
        let header = [CONTENT_DATA, 3, 3, hi, lo];
        record[..HEADER].copy_from_slice(&header);
        record[HEADER + len] = kind;
        let key = self.tx.aead_key(self.suite)?;
        let nonce = self.tx.next_nonce()?;
        let (inner, tag) = record[HEADER..].split_at_mut(len + 1);
        let sealed = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), inner)
            .map_err(|_| INTERNAL)?;
        tag.copy_from_slice(sealed.as_ref());
        Ok(HEADER + body)
    }

    /// `seal_owed`, appended to `out`.
    pub fn seal_owed_onto(&mut self, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let start = out.len();
        out.resize(start + KEY_UPDATE_RECORD, 0);
        let written = self.seal_owed(&mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(|_| ())
    }

    /// Appends an alert to `out` (close_notify is a warning, all others
    /// fatal), after any KeyUpdate owed.
    pub fn seal_alert(&mut self, alert: u8, out: &mut Vec<u8>) -> Result<(), Fatal> {
        self.seal_owed_onto(out)?;
        let start = out.len();
        out.resize(start + OVERHEAD + 2, 0);
        let level = if alert == ALERT_CLOSE_NOTIFY { 1 } else { 2 };
        out[start + HEADER..start + HEADER + 2].copy_from_slice(&[level, alert]);
        let written = self.seal(CONTENT_ALERT, &mut out[start..], 2);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(|_| ())
    }

    /// The length of the record starting `bytes`, once its header is there
    /// (None before). Anything but an application_data record of a length
    /// the peer may send is refused.
    pub fn record_len(bytes: &[u8]) -> Result<Option<usize>, Fatal> {
        let Some(&[kind, _, _, hi, lo]) = bytes.get(..HEADER) else {
            return Ok(None);
        };
        if kind != CONTENT_DATA {
            return Err(Fatal {
                alert: ALERT_UNEXPECTED_MESSAGE,
                why: "a record that is not encrypted after the handshake",
            });
        }
        let body = usize::from(u16::from_be_bytes([hi, lo]));
        if body > MAX_CIPHERTEXT {
            return Err(Fatal {
                alert: ALERT_RECORD_OVERFLOW,
                why: "a record longer than TLS allows",
            });
        }
        if body < 1 + TAG {
            return Err(Fatal {
                alert: ALERT_DECODE_ERROR,
                why: "a record too short to be sealed",
            });
        }
        Ok(Some(HEADER + body))
    }

    /// Opens one whole record (`record_len` long), in place, and handles
    /// what is not application data.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, Fatal> {
        if record.len() < HEADER + 1 + TAG {
            return Err(Fatal {
                alert: ALERT_DECODE_ERROR,
                why: "a record too short to be sealed",
            });
        }
        let (header, body) = record.split_at_mut(HEADER);
        let key = self.rx.aead_key(self.suite)?;
        let nonce = self.rx.next_nonce()?;
        let inner = key
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| Fatal {
                alert: ALERT_BAD_RECORD_MAC,
                why: "a record that does not decrypt",
            })?;
        // The content type is the last byte that is not padding.
        let Some(end) = inner.iter().rposition(|&byte| byte != 0) else {
            return Err(Fatal {
                alert: ALERT_UNEXPECTED_MESSAGE,
                why: "a record with no content type",
            });
        };
        if end > MAX_PLAINTEXT {
            return Err(Fatal {
                alert: ALERT_RECORD_OVERFLOW,
                why: "a record holding more than TLS allows",
            });
        }
        let content = &inner[..end];
        match inner[end] {
            CONTENT_DATA if content.is_empty() => Ok(Opened::Nothing),
            CONTENT_DATA => Ok(Opened::Data(HEADER..HEADER + end)),
            CONTENT_ALERT => match content {
                [_, ALERT_CLOSE_NOTIFY] => Ok(Opened::CloseNotify),
                [_, ALERT_USER_CANCELED] => Ok(Opened::Nothing),
                [_, _] => Err(Fatal {
                    alert: ALERT_UNEXPECTED_MESSAGE,
                    why: "the peer sent a fatal alert",
                }),
                _ => Err(Fatal {
                    alert: ALERT_DECODE_ERROR,
                    why: "an alert that is not two bytes",
                }),
            },
            CONTENT_HANDSHAKE => {
                let request = key_update_request(content)?;
                self.rx.update(self.suite)?;
                self.key_update_owed |= request;
                Ok(Opened::Nothing)
            }
            _ => Err(Fatal {
                alert: ALERT_UNEXPECTED_MESSAGE,
                why: "a record of a content type TLS 1.3 does not use here",
            }),
        }
    }
}

/// The one handshake message a client may send now: KeyUpdate, alone in
/// its record (a key change must end the record, RFC 8446 section 5.1).
/// Returns whether it asks for ours.
fn key_update_request(content: &[u8]) -> Result<bool, Fatal> {
    match content {
        [HANDSHAKE_KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => Ok(*request == 1),
        [HANDSHAKE_KEY_UPDATE, 0, 0, 1, _] => Err(Fatal {
            alert: ALERT_ILLEGAL_PARAMETER,
            why: "a KeyUpdate asking neither yes nor no",
        }),
        [HANDSHAKE_KEY_UPDATE, ..] => Err(Fatal {
            alert: ALERT_UNEXPECTED_MESSAGE,
            why: "a KeyUpdate not alone in its record, or split",
        }),
        _ => Err(Fatal {
            alert: ALERT_UNEXPECTED_MESSAGE,
            why: "a handshake message after the handshake",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of one session: the server's layer, and a peer built with
    /// the directions swapped.
    fn pair(suite: Suite) -> (RecordLayer, RecordLayer) {
        let client = Secret::new(&[7; 48][..suite.secret_len()]).unwrap();
        let server = Secret::new(&[9; 48][..suite.secret_len()]).unwrap();
        let layer = |tx, rx| RecordLayer {
            suite,
            tx: TrafficKeys::derive(suite, tx, 0).unwrap(),
            rx: TrafficKeys::derive(suite, rx, 0).unwrap(),
            key_update_owed: false,
        };
        (layer(server, client), layer(client, server))
    }

    fn seal_data(layer: &mut RecordLayer, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0; KEY_UPDATE_RECORD + plain.len() + OVERHEAD];
        let at = layer.seal_owed(&mut out).unwrap();
        out[at + HEADER..at + HEADER + plain.len()].copy_from_slice(plain);
        let len = layer.seal(CONTENT_DATA, &mut out[at..], plain.len()).unwrap();
        out.truncate(at + len);
        out
    }

    /// Opens every record in `bytes`; the application data they held.
    fn open_all(layer: &mut RecordLayer, mut bytes: Vec<u8>) -> Vec<u8> {
        let (mut data, mut at) = (Vec::new(), 0);
        while at < bytes.len() {
            let len = RecordLayer::record_len(&bytes[at..]).unwrap().unwrap();
            let record = &mut bytes[at..at + len];
            if let Opened::Data(range) = layer.open(record).unwrap() {
                data.extend_from_slice(&record[range]);
            }
            at += len;
        }
        data
    }

    #[test]
    fn records_go_both_ways_in_every_suite() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut server, mut client) = pair(suite);
            for message in [&b"hello"[..], &[0u8; 300], &[1u8; MAX_PLAINTEXT]] {
                let sealed = seal_data(&mut server, message);
                assert_eq!(sealed.len(), message.len() + OVERHEAD);
                assert_eq!(open_all(&mut client, sealed), message);
                let sealed = seal_data(&mut client, message);
                assert_eq!(open_all(&mut server, sealed), message);
            }
        }
    }

    #[test]
    fn a_changed_byte_is_a_bad_record_mac() {
        let (mut server, mut client) = pair(Suite::Aes128Gcm);
        let mut sealed = seal_data(&mut server, b"hello");
        sealed[HEADER + 2] ^= 1;
        let err = client.open(&mut sealed).unwrap_err();
        assert_eq!(err.alert, ALERT_BAD_RECORD_MAC);
    }

    #[test]
    fn a_replayed_record_does_not_open() {
        let (mut server, mut client) = pair(Suite::Chacha20Poly1305);
        let sealed = seal_data(&mut server, b"once");
        assert_eq!(open_all(&mut client, sealed.clone()), b"once");
        let err = client.open(&mut sealed.clone()).unwrap_err();
        assert_eq!(err.alert, ALERT_BAD_RECORD_MAC);
    }

    #[test]
    fn our_key_is_renewed_at_the_end_of_its_lifetime() {
        let (mut server, mut client) = pair(Suite::Aes256Gcm);
        server.tx.seq = KEY_LIFETIME - 1;
        client.rx.seq = KEY_LIFETIME - 1;
        let last = seal_data(&mut server, b"last of the first key");
        assert_eq!(last.len(), 21 + OVERHEAD, "no KeyUpdate yet");
        assert_eq!(open_all(&mut client, last), b"last of the first key");
        let renewed = seal_data(&mut server, b"first of the next");
        assert_eq!(renewed.len(), KEY_UPDATE_RECORD + 17 + OVERHEAD);
        assert_eq!(server.tx.seq, 1, "numbered from 0 under the new key");
        assert_eq!(open_all(&mut client, renewed), b"first of the next");
    }

    #[test]
    fn a_key_update_asked_for_is_answered_before_our_next_record() {
        let (mut server, mut client) = pair(Suite::Aes128Gcm);
        // The client renews its key and asks for ours.
        let mut out = vec![0; KEY_UPDATE_RECORD];
        out[HEADER..HEADER + 5].copy_from_slice(&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 1]);
        let len = client.seal(CONTENT_HANDSHAKE, &mut out, 5).unwrap();
        client.tx.update(client.suite).unwrap();
        assert_eq!(server.open(&mut out[..len]).unwrap(), Opened::Nothing);
        assert!(server.key_update_owed);
        assert_eq!(open_all(&mut server, seal_data(&mut client, b"new key")), b"new key");
        // Our answer goes first; the client's side follows it.
        let answer = seal_data(&mut server, b"reply");
        assert_eq!(answer.len(), KEY_UPDATE_RECORD + 5 + OVERHEAD);
        assert!(!client.key_update_owed);
        assert_eq!(open_all(&mut client, answer), b"reply");
        assert!(!client.key_update_owed, "update_not_requested asks nothing");
    }

    #[test]
    fn what_a_client_may_not_send_is_refused() {
        let (mut server, mut client) = pair(Suite::Aes128Gcm);
        let mut refused = |kind: u8, content: &[u8]| {
            let mut out = vec![0; content.len() + OVERHEAD];
            out[HEADER..HEADER + content.len()].copy_from_slice(content);
            let len = client.seal(kind, &mut out, content.len()).unwrap();
            server.rx.seq = client.tx.seq - 1;
            server.open(&mut out[..len]).unwrap_err().alert
        };
        let new_session_ticket = [4, 0, 0, 1, 0];
        assert_eq!(refused(CONTENT_HANDSHAKE, &new_session_ticket), ALERT_UNEXPECTED_MESSAGE);
        let split = [HANDSHAKE_KEY_UPDATE, 0, 0, 1];
        assert_eq!(refused(CONTENT_HANDSHAKE, &split), ALERT_UNEXPECTED_MESSAGE);
        let maybe = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 2];
        assert_eq!(refused(CONTENT_HANDSHAKE, &maybe), ALERT_ILLEGAL_PARAMETER);
        assert_eq!(refused(CONTENT_ALERT, &[2, 40]), ALERT_UNEXPECTED_MESSAGE);
        assert_eq!(refused(20, &[1]), ALERT_UNEXPECTED_MESSAGE);
        let huge = vec![b'x'; MAX_PLAINTEXT + 1];
        let mut out = vec![0; huge.len() + OVERHEAD];
        out[HEADER..HEADER + huge.len()].copy_from_slice(&huge);
        assert!(client.seal(CONTENT_DATA, &mut out, huge.len()).is_err());
    }

    #[test]
    fn records_too_short_to_hold_a_tag_are_refused() {
        let (mut server, _) = pair(Suite::Aes128Gcm);
        for len in 0..HEADER + 1 + TAG {
            let err = server.open(&mut vec![23; len]).unwrap_err();
            assert_eq!(err.alert, ALERT_DECODE_ERROR, "{len} bytes");
        }
    }

    #[test]
    fn headers_that_cannot_be_a_sealed_record_are_refused() {
        assert!(RecordLayer::record_len(&[23, 3, 3]).unwrap().is_none());
        assert_eq!(RecordLayer::record_len(&[23, 3, 3, 0, 30]).unwrap(), Some(35));
        let alert = |header: &[u8]| RecordLayer::record_len(header).unwrap_err().alert;
        assert_eq!(alert(&[22, 3, 3, 0, 30]), ALERT_UNEXPECTED_MESSAGE);
        assert_eq!(alert(&[23, 3, 3, 0x41, 1]), ALERT_RECORD_OVERFLOW);
        assert_eq!(alert(&[23, 3, 3, 0, 16]), ALERT_DECODE_ERROR);
    }

    #[test]
    fn close_notify_ends_the_peers_side() {
        let (mut server, mut client) = pair(Suite::Aes128Gcm);
        let mut out = Vec::new();
        client.seal_alert(ALERT_CLOSE_NOTIFY, &mut out).unwrap();
        assert_eq!(server.open(&mut out).unwrap(), Opened::CloseNotify);
    }
}
