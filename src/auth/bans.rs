//! Users an operator banned (`/api/users/{name}/ban`): refused at login,
//! at `/session/otp` and at the upgrade until their ban ends.
//!
//! Kept in memory and checked there; kept for a restart in a small file
//! beside the API key (`<key>.bans`, one `user until` line each, rewritten
//! whole on every change: bans are few) when the process is on its own,
//! and in Redis with `--redis` (`redis::control`), which tells every process.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bans at most (a ban past it replaces the one ending soonest).
const MAX_BANS: usize = 100_000;

#[derive(Default)]
pub struct Bans {
    /// User -> the Unix second its ban ends.
    until: HashMap<String, u64>,
    file: Option<PathBuf>,
}

impl Bans {
    /// Bans kept in `file` (read now, unless missing), or in memory only.
    pub fn open(file: Option<PathBuf>, now: u64) -> Bans {
        let mut bans = Bans {
            until: HashMap::new(),
            file,
        };
        if let Some(path) = bans.file.clone() {
            match std::fs::read_to_string(&path) {
                Ok(text) => bans.read(&text, &path, now),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => log::error!("{}: {err}; no bans read", path.display()),
            }
        }
        bans
    }

    fn read(&mut self, text: &str, path: &Path, now: u64) {
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.rsplit_once(' ').map(|(u, t)| (u, t.parse::<u64>())) {
                Some((user, Ok(until))) if until > now => self.remember(user, until),
                Some((_, Ok(_))) => {} // ended
                _ => bad += 1,
            }
        }
        if bad > 0 {
            log::warn!("{}: {bad} unreadable lines skipped", path.display());
        }
    }

    /// Whether `user` is banned at `now` (Unix seconds).
    pub fn is_banned(&self, user: &str, now: u64) -> bool {
        self.until.get(user).is_some_and(|&until| now < until)
    }

    /// Bans `user` until `until`, and keeps it on file.
    pub fn ban(&mut self, user: &str, until: u64, now: u64) {
        self.until.retain(|_, &mut end| end > now);
        self.remember(user, until);
        self.save();
    }

    /// Lifts `user`'s ban; false if it had none.
    pub fn unban(&mut self, user: &str) -> bool {
        let had = self.until.remove(user).is_some();
        self.save();
        had
    }

    /// Bans as another process (or Redis) tells them: not kept on file here.
    pub fn heard(&mut self, user: &str, until: Option<u64>) {
        match until {
            Some(until) => self.remember(user, until),
            None => {
                self.until.remove(user);
            }
        }
    }

    fn remember(&mut self, user: &str, until: u64) {
        if self.until.len() >= MAX_BANS && !self.until.contains_key(user) {
            let soonest = (self.until.iter()).min_by_key(|(_, end)| **end);
            if let Some(soonest) = soonest.map(|(user, _)| user.clone()) {
                self.until.remove(&soonest);
            }
        }
        self.until.insert(user.to_string(), until);
    }

    /// Rewrites the file whole (temp file, then rename).
    fn save(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let text: String = (self.until.iter())
            .map(|(user, until)| format!("{user} {until}\n"))
            .collect();
        let temp = path.with_extension("bans.tmp");
        let written = std::fs::File::create(&temp)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(err) = written {
            log::error!("{}: {err}; bans end with the process", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_holds_until_it_ends_and_outlives_a_restart() {
        let path = std::env::temp_dir().join(format!("chat-bans-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut bans = Bans::open(Some(path.clone()), 100);
        bans.ban("ann smith", 200, 100);
        bans.ban("bob", 150, 100);
        assert!(bans.is_banned("ann smith", 199));
        assert!(!bans.is_banned("ann smith", 200));
        let again = Bans::open(Some(path.clone()), 160);
        assert!(again.is_banned("ann smith", 170));
        assert!(!again.is_banned("bob", 170), "ended before the restart");
        assert!(bans.unban("ann smith"));
        assert!(!Bans::open(Some(path.clone()), 160).is_banned("ann smith", 170));
        let _ = std::fs::remove_file(&path);
    }
}
