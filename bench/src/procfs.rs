//! What /proc says about a process: resident memory and CPU time.

/// A process: `self` or a PID.
fn path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// A `Vm...:` line of /proc/PID/status, in KiB.
fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path(pid, "status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Resident set size (VmRSS), KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size (VmHWM), KiB.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// CPU time of the whole process (every thread), seconds: (user, system),
/// from utime and stime in /proc/PID/stat.
pub fn cpu_times(pid: Option<u32>) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(path(pid, "stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields
    // are counted from after the last ')'. utime and stime are fields 14
    // and 15 of the line, so 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime as f64 / ticks, stime as f64 / ticks))
}

/// User + system CPU time of the whole process (every thread), seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// True once a process has exited: no /proc entry, or a zombie not yet
/// reaped (its descriptors, listening sockets included, are closed by then).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(path(Some(pid), "stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The CPUs a process may run on (`Cpus_allowed_list` of /proc/PID/status).
pub fn allowed_cpus(pid: Option<u32>) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(path(pid, "status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(line.trim())
}

/// `0`, `0-3`, `0,2-3`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// Ticks the given CPUs spent busy (anything but idle and iowait; time the
/// hypervisor stole counts as busy) and in all, from /proc/stat.
pub fn cpus_busy(cpus: &[usize]) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (mut busy, mut total) = (0, 0);
    for cpu in cpus {
        let name = format!("cpu{cpu} ");
        let line = stat.lines().find(|line| line.starts_with(&name))?;
        let ticks: Vec<u64> = line[name.len()..]
            .split_whitespace()
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user)
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        let idle = field(3) + field(4);
        let work = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        busy += work;
        total += work + idle;
    }
    Some((busy, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        assert!(rss_kib(None).unwrap() > 0);
        assert!(peak_rss_kib(None).unwrap() >= rss_kib(None).unwrap() / 2);
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        let (user, system) = cpu_times(None).unwrap();
        assert!(user >= 0.0 && system >= 0.0);
        assert_eq!(cpu_seconds(None).map(|s| s >= user), Some(true));
        assert!(cpu_seconds(Some(std::process::id())).is_some());
        assert!(rss_kib(Some(u32::MAX)).is_none());
        assert!(!gone(std::process::id()));
        assert!(gone(u32::MAX));
        let cpus = allowed_cpus(None).unwrap();
        assert!(!cpus.is_empty());
        let (busy, total) = cpus_busy(&cpus).unwrap();
        assert!(busy <= total && total > 0);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
