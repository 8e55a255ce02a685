//! Exponential restart backoff, reset once a run stays up for `max`.

use std::time::Duration;

use crate::config::BackoffConfig;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    /// Consecutive short runs so far.
    short_runs: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Backoff {
        Backoff { config, short_runs: 0 }
    }

    /// The delay before the next start, given how long the run that just ended lasted.
    /// initial, 2×initial, 4×initial ... capped at max; a run that lasted `max` or longer
    /// counts as healthy and starts the sequence again.
    pub(crate) fn next_delay(&mut self, run_time: Duration) -> Duration {
        if run_time >= self.config.max && !self.config.max.is_zero() {
            self.short_runs = 0;
        }
        let factor = 1u32.checked_shl(self.short_runs.min(31)).unwrap_or(u32::MAX);
        let delay = self
            .config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.short_runs = self.short_runs.saturating_add(1);
        delay
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

    #[test]
    fn doubles_up_to_max() {
        let mut b = backoff(100, 1000);
        let quick = Duration::from_millis(1);
        let got: Vec<u128> = (0..6).map(|_| b.next_delay(quick).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn resets_after_a_run_that_lasted_max() {
        let mut b = backoff(100, 1000);
        let quick = Duration::from_millis(1);
        b.next_delay(quick);
        b.next_delay(quick);
        assert_eq!(b.next_delay(quick), Duration::from_millis(400));
        assert_eq!(b.next_delay(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(b.next_delay(quick), Duration::from_millis(200));
    }

    #[test]
    fn zero_initial_never_waits_and_never_overflows() {
        let mut b = backoff(0, 0);
        for _ in 0..100 {
            assert_eq!(b.next_delay(Duration::ZERO), Duration::ZERO);
        }
        let mut b = backoff(1, u64::MAX / 2);
        for _ in 0..100 {
            b.next_delay(Duration::ZERO);
        }
    }
}
