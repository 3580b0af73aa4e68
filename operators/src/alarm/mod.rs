//! The alarm state machine of one (rule, target): OK → WARNING → CRITICAL and back, with
//! consecutive-window requirements, hysteresis and NODATA.
//!
//! [`AlarmState::step`] is fed one closed window at a time, in window order: `Some(value)` when
//! the target reported in that window, `None` when it did not. It returns a [`Transition`] only
//! when the level changes. The state is a pure function of the sequence of inputs, so replaying
//! the same windows gives the same transitions.
//!
//! # Semantics
//!
//! - **Breach.** A value breaches a threshold `t` when `value <comparison> t` holds: `Gt` is
//!   `value > t`, `Ge` is `value >= t`, `Lt` is `value < t`, `Le` is `value <= t`, and `Eq`/`Ne`
//!   are exact float (in)equality. A NaN value or a NaN threshold never breaches (not even for
//!   `Ne`). An absent threshold is never breached.
//! - **Streaks.** `warn_streak` (resp. `crit_streak`) counts the consecutive windows whose value
//!   breaches `warn` (resp. `crit`). A window with a value that does not breach (NaN included)
//!   resets that streak to 0. A window without a value (`None`) neither counts toward nor resets
//!   the streaks. Streaks saturate at `u32::MAX`.
//! - **Raising.** After updating the streaks, the *raised* level is CRITICAL if `crit` is set and
//!   `crit_streak >= crit_windows`, else WARNING if `warn` is set and `warn_streak >=
//!   warn_windows`, else OK. Window counts of 0 behave as 1.
//! - **Holding (hysteresis).** The *held* level is what the current level keeps given the value:
//!   - from CRITICAL: CRITICAL if `crit` is set and the value breaches `crit_reset` (or `crit` when
//!     `crit_reset` is absent); otherwise WARNING if `warn` is set and the value breaches
//!     `warn_reset` (or `warn`); otherwise OK;
//!   - from WARNING: WARNING if `warn` is set and the value breaches `warn_reset` (or `warn`);
//!     otherwise OK;
//!   - from OK: OK.
//!
//!   So a level falls only when the value crosses back past its reset value, and a fall from
//!   CRITICAL lands on WARNING when the value still keeps the warning (it needs no warn streak).
//!   Values between a threshold and its reset keep the current level: no flapping.
//! - **New level** = the higher of the raised and the held level. Raising wins over holding, so
//!   a reset placed on the wrong side of its threshold (e.g. `>` with `crit = 90`,
//!   `crit_reset = 95`) behaves as if the reset were the threshold for values that still breach
//!   the threshold with a long enough streak.
//! - **NODATA.** `None` windows are counted (`silent`, reset by any value). When `silent` reaches
//!   `nodata_after` (0 behaves as 1) while the level is WARNING or CRITICAL, the level becomes
//!   NODATA, once, with a transition whose `value` and `threshold` are `None`. An OK target that
//!   stops reporting raises nothing (agent health covers silence), and NODATA stays NODATA while
//!   the silence lasts.
//! - **Leaving NODATA.** The next value starts from scratch: the state is reset to OK with zero
//!   streaks, then the value is applied as above, and a single transition from NODATA to the
//!   resulting level is emitted (NODATA → OK, or NODATA → WARNING/CRITICAL when the window
//!   requirement is met by this one window, i.e. when it is 1).
//!
//! # Transitions
//!
//! A [`Transition`] is emitted on every change of level and only then (`previous != level`),
//! including the recovery to OK. Its `value` is the window's value (`None` for NODATA). Its
//! `threshold` is the one crossed:
//! - raising to CRITICAL: `crit`; raising to WARNING: `warn`;
//! - falling from CRITICAL (to WARNING or OK): `crit_reset`, or `crit` when absent;
//! - falling from WARNING to OK: `warn_reset`, or `warn` when absent;
//! - NODATA → OK and entering NODATA: `None`.

use std::fmt;
use std::str::FromStr;

pub mod eval;

pub use eval::{AlarmInput, Evaluator, LiveRules, Rule, RuleAggregate, RuleSet, RuleTarget, Watch};

/// How a value is compared with a threshold: the value breaches when `value <op> threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Comparison {
    pub const ALL: [Comparison; 6] =
        [Comparison::Gt, Comparison::Ge, Comparison::Lt, Comparison::Le, Comparison::Eq, Comparison::Ne];

    /// The operator as written in a rule: `>`, `>=`, `<`, `<=`, `==` or `!=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }

    /// Whether `value <op> threshold` holds. False whenever either side is NaN.
    #[inline]
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        if value.is_nan() || threshold.is_nan() {
            return false;
        }
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
        }
    }
}

/// A comparison operator that is not one of `>`, `>=`, `<`, `<=`, `==`, `!=`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown comparison `{0}`: expected one of >, >=, <, <=, ==, !=")]
pub struct ParseComparisonError(pub String);

impl FromStr for Comparison {
    type Err = ParseComparisonError;

    /// Parses an operator; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            ">" => Ok(Comparison::Gt),
            ">=" => Ok(Comparison::Ge),
            "<" => Ok(Comparison::Lt),
            "<=" => Ok(Comparison::Le),
            "==" => Ok(Comparison::Eq),
            "!=" => Ok(Comparison::Ne),
            _ => Err(ParseComparisonError(s.to_string())),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written and read as the operator itself, as in a job spec: `comparison = ">="`.
impl serde::Serialize for Comparison {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Comparison {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| serde::de::Error::custom(r#"expected one of ">", ">=", "<", "<=", "==", "!=""#))
    }
}

/// The level of one (rule, target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Level {
    #[default]
    Ok,
    Warning,
    Critical,
    NoData,
}

impl Level {
    /// Parses `OK`, `WARNING`, `CRITICAL` or `NODATA`.
    pub fn parse(text: &str) -> Option<Level> {
        [Level::Ok, Level::Warning, Level::Critical, Level::NoData].into_iter().find(|l| l.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::NoData => "NODATA",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds of one rule; see the [module documentation](self) for their meaning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RuleLevels {
    pub comparison: Comparison,
    pub warn: Option<f64>,
    pub crit: Option<f64>,
    /// Consecutive breaching windows before WARNING is raised (0 behaves as 1).
    pub warn_windows: u32,
    /// Consecutive breaching windows before CRITICAL is raised (0 behaves as 1).
    pub crit_windows: u32,
    /// WARNING falls only when the value no longer breaches this (default: `warn`).
    pub warn_reset: Option<f64>,
    /// CRITICAL falls only when the value no longer breaches this (default: `crit`).
    pub crit_reset: Option<f64>,
    /// Consecutive windows without a value before a raised level becomes NODATA (0 behaves as 1).
    pub nodata_after: u32,
}

impl RuleLevels {
    /// Whether `value` breaches `threshold`; an absent threshold is never breached.
    #[inline]
    fn breaches(&self, value: f64, threshold: Option<f64>) -> bool {
        threshold.is_some_and(|t| self.comparison.breaches(value, t))
    }

    /// The threshold whose breach keeps WARNING.
    #[inline]
    fn warn_hold(&self) -> Option<f64> {
        self.warn.and(self.warn_reset.or(self.warn))
    }

    /// The threshold whose breach keeps CRITICAL.
    #[inline]
    fn crit_hold(&self) -> Option<f64> {
        self.crit.and(self.crit_reset.or(self.crit))
    }
}

/// A change of level of one (rule, target).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    pub level: Level,
    pub previous: Level,
    /// The window's value; `None` when entering NODATA.
    pub value: Option<f64>,
    /// The threshold crossed (see the [module documentation](self)).
    pub threshold: Option<f64>,
}

/// The alarm state of one (rule, target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AlarmState {
    level: Level,
    warn_streak: u32,
    crit_streak: u32,
    /// Consecutive windows without a value.
    silent: u32,
}

/// Rank of the value levels, for "the higher of two levels".
#[inline]
fn rank(level: Level) -> u8 {
    match level {
        Level::Ok | Level::NoData => 0,
        Level::Warning => 1,
        Level::Critical => 2,
    }
}

impl AlarmState {
    /// OK, with no streak and no silence.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state carried over from an earlier run, of which only the level is known: no streak,
    /// no silence.
    pub fn restored(level: Level) -> Self {
        AlarmState { level, ..Self::default() }
    }

    /// Whether the state behaves exactly like a new one: OK, with no streak. (Silence does not
    /// matter at OK: it raises nothing, and the next value resets it.)
    pub fn is_fresh(&self) -> bool {
        self.level == Level::Ok && self.warn_streak == 0 && self.crit_streak == 0
    }

    /// Whether more silent windows can change nothing: the state is NODATA, or it is OK, or the
    /// silence already reached `nodata_after`.
    fn silence_settled(&self, rules: &RuleLevels) -> bool {
        matches!(self.level, Level::Ok | Level::NoData) || self.silent >= rules.nodata_after.max(1)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// One closed window for this (rule, target): `Some(value)` if the target reported, `None`
    /// if not. Returns the transition if the level changed.
    pub fn step(&mut self, rules: &RuleLevels, value: Option<f64>) -> Option<Transition> {
        let previous = self.level;
        let Some(value) = value else {
            self.silent = self.silent.saturating_add(1);
            if self.silent >= rules.nodata_after.max(1) && matches!(previous, Level::Warning | Level::Critical) {
                self.level = Level::NoData;
                return Some(Transition { level: Level::NoData, previous, value: None, threshold: None });
            }
            return None;
        };
        self.silent = 0;
        if previous == Level::NoData {
            *self = Self::new();
        }
        let current = self.level;

        self.warn_streak = if rules.breaches(value, rules.warn) { self.warn_streak.saturating_add(1) } else { 0 };
        self.crit_streak = if rules.breaches(value, rules.crit) { self.crit_streak.saturating_add(1) } else { 0 };

        let raised = if rules.crit.is_some() && self.crit_streak >= rules.crit_windows.max(1) {
            Level::Critical
        } else if rules.warn.is_some() && self.warn_streak >= rules.warn_windows.max(1) {
            Level::Warning
        } else {
            Level::Ok
        };
        let keeps_crit = || rules.breaches(value, rules.crit_hold());
        let keeps_warn = || rules.breaches(value, rules.warn_hold());
        let held = match current {
            Level::Critical if keeps_crit() => Level::Critical,
            Level::Critical | Level::Warning if keeps_warn() => Level::Warning,
            _ => Level::Ok,
        };
        let level = if rank(raised) >= rank(held) { raised } else { held };
        self.level = level;
        if level == previous {
            return None;
        }

        let threshold = if rank(level) > rank(current) {
            match level {
                Level::Critical => rules.crit,
                Level::Warning => rules.warn,
                _ => None,
            }
        } else {
            match current {
                Level::Critical => rules.crit_hold(),
                Level::Warning => rules.warn_hold(),
                // From NODATA to OK: nothing was crossed.
                _ => None,
            }
        };
        Some(Transition { level, previous, value: Some(value), threshold })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    fn t(previous: Level, level: Level, value: Option<f64>, threshold: Option<f64>) -> Transition {
        Transition { level, previous, value, threshold }
    }

    fn run(rules: &RuleLevels, values: &[Option<f64>]) -> Vec<Transition> {
        let mut state = AlarmState::new();
        values.iter().filter_map(|v| state.step(rules, *v)).collect()
    }

    fn cpu_rule() -> RuleLevels {
        RuleLevels {
            comparison: Comparison::Gt,
            warn: Some(80.0),
            crit: Some(90.0),
            warn_windows: 2,
            crit_windows: 2,
            warn_reset: Some(75.0),
            crit_reset: Some(85.0),
            nodata_after: 3,
        }
    }

    #[test]
    fn scripted_cpu_crosses_oscillates_and_recovers() {
        let rules = cpu_rule();
        let values = [
            70.0, 82.0, // one breaching window: not enough
            83.0, // second: WARNING
            85.0, 91.0, // first crit window: not enough
            93.0, // second: CRITICAL
            88.0, 95.0, 86.0, 92.0, 87.0, 94.0, // around 90 inside the band 85..: stays CRITICAL
            84.0, // below crit_reset, above warn_reset: WARNING
            91.0, 79.0, 82.0, 77.0, 84.0, 76.0, 81.0, // around 80 inside 75..: stays WARNING
            74.0, // below warn_reset: OK
            78.0, 81.0, 70.0, // one breaching window among values: stays OK
        ];
        let values: Vec<_> = values.into_iter().map(Some).collect();
        assert_eq!(
            run(&rules, &values),
            vec![
                t(Level::Ok, Level::Warning, Some(83.0), Some(80.0)),
                t(Level::Warning, Level::Critical, Some(93.0), Some(90.0)),
                t(Level::Critical, Level::Warning, Some(84.0), Some(85.0)),
                t(Level::Warning, Level::Ok, Some(74.0), Some(75.0)),
            ]
        );
    }

    #[test]
    fn critical_falls_straight_to_ok_below_both_resets() {
        let rules = cpu_rule();
        let values: Vec<_> = [95.0, 96.0, 60.0].into_iter().map(Some).collect();
        assert_eq!(
            run(&rules, &values),
            vec![
                t(Level::Ok, Level::Critical, Some(96.0), Some(90.0)),
                t(Level::Critical, Level::Ok, Some(60.0), Some(85.0)),
            ]
        );
    }

    #[test]
    fn silence_gives_nodata_once_and_a_value_restarts_from_scratch() {
        let rules = cpu_rule();
        let values = [Some(95.0), Some(96.0), None, None, None, None, None, Some(97.0), Some(98.0)];
        assert_eq!(
            run(&rules, &values),
            vec![
                t(Level::Ok, Level::Critical, Some(96.0), Some(90.0)),
                t(Level::Critical, Level::NoData, None, None),
                // Streaks restart: one crit window is not enough with crit_windows = 2.
                t(Level::NoData, Level::Ok, Some(97.0), None),
                t(Level::Ok, Level::Critical, Some(98.0), Some(90.0)),
            ]
        );
        // With one-window requirements, the first value after NODATA gives the level directly.
        let one = RuleLevels { warn_windows: 1, crit_windows: 1, ..rules };
        let values = [Some(82.0), None, None, None, Some(91.0)];
        assert_eq!(
            run(&one, &values),
            vec![
                t(Level::Ok, Level::Warning, Some(82.0), Some(80.0)),
                t(Level::Warning, Level::NoData, None, None),
                t(Level::NoData, Level::Critical, Some(91.0), Some(90.0)),
            ]
        );
    }

    #[test]
    fn silent_ok_target_raises_nothing_and_none_keeps_streaks() {
        let rules = cpu_rule();
        assert_eq!(run(&rules, &[Some(50.0), None, None, None, None, None]), vec![]);
        // A gap shorter than nodata_after neither breaks nor extends the warn streak.
        let values = [Some(82.0), None, None, Some(83.0)];
        assert_eq!(run(&rules, &values), vec![t(Level::Ok, Level::Warning, Some(83.0), Some(80.0))]);
    }

    #[test]
    fn lower_is_worse_with_lt() {
        let rules = RuleLevels {
            comparison: Comparison::Lt,
            warn: Some(20.0),
            crit: Some(10.0),
            warn_windows: 1,
            crit_windows: 1,
            warn_reset: Some(25.0),
            crit_reset: None,
            nodata_after: 1,
        };
        let values: Vec<_> = [30.0, 15.0, 5.0, 9.0, 10.0, 24.0, 26.0].into_iter().map(Some).collect();
        assert_eq!(
            run(&rules, &values),
            vec![
                t(Level::Ok, Level::Warning, Some(15.0), Some(20.0)),
                t(Level::Warning, Level::Critical, Some(5.0), Some(10.0)),
                t(Level::Critical, Level::Warning, Some(10.0), Some(10.0)),
                t(Level::Warning, Level::Ok, Some(26.0), Some(25.0)),
            ]
        );
    }

    #[test]
    fn comparisons_parse_and_display() {
        for (text, cmp) in
            [(">", Comparison::Gt), (">=", Comparison::Ge), ("<", Comparison::Lt), ("<=", Comparison::Le)]
                .into_iter()
                .chain([("==", Comparison::Eq), ("!=", Comparison::Ne)])
        {
            assert_eq!(text.parse::<Comparison>(), Ok(cmp));
            assert_eq!(cmp.to_string(), text);
        }
        assert_eq!(" >= ".parse::<Comparison>(), Ok(Comparison::Ge));
        for bad in ["", "=", "=>", "gt", "<>", "> ="] {
            let err = bad.parse::<Comparison>().unwrap_err();
            assert_eq!(err, ParseComparisonError(bad.to_string()));
            assert!(err.to_string().contains("expected one of >, >=, <, <=, ==, !="), "{err}");
        }
        assert_eq!(
            [Level::Ok, Level::Warning, Level::Critical, Level::NoData].map(|l| l.to_string()),
            ["OK", "WARNING", "CRITICAL", "NODATA"]
        );
    }

    #[test]
    fn nan_never_breaches() {
        for cmp in Comparison::ALL {
            assert!(!cmp.breaches(f64::NAN, 1.0), "{cmp}");
            assert!(!cmp.breaches(1.0, f64::NAN), "{cmp}");
            assert!(!cmp.breaches(f64::NAN, f64::NAN), "{cmp}");
        }
        assert!(Comparison::Eq.breaches(0.1 + 0.2, 0.1 + 0.2));
        assert!(!Comparison::Eq.breaches(0.1 + 0.2, 0.3));
        assert!(Comparison::Ne.breaches(0.1 + 0.2, 0.3));
        // A NaN window is a value that breaches nothing: it breaks streaks and lets a level fall.
        let rules = RuleLevels { crit_reset: None, ..cpu_rule() };
        let values = [Some(82.0), Some(f64::NAN), Some(83.0), Some(84.0), Some(f64::NAN)];
        let got = run(&rules, &values);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].previous, got[0].level, got[0].value), (Level::Ok, Level::Warning, Some(84.0)));
        assert_eq!((got[1].previous, got[1].level), (Level::Warning, Level::Ok));
        assert!(got[1].value.unwrap().is_nan());
        // A NaN threshold makes the rule inert.
        let inert = RuleLevels { warn: Some(f64::NAN), crit: Some(f64::NAN), ..cpu_rule() };
        assert_eq!(run(&inert, &[Some(1e9); 10]), vec![]);
    }

    /// A reference machine written differently: it keeps the values seen since the last reset and
    /// recomputes streaks from that history, compares through `partial_cmp`, and picks the next
    /// level from an explicit table.
    struct Reference {
        rules: RuleLevels,
        level: Level,
        history: Vec<f64>,
        silent_run: u64,
    }

    fn holds(cmp: Comparison, value: f64, threshold: Option<f64>) -> bool {
        let Some(threshold) = threshold else { return false };
        let ord = value.partial_cmp(&threshold);
        match cmp {
            Comparison::Gt => ord == Some(Ordering::Greater),
            Comparison::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
            Comparison::Lt => ord == Some(Ordering::Less),
            Comparison::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
            Comparison::Eq => ord == Some(Ordering::Equal),
            Comparison::Ne => matches!(ord, Some(Ordering::Less | Ordering::Greater)),
        }
    }

    impl Reference {
        fn trailing(&self, threshold: Option<f64>) -> u64 {
            self.history.iter().rev().take_while(|v| holds(self.rules.comparison, **v, threshold)).count() as u64
        }

        fn step(&mut self, value: Option<f64>) -> Option<Transition> {
            let r = self.rules;
            let from = self.level;
            let Some(x) = value else {
                self.silent_run += 1;
                let silent_enough = self.silent_run >= u64::from(r.nodata_after.max(1));
                return match from {
                    Level::Warning | Level::Critical if silent_enough => {
                        self.level = Level::NoData;
                        Some(t(from, Level::NoData, None, None))
                    }
                    _ => None,
                };
            };
            self.silent_run = 0;
            if from == Level::NoData {
                self.history.clear();
            }
            self.history.push(x);
            let crit_due = r.crit.is_some() && self.trailing(r.crit) >= u64::from(r.crit_windows.max(1));
            let warn_due = r.warn.is_some() && self.trailing(r.warn) >= u64::from(r.warn_windows.max(1));
            let crit_kept = r.crit.is_some() && holds(r.comparison, x, r.crit_reset.or(r.crit));
            let warn_kept = r.warn.is_some() && holds(r.comparison, x, r.warn_reset.or(r.warn));
            let base = if from == Level::NoData { Level::Ok } else { from };
            let to = match (base, crit_due, warn_due) {
                (_, true, _) => Level::Critical,
                (Level::Critical, false, _) if crit_kept => Level::Critical,
                (Level::Critical | Level::Warning, false, w) if w || warn_kept => Level::Warning,
                (Level::Ok, false, true) => Level::Warning,
                _ => Level::Ok,
            };
            self.level = to;
            if to == from {
                return None;
            }
            let threshold = match (from, to) {
                (Level::NoData, Level::Ok) => None,
                (_, Level::Critical) => r.crit,
                (Level::Ok | Level::NoData, Level::Warning) => r.warn,
                (Level::Critical, _) => r.crit_reset.or(r.crit),
                (Level::Warning, _) => r.warn_reset.or(r.warn),
                other => unreachable!("{other:?}"),
            };
            Some(t(from, to, Some(x), threshold))
        }
    }

    fn small() -> impl Strategy<Value = f64> {
        (0i32..10).prop_map(f64::from)
    }

    fn rules_strategy() -> impl Strategy<Value = RuleLevels> {
        (
            prop::sample::select(Comparison::ALL.to_vec()),
            prop::option::of(small()),
            prop::option::of(small()),
            1u32..5,
            1u32..5,
            prop::option::of(small()),
            prop::option::of(small()),
            1u32..5,
        )
            .prop_map(
                |(comparison, warn, crit, warn_windows, crit_windows, warn_reset, crit_reset, nodata_after)| {
                    RuleLevels {
                        comparison,
                        warn,
                        crit,
                        warn_windows,
                        crit_windows,
                        warn_reset,
                        crit_reset,
                        nodata_after,
                    }
                },
            )
    }

    fn input() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            3 => Just(None),
            12 => small().prop_map(Some),
            1 => Just(Some(f64::NAN)),
        ]
    }

    fn same(a: &[Transition], b: &[Transition]) -> bool {
        let eq = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
            (x, y) => x.is_none() && y.is_none(),
        };
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.level == y.level && x.previous == y.previous && eq(x.value, y.value) && eq(x.threshold, y.threshold)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn step_matches_reference(rules in rules_strategy(), values in prop::collection::vec(input(), 0..60)) {
            let mut state = AlarmState::new();
            let mut reference = Reference { rules, level: Level::Ok, history: Vec::new(), silent_run: 0 };
            let mut got = Vec::new();
            let mut want = Vec::new();
            for v in &values {
                got.extend(state.step(&rules, *v));
                want.extend(reference.step(*v));
                prop_assert_eq!(state.level(), reference.level);
            }
            prop_assert!(same(&got, &want), "got {:?}\nwant {:?}", got, want);
            for tr in &got {
                prop_assert_ne!(tr.level, tr.previous);
            }
            for pair in got.windows(2) {
                prop_assert_ne!(pair[0].level, pair[1].level);
                prop_assert_eq!(pair[0].level, pair[1].previous);
            }
            if let Some(first) = got.first() {
                prop_assert_eq!(first.previous, Level::Ok);
            }
        }
    }
}
