//! The replies read from one connection to Redis, scanned and decoded
//! within bounds.
//!
//! Replies are not trusted to be small or shallow: a scanner of our own walks
//! each reply's headers as its bytes arrive, without recursion and without
//! allocating what a length claims, and only a reply that it has seen whole,
//! at most `MAX_DEPTH` arrays deep and `MAX_BYTES` long, goes to
//! `redis_protocol::resp2::decode` (which recurses once per level and has no
//! limit of its own). A reply past a bound is an error, which fails the link
//! like any other (`link`).

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

/// Replies read from one connection to Redis, decoded as each one completes.
///
/// Bytes go in as they are read (`feed`); a reply is scanned as far as it
/// has come, from where the last read left off, so a reply that arrives in
/// many reads is walked once. Memory is bounded: the buffer holds at most
/// one unfinished reply of at most `MAX_BYTES` (plus one read), and a whole
/// reply holds at most `MAX_VALUES` values, so what `decode` builds from it
/// (two trees of a few dozen bytes per value) stays bounded too.
#[derive(Default)]
pub struct Replies {
    /// Bytes received and not yet decoded: the start of one unfinished
    /// reply, and briefly the whole replies the last read completed.
    input: Vec<u8>,
    /// How far the unfinished reply at the front of `input` was walked.
    scan: Scan,
}

impl Replies {
    /// The most bytes one reply may take, whole or while it arrives. The
    /// largest we ask for is a history replay: a room's whole stream, up to
    /// `--history` entries (100 by default, and `MAXLEN ~` may keep a hundred
    /// more) of one event each. An event is at most about 3.5 KiB (a 512-byte
    /// message whose every byte is escaped as `\u00XX`, and its JSON), so the
    /// default's largest reply is about 0.7 MiB; 16 MiB is twenty times that,
    /// and as much as `--history-max-bytes` lets all rooms keep by default.
    pub const MAX_BYTES: usize = 16 << 20;
    /// The deepest nesting of arrays in one reply. Ours go four deep (the
    /// replay: `[epoch, seq, [[id, [field, value]], ...]]`).
    pub const MAX_DEPTH: usize = 8;
    /// The most values one reply may hold, arrays included. Each of our
    /// values takes more than 16 bytes on average (a replayed entry is five
    /// values in at least a hundred bytes), so `MAX_BYTES` of real replies
    /// stay under it; values of 3 bytes (`+\r\n`) would otherwise make 5.6
    /// million of them out of 16 MiB.
    pub const MAX_VALUES: usize = Replies::MAX_BYTES / 16;
    /// Bytes taken into the buffer at a time: `feed` decodes between pieces,
    /// so the buffer never holds more than `MAX_BYTES` plus one piece.
    pub const PIECE: usize = 64 * 1024;
    /// Capacity kept when the buffer has emptied after a large reply.
    const KEEP: usize = 64 * 1024;

    pub fn new() -> Replies {
        Replies::default()
    }

    /// Takes bytes read from Redis and decodes every reply they complete into
    /// `frames`, in order. An error (a reply malformed, nested deeper than
    /// `MAX_DEPTH`, longer than `MAX_BYTES`, or with more than `MAX_VALUES`
    /// values) says why; nothing more can be read from that connection.
    pub fn feed(&mut self, bytes: &[u8], frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        for piece in bytes.chunks(Replies::PIECE) {
            self.reserve(piece.len());
            self.input.extend_from_slice(piece);
            self.decode(frames)?;
        }
        Ok(())
    }

    /// Bytes held for a reply still arriving.
    #[cfg(any(test, feature = "testing"))]
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Forgets everything (the connection is gone) and frees the buffer.
    pub(super) fn clear(&mut self) {
        *self = Replies::default();
    }

    /// How long the reply at the start of `buf` is: `Ok(None)` while it is
    /// incomplete, an error as soon as it cannot be a reply we accept. Walks
    /// the headers only, with a counter per open array: no recursion, and no
    /// allocation whatever a length says.
    #[cfg(any(test, feature = "testing"))]
    pub fn measure(buf: &[u8]) -> Result<Option<usize>, String> {
        Scan::default().resume(buf)
    }

    /// Grows the buffer for `more` bytes, doubling but never past the bound.
    fn reserve(&mut self, more: usize) {
        let needed = self.input.len() + more;
        if needed > self.input.capacity() {
            let target = (self.input.capacity() * 2)
                .min(Replies::MAX_BYTES + Replies::PIECE)
                .max(needed);
            self.input.reserve_exact(target - self.input.len());
        }
    }

    fn decode(&mut self, frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        let mut used = 0;
        let result = loop {
            let rest = &self.input[used..];
            match self.scan.resume(rest) {
                Ok(Some(len)) => {
                    self.scan = Scan::default();
                    match decode(&rest[..len]) {
                        Ok(Some((frame, n))) if n == len => {
                            frames.push(frame);
                            used += len;
                        }
                        Ok(_) => break Err("a reply misread (scanned whole, decoded not)".into()),
                        Err(err) => break Err(format!("unreadable reply: {err:?}")),
                    }
                }
                Ok(None) if rest.len() > Replies::MAX_BYTES => break Err(too_big()),
                Ok(None) => break Ok(()),
                Err(why) => break Err(why),
            }
        };
        self.input.drain(..used);
        if self.input.capacity() > Replies::KEEP && self.input.len() < self.input.capacity() / 4 {
            self.input
                .shrink_to(Replies::KEEP.max(self.input.len() * 2));
        }
        result
    }
}

/// How far the walk through one reply has come, so that the next read
/// resumes it. Positions count from the reply's first byte.
#[derive(Default)]
struct Scan {
    /// Where the next value starts.
    pos: usize,
    /// Where the search for the end of that value's line resumes.
    seek: usize,
    /// The values still owed by each open array, outermost first.
    open: [u64; Replies::MAX_DEPTH],
    depth: usize,
    /// Values begun so far, arrays included.
    values: usize,
}

/// The longest line a number may take: `-9223372036854775808`.
const NUMBER_LINE: usize = 20;

impl Scan {
    fn resume(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let line_start = self.pos + 1;
            let from = self.seek.max(line_start);
            let Some(line_end) = find_crlf(buf, from) else {
                // The CR may be the last byte: look at it again next time.
                self.seek = buf.len().saturating_sub(1).max(line_start);
                if buf.len() > Replies::MAX_BYTES {
                    return Err(too_big());
                }
                if kind != b'+' && kind != b'-' && buf.len() - line_start > NUMBER_LINE + 1 {
                    return Err(bad_header(kind));
                }
                return Ok(None);
            };
            self.seek = line_end;
            let line = &buf[line_start..line_end];
            let mut next = line_end + 2;
            let mut opens = 0;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    number(line).ok_or_else(|| bad_header(kind))?;
                }
                b'$' => match number(line).ok_or_else(|| bad_header(kind))? {
                    -1 => {}
                    len if len < -1 => return Err(bad_header(kind)),
                    len => {
                        let len = usize::try_from(len).map_err(|_| bad_header(kind))?;
                        let end = next
                            .checked_add(len)
                            .filter(|end| *end <= Replies::MAX_BYTES - 2)
                            .ok_or_else(too_big)?;
                        match buf.get(end..end + 2) {
                            None => return Ok(None),
                            Some(b"\r\n") => next = end + 2,
                            Some(_) => return Err("a bulk string without its CRLF".into()),
                        }
                    }
                },
                b'*' => match number(line).ok_or_else(|| bad_header(kind))? {
                    -1 => {} // a null, not an array
                    count if count < -1 => return Err(bad_header(kind)),
                    count => {
                        // An empty array is as deep as any.
                        if self.depth == Replies::MAX_DEPTH {
                            return Err(format!(
                                "a reply nested deeper than {} arrays",
                                Replies::MAX_DEPTH
                            ));
                        }
                        // Itself and what it says it holds.
                        if count as u64 >= (Replies::MAX_VALUES - self.values) as u64 {
                            return Err(too_many_values());
                        }
                        opens = count as u64;
                    }
                },
                other => {
                    return Err(format!(
                        "not a RESP2 reply: a value starts with {other:#04x}"
                    ));
                }
            }
            self.values += 1;
            if self.values > Replies::MAX_VALUES {
                return Err(too_many_values());
            }
            if next > Replies::MAX_BYTES {
                return Err(too_big());
            }
            self.pos = next;
            self.seek = next;
            if opens > 0 {
                self.open[self.depth] = opens;
                self.depth += 1;
                continue;
            }
            // A whole value: it completes its array, which may complete its own...
            loop {
                if self.depth == 0 {
                    return Ok(Some(self.pos));
                }
                self.open[self.depth - 1] -= 1;
                if self.open[self.depth - 1] > 0 {
                    break;
                }
                self.depth -= 1;
            }
        }
    }
}

/// The index of the first `\r\n` in `buf` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

/// A number line as `redis_protocol` reads it (an `i64`), and no longer than one.
fn number(line: &[u8]) -> Option<i64> {
    if line.len() > NUMBER_LINE {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn bad_header(kind: u8) -> String {
    format!("not a RESP2 reply: a bad {} line", kind as char)
}

fn too_big() -> String {
    format!("a reply over {} bytes", Replies::MAX_BYTES)
}

fn too_many_values() -> String {
    format!("a reply of more than {} values", Replies::MAX_VALUES)
}

#[cfg(test)]
mod tests;
