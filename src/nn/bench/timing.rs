//! The one way `runner bench` times: [`alternate`] runs the variants being compared in turn
//! within each repetition, so that a busy host slows them alike, and [`median`] reduces each
//! variant's repetitions to one number.

use std::time::Instant;

/// Seconds per call of `run(v)` for each variant `v` in `0..variants`, the variants taking
/// turns call by call: `warmup` untimed rounds, then `reps` timed ones. `settle(v)` runs
/// before each call, outside the clock (a device synchronisation, a switch of ops); what
/// `run` returns is dropped after the clock stops.
pub fn alternate<T, E>(
    variants: usize,
    warmup: usize,
    reps: usize,
    mut settle: impl FnMut(usize) -> Result<(), E>,
    mut run: impl FnMut(usize) -> Result<T, E>,
) -> Result<Vec<Vec<f64>>, E> {
    let mut times = vec![Vec::with_capacity(reps); variants];
    for round in 0..warmup + reps {
        for (v, t) in times.iter_mut().enumerate() {
            settle(v)?;
            let t0 = Instant::now();
            let out = run(v)?;
            let s = t0.elapsed().as_secs_f64();
            drop(out);
            if round >= warmup {
                t.push(s);
            }
        }
    }
    Ok(times)
}

/// The median of `v` (sorted in place): the middle value, or the mean of the two middle ones
/// for an even count; NaN for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[m],
        _ => (v[m - 1] + v[m]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_value_or_the_mean_of_the_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn variants_alternate_within_each_round_and_warm_up_is_not_kept() {
        let mut order = Vec::new();
        let mut settled = Vec::new();
        let times = alternate::<(), ()>(
            2,
            1,
            3,
            |v| {
                settled.push(v);
                Ok(())
            },
            |v| {
                order.push(v);
                Ok(())
            },
        )
        .unwrap_or_default();
        assert_eq!(order, [0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(settled, order);
        assert_eq!(times.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3]);
    }

    #[test]
    fn an_error_stops_the_timing() {
        let r = alternate(1, 0, 5, |_| Ok(()), |_| Err::<(), _>("broke"));
        assert_eq!(r, Err("broke"));
    }
}
