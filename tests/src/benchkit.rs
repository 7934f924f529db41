//! What the bench binaries (and the soak tests' figures) share: their child processes and
//! commands, and the CPU time of processes.

use std::process::{Child, Command, Stdio};

/// Clock ticks per second (the unit of /proc's CPU times).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of process `pid` (all its threads) so far, in clock ticks; 0 once it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // After the command's closing parenthesis, field 3 (the state) comes first; utime and stime
    // are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// A child process killed (whole process group) on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` in a process group of its own (`what` names it in a panic).
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc { child }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion, panicking with its stderr unless it succeeds; its stdout then
/// stderr.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_ticks_count_this_process() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(super::cpu_ticks(std::process::id()) > 0, "100 ms of CPU shows in utime");
        assert_eq!(super::cpu_ticks(u32::MAX), 0, "no such process");
    }
}
