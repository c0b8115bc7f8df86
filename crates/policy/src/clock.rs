//! Wall-clock times as peers and operators read them, and the longest ban.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a ban can last: a century. Configuration and the admin API refuse
/// longer ones (a ban until lifted has no end at all); times that come from
/// elsewhere (the store, other instances) are held to it where they meet the
/// monotonic clock.
pub const MAX_BAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_WRITABLE: Duration = Duration::from_secs(253_402_300_799);

/// `t` in RFC 3339, to the second, in UTC. Never fails: a time RFC 3339 cannot
/// write (after the year 9999), or one before 1970, is written as the nearest one
/// it can.
pub fn rfc3339(t: SystemTime) -> String {
    let t = t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_WRITABLE);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Refuses a ban duration over [`MAX_BAN`], saying what to write instead.
pub fn check_ban_duration(d: Duration) -> Result<Duration, String> {
    if d > MAX_BAN {
        Err("a ban lasts at most 100 years".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_is_written_without_failing() {
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            "2027-01-15T08:00:00Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH + 9000 * year), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + 290_000_000 * year),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH - year), "1970-01-01T00:00:00Z");
        assert!(check_ban_duration(MAX_BAN).is_ok());
        assert!(check_ban_duration(MAX_BAN + Duration::from_secs(1)).is_err());
    }
}
