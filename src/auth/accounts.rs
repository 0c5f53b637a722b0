//! Accounts: the users file (or the demo account) and password checks.
//!
//! Passwords are kept only as argon2id hashes (PHC strings); one working
//! memory serves every check, and unknown users cost as much as known ones.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHasher, Version};

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
        let demo = Credential::derive(&mut accounts.blocks, DEMO_PASSWORD, default_params())?;
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
    /// start-up leaves no multi-MiB hole in the heap. The decoy costs what
    /// the costliest account does: an unknown name takes as long as a known
    /// one, whatever parameters the users file's hashes were made with (with
    /// the default ones for every hash, a file of cheaper or costlier hashes
    /// told names apart by the time a wrong password took).
    fn with_users(users: HashMap<String, Credential>) -> Result<Accounts, String> {
        let params = users
            .values()
            .map(|c| c.params.clone())
            .max_by_key(|p| (p.block_count(), p.t_cost()))
            .unwrap_or_else(default_params);
        let mut blocks = vec![Block::default(); params.block_count()];
        let decoy = Credential::derive(&mut blocks, "decoy password", params)?;
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
    fn derive(blocks: &mut [Block], password: &str, params: Params) -> Result<Credential, String> {
        let mut salt = vec![0u8; 16];
        getrandom::fill(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
        let mut hash = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        let memory = &mut blocks[..params.block_count()];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_account_checks_its_password() {
        let mut accounts = Accounts::demo().unwrap();
        assert!(accounts.verify("percy", "123"));
        assert!(!accounts.verify("percy", "124"));
        assert!(!accounts.verify("nobody", "123"));
    }

    /// An unknown name is checked against a decoy as costly as the costliest
    /// account, so a wrong password takes as long either way.
    #[test]
    fn the_decoy_costs_what_the_costliest_account_does() {
        let hash_with = |m_cost: u32, t_cost: u32| {
            let params = Params::new(m_cost, t_cost, 1, None).unwrap();
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_with_salt(b"pw", b"saltsaltsaltsalt")
                .unwrap()
                .to_string()
        };
        let cheap = Accounts::parse(&format!("a:{}\n", hash_with(8, 1))).unwrap();
        assert_eq!((cheap.decoy.params.m_cost(), cheap.decoy.params.t_cost()), (8, 1));
        let text = format!("a:{}\nb:{}\n", hash_with(8, 1), hash_with(8 * 1024, 3));
        let mixed = Accounts::parse(&text).unwrap();
        assert_eq!((mixed.decoy.params.m_cost(), mixed.decoy.params.t_cost()), (8 * 1024, 3));
        let demo = Accounts::demo().unwrap();
        assert_eq!(demo.decoy.params.m_cost(), default_params().m_cost());
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
}
