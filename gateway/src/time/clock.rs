//! What the kernel says about the host clock's discipline (`adjtimex`).

/// The host clock as an NTP server describes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockStatus {
    /// Whether the kernel considers the clock synchronised.
    pub synchronised: bool,
    /// A leap second is announced for the end of the day: +1, -1 or 0.
    pub leap: i8,
    /// The kernel's maximum error estimate, microseconds.
    pub max_error_us: u64,
}

/// Reads the clock's state; a failed call reads as unsynchronised.
pub fn status() -> ClockStatus {
    // SAFETY: `timex` is plain integers; all zero (modes 0) asks the
    // kernel to read, not change, the clock's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    from_adjtimex(state, tx.status, tx.maxerror)
}

/// [`status`] from `adjtimex`'s return value and fields.
pub fn from_adjtimex(
    state: libc::c_int,
    status: libc::c_int,
    maxerror: libc::c_long,
) -> ClockStatus {
    let unsync = state < 0 || state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0;
    let leap = match state {
        libc::TIME_INS => 1,
        libc::TIME_DEL => -1,
        _ => 0,
    };
    ClockStatus {
        synchronised: !unsync,
        leap,
        max_error_us: u64::try_from(maxerror).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjtimex_states() {
        let s = from_adjtimex(libc::TIME_OK, 0, 1500);
        assert!(s.synchronised && s.leap == 0 && s.max_error_us == 1500);
        assert!(!from_adjtimex(libc::TIME_ERROR, 0, 0).synchronised);
        assert!(!from_adjtimex(libc::TIME_OK, libc::STA_UNSYNC, 0).synchronised);
        assert!(!from_adjtimex(-1, 0, 0).synchronised);
        assert_eq!(from_adjtimex(libc::TIME_INS, 0, 0).leap, 1);
        assert_eq!(from_adjtimex(libc::TIME_DEL, 0, 0).leap, -1);
        // The real call works here (whatever the host's state).
        let _ = status();
    }
}
