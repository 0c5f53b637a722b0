//! Accounts, one-time passwords, and the limits on trying passwords.
//!
//! Passwords are kept only as argon2id hashes (PHC strings). A successful
//! login yields an OTP: 128 random bits, hex-encoded, good for one WebSocket
//! upgrade within its lifetime. Expired OTPs are swept when the earliest one
//! is due, so unused ones never pile up. Password checks take turns
//! (`LoginTurns`), and failures are limited per address (`LoginLimiter`).
//!
//! One job per file: `accounts` (the users file, hashing, the demo account),
//! `otps`, `turns` (`LoginTurns`), `limiter` (`LoginLimiter`) and `bans`
//! (users an operator banned).

mod accounts;
mod bans;
mod limiter;
mod otps;
mod turns;

pub use accounts::{Accounts, hash_password};
pub use bans::Bans;
#[cfg(test)]
pub use limiter::FAILURE_DELAY;
pub use limiter::LoginLimiter;
pub use otps::Otps;
#[cfg(test)]
pub use turns::LOGINS_PER_ITERATION;
pub use turns::LoginTurns;
