//! A connection's bounded outbound queue: the only way bytes reach a socket.
//!
//! Frames are shared (`Rc<[u8]>`): a broadcast is encoded once and the same
//! bytes sit in every recipient's queue. The queue is written with one
//! vectored `write()` per loop iteration where the socket takes it all.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// At most this many frames go into one vectored write (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 64;

/// The head frame sits inline and only the frames behind it are boxed: a
/// queue that holds one frame at a time (each delivery at a moderate rate)
/// never allocates, and an idle connection keeps no queue memory.
#[derive(Default)]
pub struct Outbound {
    /// The frame being written, or next to be; `None` when the queue is empty.
    head: Option<Rc<[u8]>>,
    /// Frames behind the head, while there are any.
    #[expect(
        clippy::box_collection,
        reason = "boxed, an idle queue keeps 8 bytes for it, not 32"
    )]
    rest: Option<Box<VecDeque<Rc<[u8]>>>>,
    /// Bytes of the head frame already written.
    head_written: u32,
    /// Leading frames that must be sent even when the rest is dropped.
    pinned: u32,
    queued: usize,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// The queue is empty.
    All,
    /// The socket is full; wait for it to become writable.
    Blocked,
}

impl Outbound {
    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub fn push(&mut self, frame: Rc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.queued += frame.len();
        match self.head {
            None => self.head = Some(frame),
            Some(_) => self.rest.get_or_insert_default().push_back(frame),
        }
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.push(Rc::from(bytes));
    }

    /// Everything queued so far must be sent, even if what follows is
    /// dropped (the HTTP answers up to and including a 101).
    pub fn pin_all(&mut self) {
        self.pinned = u32::try_from(self.len()).unwrap_or(u32::MAX);
    }

    /// Drops every frame not yet started (a partly written frame must finish,
    /// or the peer would see a torn frame), except pinned ones.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.head_written > 0).max(self.pinned as usize);
        while self.len() > keep {
            let dropped = match self.rest.as_mut().and_then(|rest| rest.pop_back()) {
                Some(frame) => Some(frame),
                None => self.head.take(),
            };
            if let Some(frame) = dropped {
                self.queued -= frame.len();
            }
            self.free_rest_if_empty();
        }
    }

    /// Writes as much as the sink takes, in as few calls as it allows.
    pub fn write_to<W: Write>(&mut self, sink: &mut W) -> io::Result<Flushed> {
        while let Some(head) = &self.head {
            let unwritten = &head[self.head_written as usize..];
            let written = match &self.rest {
                // One frame (a fan-out delivery): no slice array to fill.
                None => sink.write(unwritten),
                Some(rest) => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    slices[0] = IoSlice::new(unwritten);
                    let mut count = 1;
                    for (slice, frame) in slices[1..].iter_mut().zip(rest.iter()) {
                        *slice = IoSlice::new(frame);
                        count += 1;
                    }
                    sink.write_vectored(&slices[..count])
                }
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Flushed::All)
    }

    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    fn consume(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(head) = &self.head else {
                break;
            };
            let left = head.len() - self.head_written as usize;
            if written < left {
                // Frames are at most a message (under 1 GiB) plus its header.
                self.head_written += u32::try_from(written).unwrap_or(u32::MAX);
                return;
            }
            written -= left;
            self.head_written = 0;
            self.head = self.rest.as_mut().and_then(|rest| rest.pop_front());
            self.free_rest_if_empty();
            self.pinned = self.pinned.saturating_sub(1);
        }
    }

    /// An idle connection keeps no queue memory.
    fn free_rest_if_empty(&mut self) {
        if self.rest.as_ref().is_some_and(|rest| rest.is_empty()) {
            self.rest = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `budget` bytes per call and then blocks.
    struct Trickle {
        taken: Vec<u8>,
        per_call: usize,
        calls_left: usize,
        calls: usize,
    }

    impl Trickle {
        fn new(per_call: usize, calls_left: usize) -> Trickle {
            Trickle {
                taken: vec![],
                per_call,
                calls_left,
                calls: 0,
            }
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            self.calls += 1;
            let mut room = self.per_call;
            for buf in bufs {
                let n = buf.len().min(room);
                self.taken.extend_from_slice(&buf[..n]);
                room -= n;
            }
            Ok(self.per_call - room)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn many_frames_leave_in_one_write() {
        let mut out = Outbound::default();
        let shared: Rc<[u8]> = Rc::from(&b"abc"[..]);
        for _ in 0..10 {
            out.push(shared.clone());
        }
        let mut sink = Trickle::new(usize::MAX / 2, 5);
        assert_eq!(out.write_to(&mut sink).unwrap(), Flushed::All);
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.taken, b"abc".repeat(10));
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn one_frame_at_a_time_needs_no_allocation_and_a_drained_queue_keeps_none() {
        let mut out = Outbound::default();
        out.push_bytes(b"one");
        assert!(out.rest.is_none(), "a lone frame sits inline");
        for _ in 0..100 {
            out.push_bytes(b"more");
        }
        let mut sink = Trickle::new(usize::MAX / 2, 5);
        assert_eq!(out.write_to(&mut sink).unwrap(), Flushed::All);
        assert_eq!(sink.calls, 2, "64 frames per write");
        assert_eq!(sink.taken, [&b"one"[..], &b"more".repeat(100)].concat());
        assert!(out.is_empty() && out.rest.is_none() && out.queued_bytes() == 0);
    }

    #[test]
    fn partial_writes_resume_mid_frame_in_order() {
        let mut out = Outbound::default();
        out.push_bytes(b"hello ");
        out.push_bytes(b"world");
        let mut sink = Trickle::new(4, 2);
        assert_eq!(out.write_to(&mut sink).unwrap(), Flushed::Blocked);
        assert_eq!(out.queued_bytes(), 3);
        sink.calls_left = 10;
        assert_eq!(out.write_to(&mut sink).unwrap(), Flushed::All);
        assert_eq!(sink.taken, b"hello world");
    }

    #[test]
    fn discarding_keeps_pinned_frames() {
        let mut out = Outbound::default();
        out.push_bytes(b"HTTP/1.1 101 ...");
        out.pin_all();
        out.push_bytes(b"frame");
        out.discard_unstarted();
        let mut sink = Trickle::new(100, 10);
        out.write_to(&mut sink).unwrap();
        assert_eq!(sink.taken, b"HTTP/1.1 101 ...");
        out.push_bytes(b"later");
        out.discard_unstarted();
        assert!(out.is_empty(), "pins end once their frames are sent");
    }

    #[test]
    fn discarding_keeps_the_frame_in_flight() {
        let mut out = Outbound::default();
        out.push_bytes(b"first");
        out.push_bytes(b"second");
        let mut sink = Trickle::new(2, 1);
        out.write_to(&mut sink).unwrap();
        out.discard_unstarted();
        out.push_bytes(b"!");
        sink.calls_left = 10;
        out.write_to(&mut sink).unwrap();
        assert_eq!(sink.taken, b"first!");
    }
}
