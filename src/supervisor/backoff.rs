//! Exponential restart backoff, reset once a run stays up for `max`, with a floor for a
//! program that keeps exiting at once.
//!
//! `initial: 0s` means "restart at once", and it does for the first [`BURST`] runs in a row
//! that end within [`FLOOR`]. From then on every delay is at least [`FLOOR`], the delay
//! systemd's `RestartSec=` defaults to: a program that can never stay up costs at most ten
//! starts a second instead of a hot loop (`true` under `restart: always` was restarted 430
//! times a second), and is shown backing off meanwhile. The burst is systemd's default
//! `StartLimitBurst=5`; unlike systemd (and supervisord's `startretries`), procwatch does not
//! give up on the program: it keeps restarting it, no faster than the floor. A run that lasts
//! `FLOOR` or longer ends the burst.

use std::time::Duration;

use crate::config::BackoffConfig;

/// The least delay once a program has exited at once [`BURST`] times in a row.
pub(crate) const FLOOR: Duration = Duration::from_millis(100);
/// How many runs in a row may end within [`FLOOR`] and still be restarted without the floor.
pub(crate) const BURST: u32 = 5;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    /// Consecutive short runs so far.
    short_runs: u32,
    /// Consecutive runs that ended within `FLOOR`.
    instant_runs: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            short_runs: 0,
            instant_runs: 0,
        }
    }

    /// The delay before the next start, given how long the run that just ended lasted.
    /// initial, 2×initial, 4×initial ... capped at max; a run that lasted `max` or longer
    /// counts as healthy and starts the sequence again. After `BURST` runs in a row that
    /// lasted less than `FLOOR`, the delay is at least `FLOOR`.
    pub(crate) fn next_delay(&mut self, run_time: Duration) -> Duration {
        if run_time >= self.config.max && !self.config.max.is_zero() {
            self.short_runs = 0;
        }
        if run_time >= FLOOR {
            self.instant_runs = 0;
        } else {
            self.instant_runs = self.instant_runs.saturating_add(1);
        }
        let factor = 1u32.checked_shl(self.short_runs.min(31)).unwrap_or(u32::MAX);
        let delay = self
            .config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.short_runs = self.short_runs.saturating_add(1);
        if self.instant_runs > BURST {
            delay.max(FLOOR)
        } else {
            delay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(BackoffConfig {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        })
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn doubles_up_to_max() {
        let mut b = backoff(100, 1000);
        let quick = Duration::from_millis(1);
        let got: Vec<u128> = (0..8).map(|_| ms(b.next_delay(quick))).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    }

    #[test]
    fn resets_after_a_run_that_lasted_max() {
        let mut b = backoff(100, 1000);
        let quick = Duration::from_millis(1);
        b.next_delay(quick);
        b.next_delay(quick);
        assert_eq!(b.next_delay(quick), Duration::from_millis(400));
        // Just short of max: no reset.
        assert_eq!(b.next_delay(Duration::from_millis(999)), Duration::from_millis(800));
        assert_eq!(b.next_delay(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(b.next_delay(quick), Duration::from_millis(200));
    }

    #[test]
    fn zero_initial_restarts_at_once_for_a_burst_then_no_faster_than_the_floor() {
        let mut b = backoff(0, 0);
        let got: Vec<u128> = (0..8).map(|_| ms(b.next_delay(Duration::ZERO))).collect();
        assert_eq!(got, [0, 0, 0, 0, 0, 100, 100, 100]);
        // A run that stays up for the floor ends the burst: at once again.
        assert_eq!(b.next_delay(FLOOR), Duration::ZERO);
        let got: Vec<u128> = (0..6).map(|_| ms(b.next_delay(Duration::from_millis(99)))).collect();
        assert_eq!(got, [0, 0, 0, 0, 0, 100]);
    }

    #[test]
    fn the_floor_never_lowers_a_longer_delay() {
        let mut b = backoff(10, 1000);
        let got: Vec<u128> = (0..8).map(|_| ms(b.next_delay(Duration::ZERO))).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 320, 640, 1000]);
        let mut b = backoff(10, 10);
        let got: Vec<u128> = (0..7).map(|_| ms(b.next_delay(Duration::ZERO))).collect();
        assert_eq!(got, [10, 10, 10, 10, 10, 100, 100]);
    }

    #[test]
    fn a_huge_max_never_overflows() {
        let mut b = backoff(1, u64::MAX / 2);
        let got: Vec<u128> = (0..100).map(|_| ms(b.next_delay(Duration::from_secs(1)))).collect();
        // 1, 2, 4 ... ms, doubling until the factor saturates at 2^31.
        for (i, &d) in got.iter().enumerate() {
            assert_eq!(d, 1u128 << i.min(31), "delay {i}");
        }
    }
}
