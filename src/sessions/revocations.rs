//! Sessions ended before their tokens expire: one session by `/logout`, or
//! every session of a user issued until a moment by `chat-server revoke USER`.
//!
//! Kept in memory, bounded, and with a session key file also in
//! `<key>.revoked` beside it: one line appended per revocation (`ID EXPIRES`,
//! or `user:NAME ISSUED_UNTIL`; no fsync, so a host crash can lose the last
//! few), rewritten with the live ones only (temp file + rename) at start and
//! whenever it holds twice as many lines as live entries. A line written by
//! someone else (the `revoke` command, another process with the same key) is
//! noticed by `refresh`: one `stat`, and the file is read again only when its
//! size, time or inode moved in a way our own appends do not explain.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Session revocations remembered at most; past it the oldest goes first
/// (and is logged). The order is kept beside the table, so a full table
/// takes a new entry in O(1), not by sweeping every entry on each call.
pub(super) const MAX_TRACKED: usize = 100_000;
/// A file shorter than this is never rewritten: compaction is for the many.
const MIN_LINES_TO_COMPACT: usize = 1024;
/// How a user's line starts.
const USER_PREFIX: &str = "user:";

/// What `stat` says of the file: when it changes unexplained, re-read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

pub(super) struct Revocations {
    /// Session ids revoked, with when their tokens expire anyway.
    sessions: HashMap<String, u64>,
    /// `sessions` in the order it was filled: (expires, id).
    order: VecDeque<(u64, String)>,
    /// Per user, the last second whose sessions are ended: a token issued
    /// then or before is refused.
    users: HashMap<String, u64>,
    /// The lifetime of a token: its issue time is `expires - ttl`, and a
    /// user's revocation is kept until every token it ends has expired.
    ttl: u64,
    file: Option<PathBuf>,
    /// Lines in `file`; past twice the live entries it is rewritten.
    lines_on_file: usize,
    /// The file as we last read or wrote it.
    stamp: Option<Stamp>,
}

impl Revocations {
    /// The revocations on `file` (if any), rewritten with the live ones only.
    /// A missing file is a first start; a bad line or an unreadable file is
    /// logged, never fatal.
    pub(super) fn open(file: Option<PathBuf>, ttl: Duration, now: SystemTime) -> Revocations {
        let mut revocations = Revocations {
            sessions: HashMap::new(),
            order: VecDeque::new(),
            users: HashMap::new(),
            ttl: ttl.as_secs(),
            file,
            lines_on_file: 0,
            stamp: None,
        };
        if let Some(path) = revocations.file.clone() {
            revocations.read(&path, now);
            revocations.compact(&path, now);
        }
        revocations
    }

    /// True when this session, or every session of its user issued until
    /// then, was ended.
    pub(super) fn contains(&self, id: &str, user: &str, expires: u64) -> bool {
        let issued = expires.saturating_sub(self.ttl);
        self.sessions.contains_key(id) || self.users.get(user).is_some_and(|&until| issued <= until)
    }

    /// Ends session `id` until its token expires anyway.
    pub(super) fn end_session(&mut self, id: &str, expires: u64, now: SystemTime) {
        if self.sessions.contains_key(id) {
            return;
        }
        self.remember_session(id, expires, unix_seconds(now));
        self.append(&format!("{id} {expires}\n"), "this logout", now);
    }

    /// Ends every session of `user` issued until `now` (an operator's call).
    pub(super) fn end_user(&mut self, user: &str, now: SystemTime) {
        let until = unix_seconds(now);
        self.remember_user(user, until);
        let line = format!("{USER_PREFIX}{user} {until}\n");
        self.append(&line, "this disconnect", now);
    }

    /// Reads in what another writer added since we last looked.
    pub(super) fn refresh(&mut self, now: SystemTime) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
        if stamp != self.stamp {
            self.read(&path, now);
        }
    }

    /// Adds every line of the file (what is already known stays).
    fn read(&mut self, path: &Path, now: SystemTime) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.stamp = None;
                return;
            }
            Err(err) => {
                log::error!(
                    "{}: {err}; logouts and revocations written there are not known",
                    path.display()
                );
                return;
            }
        };
        self.stamp = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        let now = unix_seconds(now);
        let mut bad = 0usize;
        for line in text.lines() {
            match parse_line(line) {
                Some(Line::Session(id, expires)) => self.remember_session(id, expires, now),
                Some(Line::User(user, until)) => self.remember_user(user, until),
                None => bad += 1,
            }
        }
        self.lines_on_file = text.lines().count();
        if bad > 0 {
            log::warn!("{}: {bad} unreadable lines skipped", path.display());
        }
    }

    /// Appends one line; a file twice as long as its live entries is rewritten.
    fn append(&mut self, line: &str, what: &str, now: SystemTime) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(line.as_bytes())?;
                file.metadata()
            });
        match appended {
            Ok(metadata) => {
                // Ours alone explains the new size: nothing else to read.
                let after = Stamp::of(&metadata);
                let before = self.stamp.map_or(0, |s| s.len);
                if self.stamp.is_none_or(|s| s.inode == after.inode)
                    && after.len == before + line.len() as u64
                {
                    self.stamp = Some(after);
                }
            }
            Err(err) => log::error!("{}: {err}; {what} ends with the process", path.display()),
        }
        self.lines_on_file += 1;
        let live = self.sessions.len() + self.users.len();
        if self.lines_on_file > (2 * live).max(MIN_LINES_TO_COMPACT) {
            self.compact(&path, now);
        }
    }

    /// Rewrites the file with the live entries (temp file + rename), after
    /// reading in what others appended since we last looked: a rewrite from
    /// our memory alone would drop their lines. (Only a line appended between
    /// that read and the rename can still be lost from the file; its writer
    /// keeps it in memory until it restarts.)
    fn compact(&mut self, path: &Path, now: SystemTime) {
        self.refresh(now);
        let now = unix_seconds(now);
        let ttl = self.ttl;
        self.users
            .retain(|_, until| until.saturating_add(ttl) > now);
        let mut live = String::new();
        for (expires, id) in &self.order {
            live.push_str(&format!("{id} {expires}\n"));
        }
        for (user, until) in &self.users {
            live.push_str(&format!("{USER_PREFIX}{user} {until}\n"));
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".tmp{}", std::process::id()));
        let written = std::fs::write(&temp, live).and_then(|()| std::fs::rename(&temp, path));
        match written {
            Ok(()) => {
                self.lines_on_file = self.order.len() + self.users.len();
                self.stamp = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
            }
            Err(err) => log::error!("{}: cannot compact: {err}", path.display()),
        }
    }

    /// Keeps `id` revoked until `expires`, within MAX_TRACKED.
    fn remember_session(&mut self, id: &str, expires: u64, now: u64) {
        if expires <= now || self.sessions.contains_key(id) {
            return;
        }
        // Expired ones at the front go for free (each is popped once); the
        // order is by revocation, so an expired one further back waits.
        while let Some((expires, _)) = self.order.front() {
            if *expires > now && self.sessions.len() < MAX_TRACKED {
                break;
            }
            let live = *expires > now;
            if let Some((_, id)) = self.order.pop_front() {
                self.sessions.remove(&id);
                if live {
                    log::warn!(
                        "{MAX_TRACKED} sessions revoked and unexpired: the oldest revocation is forgotten"
                    );
                }
            }
        }
        self.sessions.insert(id.to_string(), expires);
        self.order.push_back((expires, id.to_string()));
    }

    fn remember_user(&mut self, user: &str, until: u64) {
        let kept = self.users.entry(user.to_string()).or_insert(until);
        *kept = (*kept).max(until);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }
}

/// `chat-server revoke USER`: appends a line that ends every session of
/// `user` issued until `now` to the revocation file beside `key_file`, where
/// every server using that key reads it at its next session check.
pub fn revoke_user(key_file: &Path, user: &str, now: SystemTime) -> Result<PathBuf, String> {
    if user.is_empty() || user.contains(['\n', '\r']) {
        return Err("a user name is one non-empty line".into());
    }
    let path = file_beside(key_file);
    let line = format!("{USER_PREFIX}{user} {}\n", unix_seconds(now));
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(path)
}

/// `<key>.revoked`.
pub(super) fn file_beside(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".revoked");
    PathBuf::from(name)
}

enum Line<'a> {
    Session(&'a str, u64),
    User(&'a str, u64),
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let (head, number) = line.rsplit_once(' ')?;
    let number = number.parse::<u64>().ok()?;
    match head.strip_prefix(USER_PREFIX) {
        Some(user) if !user.is_empty() => Some(Line::User(user, number)),
        Some(_) => None,
        None if !head.is_empty() && head.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(Line::Session(head, number))
        }
        None => None,
    }
}

pub(super) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3600);

    fn scratch(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("revocations-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn a_users_revocation_ends_what_was_issued_until_then_and_nothing_after() {
        let path = scratch("user");
        let now = SystemTime::now();
        let second = unix_seconds(now);
        let mut revocations = Revocations::open(Some(path.clone()), TTL, now);
        let issued_before = second - 5 + TTL.as_secs();
        let issued_after = second + 1 + TTL.as_secs();
        assert!(!revocations.contains("a1", "ann", issued_before));

        // Another writer (the command) appends; one refresh reads it in.
        let key = path.with_extension("key");
        let file = revoke_user(&key, "ann", now).expect("append");
        let mut other = Revocations::open(Some(file.clone()), TTL, now);
        assert!(other.contains("a1", "ann", issued_before), "read at open");
        revocations.file = Some(file.clone());
        revocations.refresh(now);
        assert!(
            revocations.contains("a1", "ann", issued_before),
            "read on refresh"
        );
        assert!(
            !revocations.contains("a2", "ann", issued_after),
            "a later login"
        );
        assert!(
            !revocations.contains("b1", "bob", issued_before),
            "another user"
        );

        // A logout of ours is appended and does not hide the next outside line.
        other.end_session("b0b", issued_before, now);
        revoke_user(&key, "bob", now).expect("append");
        other.refresh(now);
        assert!(other.contains("b1", "bob", issued_before));
        assert!(other.contains("b0b", "carl", issued_before));

        // A rewrite keeps live user lines and drops those past every token.
        let long_ago = now - Duration::from_secs(2 * 3600);
        revoke_user(&key, "old", long_ago).expect("append");
        let reopened = Revocations::open(Some(file.clone()), TTL, now);
        let kept = std::fs::read_to_string(&file).expect("rewritten");
        assert!(kept.contains("user:ann "), "{kept}");
        assert!(!kept.contains("user:old "), "{kept}");
        assert!(reopened.contains("x", "bob", issued_before));
        let _ = std::fs::remove_file(&file);
    }

    /// Two processes share a key: one's logout survives the other's rewrite.
    #[test]
    fn a_rewrite_keeps_what_another_process_appended() {
        let path = scratch("shared");
        let t0 = SystemTime::now();
        let mut a = Revocations::open(Some(path.clone()), TTL, t0);
        let mut b = Revocations::open(Some(path.clone()), TTL, t0);
        let soon = unix_seconds(t0) + 1;
        for i in 0..MIN_LINES_TO_COMPACT {
            a.end_session(&format!("{i:x}a"), soon, t0);
        }
        let kept = unix_seconds(t0) + TTL.as_secs();
        b.end_session("b0b", kept, t0);
        // A's short ones have expired: its next logout rewrites the file.
        let later = t0 + Duration::from_secs(10);
        a.end_session("a11", kept, later);
        let text = std::fs::read_to_string(&path).expect("the file");
        assert!(text.lines().count() < 10, "rewritten: {} lines", text.lines().count());
        assert!(text.contains("b0b "), "B's logout was dropped:\n{text}");
        let restarted = Revocations::open(Some(path.clone()), TTL, later);
        assert!(restarted.contains("b0b", "bob", kept));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn lines_are_read_strictly() {
        assert!(matches!(
            parse_line("ab12 5"),
            Some(Line::Session("ab12", 5))
        ));
        assert!(matches!(
            parse_line("user:ann lee 7"),
            Some(Line::User("ann lee", 7))
        ));
        for bad in ["user: 7", "zz 12", "ab12", "ab12 x", " 5", "not a line"] {
            assert!(parse_line(bad).is_none(), "{bad}");
        }
        assert!(revoke_user(Path::new("/nonexistent/k"), "ann", SystemTime::now()).is_err());
        assert!(revoke_user(Path::new("k"), "a\nb", SystemTime::now()).is_err());
    }
}
