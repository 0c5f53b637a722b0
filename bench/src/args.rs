//! Command-line flags: `--name value` or `--name=value`, every flag takes a value.

use std::str::FromStr;
use std::time::Duration;

pub struct Args {
    flags: Vec<(String, String, bool)>,
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut iter = argv.iter();
        while let Some(arg) = iter.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}'"));
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = iter
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_string(), value.clone())
                }
            };
            flags.push((name, value, false));
        }
        Ok(Args { flags })
    }

    fn raw(&mut self, name: &str) -> Option<String> {
        let found = self.flags.iter_mut().rev().find(|(n, _, _)| n == name)?;
        found.2 = true;
        let value = found.1.clone();
        for flag in self.flags.iter_mut().filter(|(n, _, _)| n == name) {
            flag.2 = true;
        }
        Some(value)
    }

    /// Every value of a flag that may be given more than once, in order.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        self.flags
            .iter_mut()
            .filter(|(n, _, _)| n == name)
            .map(|flag| {
                flag.2 = true;
                flag.1.clone()
            })
            .collect()
    }

    /// Every value of a repeatable flag, each parsed.
    pub fn all_of<T: FromStr>(&mut self, name: &str) -> Result<Vec<T>, String> {
        self.all(name)
            .into_iter()
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| format!("--{name} {value}: not a valid value"))
            })
            .collect()
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_string())
    }

    pub fn opt<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.raw(name) {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|_| format!("--{name} {value}: not a valid value")),
        }
    }

    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// A yes/no flag: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`.
    pub fn switch(&mut self, name: &str, default: bool) -> Result<bool, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_switch(&value)
                .ok_or_else(|| format!("--{name} {value}: expected 1 or 0 (true or false)")),
        }
    }

    pub fn duration(&mut self, name: &str, default: &str) -> Result<Duration, String> {
        let value = self.string(name, default);
        parse_duration(&value).map_err(|why| format!("--{name} {value}: {why}"))
    }

    /// Errors for any flag the scenario did not ask about.
    pub fn finish(&self) -> Result<(), String> {
        match self.flags.iter().find(|(_, _, used)| !used) {
            Some((name, _, _)) => Err(format!(
                "unknown flag --{name} for this scenario (see --help)"
            )),
            None => Ok(()),
        }
    }
}

/// `1`, `true`, `yes`, `on` are on; `0`, `false`, `no`, `off` are off.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `300ms`, `2.5s`, `10s`, `1m`, `1h`: a number and a unit.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a number with a unit, like 10s".to_string())?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err("unit must be us, ms, s, m or h".into()),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err("not a duration".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_are_read_once_and_checked() {
        let mut a = args(&["--rooms", "3", "--rate=2.5", "--duration", "1s"]);
        assert_eq!(a.get("rooms", 1usize), Ok(3));
        assert_eq!(a.get("rate", 1.0f64), Ok(2.5));
        assert_eq!(a.get("members", 7usize), Ok(7));
        assert!(a.finish().is_err());
        assert_eq!(a.duration("duration", "5s"), Ok(Duration::from_secs(1)));
        assert!(a.finish().is_ok());
        assert!(args(&["--rooms", "x"]).get("rooms", 1usize).is_err());
        assert!(Args::parse(&["--rooms".to_string()]).is_err());
    }

    #[test]
    fn switches_take_numbers_and_words() {
        assert_eq!(parse_switch("1"), Some(true));
        assert_eq!(parse_switch("TRUE"), Some(true));
        assert_eq!(parse_switch("off"), Some(false));
        assert_eq!(parse_switch("0"), Some(false));
        assert_eq!(parse_switch("2"), None);
        let mut a = args(&["--presence", "1"]);
        assert_eq!(a.switch("presence", false), Ok(true));
        assert_eq!(a.switch("other", true), Ok(true));
        assert!(
            args(&["--presence=maybe"])
                .switch("presence", false)
                .is_err()
        );
    }

    #[test]
    fn repeatable_flags_keep_every_value_in_order() {
        let mut a = args(&[
            "--url",
            "http://a:1",
            "--pid",
            "7",
            "--url=http://b:2",
            "--pid",
            "9",
        ]);
        assert_eq!(a.all("url"), ["http://a:1", "http://b:2"]);
        assert_eq!(a.all_of::<u32>("pid"), Ok(vec![7, 9]));
        assert!(a.finish().is_ok());
        assert!(args(&["--pid", "x"]).all_of::<u32>("pid").is_err());
        assert!(args(&[]).all("url").is_empty());
    }
}
