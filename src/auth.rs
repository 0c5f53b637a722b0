//! Accounts, one-time passwords, and the limits on trying passwords.
//!
//! Passwords are kept only as argon2id hashes (PHC strings). A successful
//! login yields an OTP: 128 random bits, hex-encoded, good for one WebSocket
//! upgrade within its lifetime. Expired OTPs are swept when the earliest one
//! is due, so unused ones never pile up. Password checks take turns
//! (`LoginTurns`), and failures are limited per address (`LoginLimiter`).

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHasher, Version};

use crate::peers::address_key;
use crate::slab::SlotId;

/// The tutorial's account, present only when no users file is given.
pub const DEMO_USER: &str = "percy";
const DEMO_PASSWORD: &str = "123";

/// Argon2id cost: 4 MiB and 2 passes, a few milliseconds per login on a small
/// host, so a burst of logins does not stall the loop for long.
fn default_params() -> Params {
    Params::new(4 * 1024, 2, 1, None).unwrap_or_default()
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params())
}

/// Hashes `password` with a fresh random salt; the result is a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| format!("hashing failed: {err}"))
}

pub struct Accounts {
    users: HashMap<String, Credential>,
    /// Verified against when the user is unknown, so both cases cost the same.
    decoy: Credential,
    /// Argon2 working memory, allocated once and reused by every login: a fresh
    /// multi-MiB buffer per login fragments the heap and RSS only ever grows.
    blocks: Vec<Block>,
    /// Only the built-in demo account (no `--users` file).
    is_demo: bool,
}

/// A parsed argon2id hash: everything needed to recompute and compare it.
struct Credential {
    params: Params,
    version: Version,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// Largest argon2 memory cost accepted from a users file (64 MiB).
const MAX_M_COST_KIB: u32 = 64 * 1024;

impl Accounts {
    /// Only the demo account percy / 123.
    pub fn demo() -> Result<Accounts, String> {
        let mut accounts = Accounts::with_users(HashMap::new())?;
        let demo = Credential::derive(&mut accounts.blocks, DEMO_PASSWORD)?;
        accounts.users.insert(DEMO_USER.to_string(), demo);
        accounts.is_demo = true;
        Ok(accounts)
    }

    /// Reads `name:phc-hash` lines; `#` starts a comment line, blank lines are skipped.
    pub fn load(path: &Path) -> Result<Accounts, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("users file {}: {err}", path.display()))?;
        Accounts::parse(&text).map_err(|err| format!("users file {}: {err}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Accounts, String> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!("line {number}: expected 'name:hash'"));
            };
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_whitespace) {
                return Err(format!("line {number}: bad user name"));
            }
            let credential = parse_hash(hash).map_err(|err| format!("line {number}: {err}"))?;
            if users.insert(name.to_string(), credential).is_some() {
                return Err(format!("line {number}: user '{name}' appears twice"));
            }
        }
        if users.is_empty() {
            return Err("no accounts".into());
        }
        Accounts::with_users(users)
    }

    /// Allocates the working memory first and hashes the decoy in it, so
    /// start-up leaves no multi-MiB hole in the heap.
    fn with_users(users: HashMap<String, Credential>) -> Result<Accounts, String> {
        let most_blocks = users
            .values()
            .map(|c| c.params.block_count())
            .max()
            .unwrap_or(0);
        let mut blocks = vec![Block::default(); most_blocks.max(default_params().block_count())];
        let decoy = Credential::derive(&mut blocks, "decoy password")?;
        Ok(Accounts {
            users,
            decoy,
            blocks,
            is_demo: false,
        })
    }

    /// What a session binds itself to, per user: the salt and hash, so a
    /// changed password (or a removed user) ends the user's sessions. The demo
    /// account is hashed afresh by every process, so it binds to its name:
    /// its sessions outlive a restart like any other.
    pub fn credentials(&self) -> impl Iterator<Item = (&str, Vec<u8>)> {
        self.users.iter().map(|(name, credential)| {
            let bound = if self.is_demo && name == DEMO_USER {
                b"demo".to_vec()
            } else {
                [credential.salt.as_slice(), credential.hash.as_slice()].concat()
            };
            (name.as_str(), bound)
        })
    }

    /// True when `username` has an account (its sessions are honoured).
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// True when `password` is `username`'s. Unknown users cost the same as
    /// known ones, and the final comparison takes the same time for any input.
    pub fn verify(&mut self, username: &str, password: &str) -> bool {
        let (credential, known) = match self.users.get(username) {
            Some(credential) => (credential, true),
            None => (&self.decoy, false),
        };
        let hasher = Argon2::new(
            Algorithm::Argon2id,
            credential.version,
            credential.params.clone(),
        );
        let mut computed = vec![0u8; credential.hash.len()];
        let blocks = &mut self.blocks[..credential.params.block_count()];
        let hashed = hasher.hash_password_into_with_memory(
            password.as_bytes(),
            &credential.salt,
            &mut computed,
            blocks,
        );
        hashed.is_ok() && constant_time_eq(&computed, &credential.hash) && known
    }
}

impl Credential {
    /// A fresh salt and hash for `password` with the default parameters.
    fn derive(blocks: &mut [Block], password: &str) -> Result<Credential, String> {
        let params = default_params();
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
        let mut hash = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        let memory = &mut blocks[..params.block_count()];
        hasher()
            .hash_password_into_with_memory(password.as_bytes(), &salt, &mut hash, memory)
            .map_err(|err| format!("hashing failed: {err}"))?;
        Ok(Credential {
            params,
            version: Version::V0x13,
            salt,
            hash,
        })
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hash(text: &str) -> Result<Credential, String> {
    let phc = PasswordHash::new(text.trim()).map_err(|err| format!("not a PHC hash: {err}"))?;
    if phc.algorithm.as_str() != "argon2id" {
        return Err("hash must be argon2id (make one with 'chat-server hash-password')".into());
    }
    let params = Params::try_from(&phc).map_err(|err| format!("bad argon2 parameters: {err}"))?;
    if params.m_cost() > MAX_M_COST_KIB {
        return Err(format!("argon2 memory cost over {MAX_M_COST_KIB} KiB"));
    }
    let version = match phc.version {
        Some(v) => Version::try_from(v).map_err(|err| format!("bad argon2 version: {err}"))?,
        None => Version::default(),
    };
    let salt = phc.salt.ok_or("hash has no salt")?.as_ref().to_vec();
    let hash = phc.hash.ok_or("hash has no output")?.as_bytes().to_vec();
    Ok(Credential {
        params,
        version,
        salt,
        hash,
    })
}

/// Password checks run per loop iteration; connections wanting more wait.
pub const LOGINS_PER_ITERATION: usize = 2;

/// Turns at checking a password. Each check is milliseconds of the one thread,
/// so at most `LOGINS_PER_ITERATION` run per loop iteration and everyone
/// else chats in between. Connections that want a check queue for it and get
/// one check per turn, then go to the back: one connection pipelining logins
/// cannot take every check while others wait.
#[derive(Default)]
pub struct LoginTurns {
    /// Checks left in this iteration.
    left: usize,
    waiting: VecDeque<SlotId>,
}

impl LoginTurns {
    pub fn new_iteration(&mut self) {
        self.left = LOGINS_PER_ITERATION;
    }

    /// Whether `id` may check a password now: with a turn `granted` to it
    /// (used up here), or when nobody waits and checks are left. Otherwise it
    /// joins the queue and must wait to be granted a turn.
    pub fn admit(&mut self, id: SlotId, granted: &mut bool) -> bool {
        if mem::take(granted) {
            return true;
        }
        if self.left > 0 && self.waiting.is_empty() {
            self.left -= 1;
            return true;
        }
        self.waiting.push_back(id);
        false
    }

    /// The next waiting connection for which `alive` holds, if a check is left
    /// in this iteration; it is granted one.
    pub fn grant(&mut self, alive: impl Fn(SlotId) -> bool) -> Option<SlotId> {
        while self.left > 0 {
            let id = self.waiting.pop_front()?;
            if alive(id) {
                self.left -= 1;
                return Some(id);
            }
        }
        None
    }

    /// Connections waiting for a turn (the loop must not sleep while any do).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Failed logins per client address (an IPv6 /64), as token buckets: each
/// failure takes a token, tokens come back at a steady rate, and an empty
/// bucket means 429. One more bucket counts every failure from everywhere:
/// while it is empty, each failure is answered only after `FAILURE_DELAY`.
/// That slows a guesser spread over many addresses without ever refusing a
/// right password, so nobody can lock a named account out.
pub struct LoginLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    everyone: Bucket,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failures allowed in a burst from one address.
const BURST: f64 = 10.0;
/// One failure forgiven every this many seconds.
const REFILL_SECS: f64 = 6.0;
/// Failures allowed in a burst from all addresses together.
const GLOBAL_BURST: f64 = 100.0;
/// Failures forgiven per second, from all addresses together.
const GLOBAL_REFILL_PER_SEC: f64 = 20.0;
/// How long a failed login's answer waits while the global budget is spent.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Addresses remembered before full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            buckets: HashMap::new(),
            everyone: Bucket {
                tokens: GLOBAL_BURST,
                updated: Instant::now(),
            },
        }
    }
}

impl LoginLimiter {
    /// Seconds to wait before trying again, if `ip` has no failures left.
    pub fn retry_after(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        let bucket = self.buckets.get_mut(&address_key(ip))?;
        bucket.refill(now, BURST, 1.0 / REFILL_SECS);
        (bucket.tokens < 1.0).then(|| ((1.0 - bucket.tokens) * REFILL_SECS).ceil() as u64)
    }

    /// Counts a failure from `ip`; returns how long its answer must wait.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, bucket| {
                bucket.refill(now, BURST, 1.0 / REFILL_SECS);
                bucket.tokens < BURST
            });
        }
        let bucket = self.buckets.entry(address_key(ip)).or_insert(Bucket {
            tokens: BURST,
            updated: now,
        });
        bucket.refill(now, BURST, 1.0 / REFILL_SECS);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        self.everyone
            .refill(now, GLOBAL_BURST, GLOBAL_REFILL_PER_SEC);
        let spent = self.everyone.tokens < 1.0;
        self.everyone.tokens = (self.everyone.tokens - 1.0).max(0.0);
        spent.then_some(FAILURE_DELAY)
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: f64, per_sec: f64) {
        let earned = now.saturating_duration_since(self.updated).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + earned).min(burst);
        self.updated = self.updated.max(now);
    }
}

/// Outstanding OTPs allowed at once by default: past this `/login` answers
/// 429, so a login flood cannot grow memory.
pub const MAX_OUTSTANDING_OTPS: usize = 10_000;

/// Outstanding one-time passwords.
pub struct Otps {
    live: HashMap<Rc<str>, Otp>,
    /// Every OTP issued and not yet swept, oldest first. All live equally long,
    /// so issue order is expiry order; redeemed ones are skipped when swept.
    by_expiry: VecDeque<(Instant, Rc<str>)>,
    limit: usize,
}

impl Default for Otps {
    fn default() -> Self {
        Otps::with_limit(MAX_OUTSTANDING_OTPS)
    }
}

struct Otp {
    user: String,
    expires: Instant,
}

impl Otps {
    pub fn with_limit(limit: usize) -> Otps {
        Otps {
            live: HashMap::new(),
            by_expiry: VecDeque::new(),
            limit,
        }
    }

    /// True when no more OTPs may be issued until some are used or expire.
    pub fn is_full(&self) -> bool {
        self.live.len() >= self.limit
    }

    /// A new random OTP: 128 bits, hex.
    pub fn fresh() -> Result<String, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Issues a fresh OTP for `user`, valid until `expires` (which must not be
    /// earlier than that of any OTP issued before).
    pub fn issue(&mut self, user: &str, expires: Instant) -> Result<String, String> {
        let otp = Otps::fresh()?;
        let key: Rc<str> = Rc::from(otp.as_str());
        self.live.insert(
            Rc::clone(&key),
            Otp {
                user: user.to_string(),
                expires,
            },
        );
        self.by_expiry.push_back((expires, key));
        Ok(otp)
    }

    /// Consumes `otp`: the user it was issued to, if it is live and not expired.
    pub fn redeem(&mut self, otp: &str, now: Instant) -> Option<String> {
        let entry = self.live.remove(otp)?;
        (now < entry.expires).then_some(entry.user)
    }

    /// Drops every OTP expired at `now`; returns how many were never used.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut unused = 0;
        while let Some((expires, _)) = self.by_expiry.front() {
            if now < *expires {
                break;
            }
            if let Some((_, otp)) = self.by_expiry.pop_front() {
                unused += usize::from(self.live.remove(&otp).is_some());
            }
        }
        if self.by_expiry.is_empty() {
            self.by_expiry = VecDeque::new();
        }
        unused
    }

    pub fn outstanding(&self) -> usize {
        self.live.len()
    }

    /// When the earliest OTP not yet swept expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.front().map(|(expires, _)| *expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn demo_account_checks_its_password() {
        let mut accounts = Accounts::demo().unwrap();
        assert!(accounts.verify("percy", "123"));
        assert!(!accounts.verify("percy", "124"));
        assert!(!accounts.verify("nobody", "123"));
    }

    #[test]
    fn users_file_reports_bad_lines_by_number() {
        let good = hash_password("pw").unwrap();
        let text = format!("# team\n\nalice:{good}\nbob\n");
        assert_eq!(
            Accounts::parse(&text).err().unwrap(),
            "line 4: expected 'name:hash'"
        );
        let text = format!("alice:{good}\nbob:plaintext\n");
        assert!(
            Accounts::parse(&text)
                .err()
                .unwrap()
                .starts_with("line 2: not a PHC hash")
        );
        let mut accounts = Accounts::parse(&format!("alice:{good}\n")).unwrap();
        assert!(accounts.verify("alice", "pw"));
        assert!(!accounts.verify("percy", "123"));
    }

    #[test]
    fn failed_logins_run_out_and_come_back() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut limiter = LoginLimiter::default();
        for _ in 0..10 {
            assert_eq!(limiter.retry_after(ip, t0), None);
            limiter.record_failure(ip, t0);
        }
        assert_eq!(limiter.retry_after(ip, t0), Some(6));
        assert_eq!(
            limiter.retry_after(other, t0),
            None,
            "other addresses are not affected"
        );
        assert_eq!(limiter.retry_after(ip, t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn failures_are_limited_per_slash_64() {
        let t0 = Instant::now();
        let mut limiter = LoginLimiter::default();
        for host in 0..10 {
            let ip: IpAddr = format!("2001:db8::{host:x}").parse().unwrap();
            limiter.record_failure(ip, t0);
        }
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(
            limiter.retry_after(neighbour, t0),
            Some(6),
            "same /64, same bucket"
        );
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(limiter.retry_after(elsewhere, t0), None);
    }

    #[test]
    fn failures_from_everywhere_are_slowed_once_the_global_budget_is_spent() {
        let t0 = Instant::now();
        let mut limiter = LoginLimiter::default();
        let delays: Vec<Option<Duration>> = (0..110u32)
            .map(|i| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                limiter.record_failure(ip, t0)
            })
            .collect();
        assert!(
            delays[..100].iter().all(Option::is_none),
            "the burst passes"
        );
        assert!(delays[100..].iter().all(|d| *d == Some(FAILURE_DELAY)));
        let ip: IpAddr = "10.1.0.0".parse().unwrap();
        assert_eq!(
            limiter.retry_after(ip, t0),
            None,
            "no address is refused for it"
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            limiter.record_failure(ip, later),
            None,
            "20 a second come back"
        );
    }

    #[test]
    fn login_turns_go_round_robin() {
        let mut slab = crate::slab::Slab::new();
        let (greedy, patient) = (slab.insert(()), slab.insert(()));
        let mut turns = LoginTurns::default();
        turns.new_iteration();
        let mut none = false;
        for _ in 0..LOGINS_PER_ITERATION {
            assert!(turns.admit(greedy, &mut none));
        }
        assert!(
            !turns.admit(greedy, &mut none),
            "the iteration's checks are spent"
        );
        assert!(!turns.admit(patient, &mut none));
        turns.new_iteration();
        assert!(
            !turns.admit(greedy, &mut none),
            "others wait: no jumping the queue"
        );
        let mut order: Vec<SlotId> = Vec::new();
        while turns.waiting() > 0 {
            match turns.grant(|_| true) {
                Some(id) => order.push(id),
                None => turns.new_iteration(),
            }
        }
        assert_eq!(order, [greedy, patient, greedy], "first come, first served");
        let mut granted = true;
        assert!(turns.admit(greedy, &mut granted));
        assert!(!granted, "a granted turn is used once");
    }

    #[test]
    fn otps_are_single_use_and_expire() {
        let now = Instant::now();
        let mut otps = Otps::default();
        let otp = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otp.len(), 32);
        assert_eq!(otps.redeem(&otp, now), Some("percy".to_string()));
        assert_eq!(otps.redeem(&otp, now), None);

        let late = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otps.redeem(&late, now + Duration::from_secs(5)), None);

        let _unused = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otps.sweep(now + Duration::from_secs(1)), 0);
        assert_eq!(otps.outstanding(), 1);
        let later = otps.issue("percy", now + Duration::from_secs(7)).unwrap();
        assert_eq!(
            otps.sweep(now + Duration::from_secs(6)),
            1,
            "only the unused one counts"
        );
        assert_eq!(otps.outstanding(), 1, "a later OTP outlives the sweep");
        assert_eq!(
            otps.redeem(&later, now + Duration::from_secs(6)),
            Some("percy".to_string())
        );
    }
}
