//! Child processes in their own process group, stopped by pid: SIGTERM to the group, then
//! SIGKILL after a grace period. Nothing is ever found or stopped by name.

use std::io;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// A child process that leads its own process group (group id = its pid), so stopping the
/// group also stops every process it started (vLLM's engine and workers).
#[derive(Debug)]
pub(crate) struct GroupChild {
    child: Child,
    pid: u32,
    stopped: bool,
}

/// Sends `sig` to the process group `pgid`. True when at least one process got it.
fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return false };
    if pgid <= 1 {
        return false; // never signal "every process" (0, -1) or init
    }
    // SAFETY: kill(2) with a negative pid signals that process group only; it has no
    // memory-safety preconditions.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// True while the process group `pgid` has a running member (zombies waiting to be reaped
/// do not count). Reads /proc; without it, any member counts.
pub(crate) fn group_alive(pgid: u32) -> bool {
    if !signal_group(pgid, 0) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // "pid (comm) STATE PPID PGRP ...": fields after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("Z");
        let pgrp = f.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && !state.starts_with(['Z', 'X'])
    })
}

/// True while a process with this pid exists and has not exited (a zombie waiting to be
/// reaped counts as gone).
#[cfg(test)]
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if p <= 1 || unsafe { libc::kill(p, 0) } != 0 {
        return false;
    }
    // /proc/PID/stat: "pid (comm) STATE ..."; comm may hold spaces or parentheses.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group.
    pub(crate) fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.process_group(0).spawn()?;
        let pid = child.id();
        Ok(Self { child, pid, stopped: false })
    }

    /// The leader's pid (= the process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the leader has exited (reaping it), without waiting.
    pub(crate) fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM to the group (the first half of [`GroupChild::stop`]).
    pub(crate) fn terminate(&mut self) {
        if !self.stopped {
            signal_group(self.pid, libc::SIGTERM);
        }
    }

    /// Waits up to `grace` for the group to exit after [`GroupChild::terminate`], then sends
    /// SIGKILL to what is left and reaps the leader.
    pub(crate) fn finish_stop(&mut self, deadline: Instant) {
        if self.stopped {
            return;
        }
        loop {
            let leader_done = self.try_wait().is_some();
            if leader_done && !group_alive(self.pid) {
                break;
            }
            if Instant::now() >= deadline {
                signal_group(self.pid, libc::SIGKILL);
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stopped = true;
    }

    /// Stops the whole group: SIGTERM, up to `grace` to exit, then SIGKILL. Blocks.
    pub(crate) fn stop(&mut self, grace: Duration) {
        self.terminate();
        self.finish_stop(Instant::now() + grace);
    }

    /// True once stopped by [`GroupChild::stop`].
    #[cfg(test)]
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_kills_the_group_including_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        // A leader that ignores SIGTERM and starts a grandchild: only SIGKILL to the group
        // ends both.
        let script = format!("trap '' TERM; sleep 1000 & echo $! > {}; wait", pidfile.display());
        let mut c = GroupChild::spawn(Command::new("bash").arg("-c").arg(&script)).unwrap();
        let pid = c.pid();
        let grandchild = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile)
                && let Ok(p) = s.trim().parse::<u32>()
            {
                break p;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(pid_alive(pid) && pid_alive(grandchild));
        c.stop(Duration::from_millis(300));
        assert!(c.is_stopped());
        assert!(!pid_alive(pid), "the leader {pid} is gone");
        // The grandchild was reparented; once killed, init reaps it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(grandchild) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!pid_alive(grandchild), "the grandchild {grandchild} is gone");
        assert!(!group_alive(pid));
    }

    #[test]
    fn never_signals_pid_zero_or_one() {
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
        assert!(!pid_alive(0));
    }
}
