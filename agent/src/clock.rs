//! Kernel timestamps (ns since boot, CLOCK_BOOTTIME) to wall clock.

pub use spyglass_proto::time::Timestamp;

/// Converts boot-relative nanoseconds to RFC 3339 UTC.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - boottime, in ns.
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// Current CLOCK_BOOTTIME in ns.
    pub fn boot_now() -> u64 {
        now_ns(libc::CLOCK_BOOTTIME) as u64
    }

    /// Boot-relative ns -> wall clock.
    pub fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp((i128::from(boot_ns) + self.offset_ns) as i64)
    }

    /// Wall clock now.
    pub fn now() -> Timestamp {
        Timestamp(now_ns(libc::CLOCK_REALTIME) as i64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
