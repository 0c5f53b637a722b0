//! What goes into log lines that clients can influence. Their text is
//! escaped (`Escaped`), so nothing a client sends can move the cursor, flip
//! the terminal's writing direction or forge a line; and lines a client can
//! cause by the thousand (refusals, rate limits) are written at most once
//! per interval (`LogThrottle`), saying how many were held back, so an
//! attacker cannot fill the disk or drown the lines that matter. What
//! comes from elsewhere (a reply from Redis) is cut short (`Truncated`).

use std::fmt::{self, Display, Write};
use std::time::{Duration, Instant};

/// Client-supplied text for a log line: quoted, with every control
/// character and every character outside printable ASCII escaped.
pub struct Escaped<'a>(pub &'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                ' '..='~' => f.write_char(c)?,
                _ => write!(f, "{}", c.escape_default())?,
            }
        }
        f.write_char('"')
    }
}

/// A value's `Debug` form, cut after `limit` bytes ("..." marks the cut).
/// Formatting stops there, so a huge value costs no more than the limit.
pub struct Truncated<'a, T: fmt::Debug>(pub &'a T, pub usize);

impl<T: fmt::Debug> Display for Truncated<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Capped {
            text: String::new(),
            limit: self.1,
        };
        let cut = write!(text, "{:?}", self.0).is_err();
        f.write_str(&text.text)?;
        if cut {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// A string that refuses to grow past `limit` bytes.
struct Capped {
    text: String,
    limit: usize,
}

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.limit.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        Err(fmt::Error)
    }
}

pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Whether to write the line now: `Some(n)` with the number of lines held
    /// back since the last one written, or None to stay quiet.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|at| now < at + self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// " (N similar lines held back)" when N > 0, for the end of a log line.
pub fn held_back(count: u64) -> String {
    match count {
        0 => String::new(),
        n => format!(" ({n} similar lines held back)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_quoted_and_escaped() {
        let hostile = "a\"b\\c\u{1b}[31m\u{85}\u{202e}\u{e9}\n";
        let logged = Escaped(hostile).to_string();
        assert_eq!(logged, r#""a\"b\\c\u{1b}[31m\u{85}\u{202e}\u{e9}\n""#);
        assert!(logged.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    }

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(5));
        assert_eq!(throttle.admit(t0), Some(0));
        for s in 1..5 {
            assert_eq!(throttle.admit(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.admit(t0 + Duration::from_secs(5)), Some(4));
        assert_eq!(held_back(4), " (4 similar lines held back)");
        assert_eq!(held_back(0), "");
    }

    #[test]
    fn a_huge_value_is_cut_without_being_formatted_whole() {
        let huge = vec![7u8; 10_000_000];
        let line = Truncated(&huge, 40).to_string();
        assert_eq!(line.len(), 43);
        assert!(line.starts_with("[7, 7") && line.ends_with("..."));
        assert_eq!(Truncated(&"short", 40).to_string(), "\"short\"");
    }
}
