//! Passive health (outlier detection): a target whose requests keep failing
//! (connect errors, resets, 5xx) is ejected for `base_ejection` times the
//! number of its ejections so far, but never more than `max_ejected_percent`
//! of the upstream at once, so detection cannot empty an upstream.

use std::time::Duration;

use super::target::Target;

/// A compiled `outlier_detection` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failures in a row that eject a target.
    pub consecutive_failures: u32,
    /// Length of the first ejection.
    pub base_ejection: Duration,
    /// Most targets ejected at once, in percent of the upstream.
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    /// Records the outcome of one exchange with `targets[index]`; ejects the
    /// target when its failure streak reaches the limit and the cap allows.
    /// Returns the ejection length when it ejected.
    pub fn record(&self, targets: &[Target], index: usize, failed: bool) -> Option<Duration> {
        let target = targets.get(index)?;
        if !failed {
            target.state.record_success();
            return None;
        }
        if target.state.record_failure() < self.consecutive_failures || target.state.ejected() {
            return None;
        }
        let ejected_now = targets.iter().filter(|t| t.state.ejected()).count();
        // 50% of 4 is 2: the cap is a floor of the share, but one target may
        // always be ejected from an upstream of two or more.
        let cap = (targets.len() * self.max_ejected_percent as usize / 100)
            .max(usize::from(targets.len() > 1));
        if ejected_now >= cap {
            return None;
        }
        Some(target.state.eject(self.base_ejection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::TargetState;
    use std::sync::Arc;

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                address: Arc::from(format!("127.0.0.1:{}", 9000 + i)),
                name: None,
                authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: 1,
                state: Arc::new(TargetState::default()),
            })
            .collect()
    }

    fn detection() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject() {
        let t = targets(4);
        let d = detection();
        assert_eq!(d.record(&t, 0, true), None);
        assert_eq!(d.record(&t, 0, true), None);
        assert_eq!(d.record(&t, 0, true), Some(Duration::from_secs(30)));
        assert!(t[0].state.ejected());
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let t = targets(4);
        let d = detection();
        d.record(&t, 1, true);
        d.record(&t, 1, true);
        d.record(&t, 1, false);
        assert_eq!(d.record(&t, 1, true), None);
        assert!(!t[1].state.ejected());
    }

    #[test]
    fn never_more_than_max_ejected_percent() {
        let t = targets(4);
        let d = detection();
        for i in 0..4 {
            for _ in 0..3 {
                d.record(&t, i, true);
            }
        }
        assert_eq!(t.iter().filter(|x| x.state.ejected()).count(), 2);
    }
}
