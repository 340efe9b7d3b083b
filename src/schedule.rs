//! Weight arithmetic and lock-free weighted round-robin.
//!
//! A [`Schedule`] is the smooth weighted round-robin sequence (nginx's algorithm, as
//! HAProxy's `roundrobin` behaves) computed once when a snapshot is built. Picking is
//! one atomic increment and an array read, so the hot path takes no lock, and over any
//! window each entry's share stays within one pick of its exact weight.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::units::FULL;

/// Longest sequence we build; weights are reduced by their gcd first, so this only
/// bounds pathological inputs (e.g. co-prime instance weights over many instances).
const MAX_LEN: u64 = 1 << 16;

#[derive(Debug)]
pub struct Schedule {
    sequence: Box<[u16]>,
    cursor: AtomicUsize,
}

impl Clone for Schedule {
    fn clone(&self) -> Self {
        Schedule {
            sequence: self.sequence.clone(),
            cursor: AtomicUsize::new(self.cursor.load(Ordering::Relaxed)),
        }
    }
}

impl Schedule {
    /// Builds the schedule for `weights` (index = entry). Zero weights never get picked;
    /// all-zero weights give an empty schedule.
    pub fn new(weights: &[u32]) -> Schedule {
        Schedule {
            sequence: smooth_sequence(weights).into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next entry, or `None` when every weight is zero.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        Some(self.sequence[n % len] as usize)
    }

    /// The next entry that is `usable`: one step of the rotation, then on along the
    /// sequence from there. Scanning from a single step (not one step per candidate)
    /// matters under concurrency: other requests advance the shared cursor meanwhile,
    /// and steps of its own could land on the same unusable entry every time.
    #[inline]
    pub fn pick_usable(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.sequence[(n + k) % len] as usize)
            .find(|i| usable(*i))
    }

    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }

    /// Where the rotation is (to carry it into a rebuilt snapshot).
    pub fn position(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }

    pub fn set_position(&self, position: usize) {
        self.cursor.store(position, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.sequence.len()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Smooth weighted round-robin over `weights`, one full period long.
pub fn smooth_sequence(weights: &[u32]) -> Vec<u16> {
    let divisor = weights
        .iter()
        .filter(|w| **w > 0)
        .fold(0u64, |g, w| gcd(g, *w as u64));
    if divisor == 0 {
        return Vec::new();
    }
    let mut reduced: Vec<u64> = weights.iter().map(|w| *w as u64 / divisor).collect();
    let mut total: u64 = reduced.iter().sum();
    if total > MAX_LEN {
        // Scale down, keeping every non-zero entry at least 1; shares stay close.
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_LEN / total).max(1);
        }
        total = reduced.iter().sum();
    }
    let total = total as i64;
    let mut current = vec![0i64; reduced.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(best as u16);
    }
    sequence
}

/// Effective route weights in basis points: given weights as written,
/// routes without one share what is left in whole percents, the last taking the rest
/// (33/33/34).
///
/// Errors with the sum found when the given weights cannot make 100% (or 0%).
pub fn effective_weights(given: &[Option<u32>]) -> Result<Vec<u32>, u32> {
    let sum: u32 = given.iter().flatten().sum();
    let unweighted = given.iter().filter(|w| w.is_none()).count() as u32;
    if unweighted == 0 {
        return if sum == FULL || sum == 0 {
            Ok(given.iter().map(|w| w.unwrap_or(0)).collect())
        } else {
            Err(sum)
        };
    }
    if sum > FULL {
        return Err(sum);
    }
    let remainder = FULL - sum;
    let share = remainder / unweighted / 100 * 100;
    let mut left = unweighted;
    Ok(given
        .iter()
        .map(|w| match w {
            Some(w) => *w,
            None => {
                left -= 1;
                if left == 0 {
                    remainder - share * (unweighted - 1)
                } else {
                    share
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &Schedule, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[s.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn a_usable_entry_is_found_whatever_others_pick_meanwhile() {
        let s = Schedule::new(&[1, 1, 1]);
        for _ in 0..30 {
            // Another request's step between ours; entry 0 is down.
            let _ = s.pick();
            let _ = s.pick();
            assert!(matches!(s.pick_usable(|i| i != 0), Some(1 | 2)));
        }
        assert_eq!(s.pick_usable(|_| false), None);
        assert_eq!(Schedule::new(&[0, 0]).pick_usable(|_| true), None);
    }

    #[test]
    fn exact_split_over_a_period() {
        let s = Schedule::new(&[9000, 1000]);
        assert_eq!(s.len(), 10);
        assert_eq!(counts(&s, 2, 2000), vec![1800, 200]);
    }

    #[test]
    fn smooth_not_bursty() {
        // 2:1 gives a,b,a... never three a's in a row.
        let seq = smooth_sequence(&[2, 1]);
        assert_eq!(seq, vec![0, 1, 0]);
        let seq = smooth_sequence(&[5, 1, 1]);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn within_one_pick_of_exact_at_any_prefix() {
        let weights = [3333u32, 3333, 3334];
        let s = Schedule::new(&weights);
        let mut c = [0f64; 3];
        for n in 1..=10_000 {
            c[s.pick().unwrap()] += 1.0;
            for i in 0..3 {
                let exact = n as f64 * weights[i] as f64 / 10_000.0;
                assert!((c[i] - exact).abs() <= 1.0, "n={n} i={i}");
            }
        }
    }

    #[test]
    fn zero_weights() {
        assert!(Schedule::new(&[0, 0]).pick().is_none());
        let s = Schedule::new(&[0, 5, 0]);
        assert!((0..10).all(|_| s.pick() == Some(1)));
    }

    #[test]
    fn pathological_weights_are_bounded() {
        let weights: Vec<u32> = (0..40).map(|i| 1_000_003 + i * 7919).collect();
        let seq = smooth_sequence(&weights);
        assert!(seq.len() as u64 <= MAX_LEN + 40);
        for i in 0..40u16 {
            assert!(seq.contains(&i));
        }
    }

    #[test]
    fn remainder_shared_last_takes_rounding() {
        assert_eq!(
            effective_weights(&[None, None, None]).unwrap(),
            vec![3300, 3300, 3400]
        );
        assert_eq!(
            effective_weights(&[Some(5000), None, None]).unwrap(),
            vec![5000, 2500, 2500]
        );
        assert_eq!(
            effective_weights(&[Some(9000), Some(1000)]).unwrap(),
            vec![9000, 1000]
        );
        assert_eq!(effective_weights(&[Some(0), Some(0)]).unwrap(), vec![0, 0]);
        assert_eq!(effective_weights(&[Some(9000), Some(2000)]), Err(11000));
        assert_eq!(effective_weights(&[Some(5000), Some(4000)]), Err(9000));
        assert_eq!(
            effective_weights(&[Some(6000), Some(6000), None]),
            Err(12000)
        );
        assert_eq!(
            effective_weights(&[Some(10000), None]).unwrap(),
            vec![10000, 0]
        );
    }
}
