use super::api::{eta_s, series, thin, trial_ids, MAX_COMPARE};
use super::escape;
use crate::store::MetricRow;

#[test]
fn thinning_keeps_the_ends_and_every_runs_extremes() {
    // A slow ramp with one spike up and one down: both must survive thinning to 10 points.
    let mut points: Vec<(i64, f64)> = (0..1000).map(|i| (i, i as f64 / 1000.0)).collect();
    points[333].1 = 5.0;
    points[777].1 = -5.0;
    let thinned = thin(&points, 10, |p| p.1);
    assert!(thinned.len() <= 10, "{}", thinned.len());
    assert_eq!(thinned.first(), Some(&(0, 0.0)));
    assert_eq!(thinned.last(), Some(&(999, 0.999)));
    assert!(thinned.contains(&(333, 5.0)), "{thinned:?}");
    assert!(thinned.contains(&(777, -5.0)), "{thinned:?}");
    assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0), "in x order: {thinned:?}");
    // Short series come back as they are.
    assert_eq!(thin(&points[..7], 10, |p| p.1), points[..7].to_vec());
}

#[test]
fn every_series_is_thinned_on_its_own_in_step_order() {
    let mut rows = Vec::new();
    for step in (0..3000).rev() {
        for (split, name) in [("train", "error"), ("val", "error"), ("train", "lr")] {
            rows.push(MetricRow {
                step,
                epoch: 0.0,
                split: split.into(),
                name: name.into(),
                value: step as f64,
            });
        }
    }
    let s = series(&rows, 100);
    let names: Vec<(&str, &str)> = s.iter().map(|s| (s.split.as_str(), s.name.as_str())).collect();
    assert_eq!(names, [("train", "error"), ("train", "lr"), ("val", "error")]);
    for s in &s {
        assert!(s.steps.len() <= 100 && s.steps.len() == s.values.len());
        assert_eq!((s.steps[0], *s.steps.last().unwrap()), (0, 2999));
        assert!(s.steps.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn time_left_only_for_running_trials_with_a_pace() {
    // 1000 of 4000 steps in 100 s: 3000 more at 0.1 s each.
    assert_eq!(eta_s("running", Some(1000), Some(4000), Some(100.0)), Some(300.0));
    assert_eq!(eta_s("done", Some(4000), Some(4000), Some(400.0)), None);
    assert_eq!(eta_s("running", Some(0), Some(4000), Some(1.0)), None);
    assert_eq!(eta_s("running", Some(10), None, Some(1.0)), None);
    // Past the total (a total lowered by an edited grid): nothing left, not a negative time.
    assert_eq!(eta_s("running", Some(50), Some(40), Some(5.0)), Some(0.0));
}

#[test]
fn compare_lists_are_ids_sorted_once_and_bounded() {
    assert_eq!(trial_ids("7, 3,7,12"), Ok(vec![3, 7, 12]));
    assert!(trial_ids("").unwrap_err().contains("trials=3,7,12"));
    assert!(trial_ids("3,x").unwrap_err().contains("`x` is not a trial id"));
    let many: Vec<String> = (0..=MAX_COMPARE).map(|i| i.to_string()).collect();
    assert!(trial_ids(&many.join(",")).unwrap_err().contains("at most"));
}

#[test]
fn escaping_leaves_no_markup() {
    assert_eq!(
        escape(r#"<script>alert("x & 'y'")</script>"#),
        "&lt;script&gt;alert(&quot;x &amp; &#39;y&#39;&quot;)&lt;/script&gt;"
    );
    assert_eq!(escape("depth-110 · é"), "depth-110 · é");
}
