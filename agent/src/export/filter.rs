//! Volume control: which events leave the node (docs/config.md, "Volume
//! control"). A profile picks the kinds; a filter (in the config's
//! `[export.filter]` or a YAML file that reloads) turns kinds on or off,
//! drops events by deny and allow lists, samples and aggregates. It runs
//! after the detections, which see every event, so nothing a filter drops
//! blinds a finding; findings, losses and the agent's own events are
//! never filtered. Every event dropped is counted by reason and kind.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use spyglass_proto::time::Timestamp;

use super::aggregate::Aggregator;
use crate::{
    event::{Event, Kind},
    policy::{glob, in_scope, normal_path, path_matches, Scope},
};

/// Aggregation windows at most (`aggregate.max_keys`): each holds an
/// event, up to about 5 KiB with its arguments.
const MAX_KEYS: usize = 65_536;

/// Exec records remembered for `fold_lifetime` at most; past it the set
/// starts over (those processes' exits are then folded too).
const FOLD_MAX: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot read export filter file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("export filter file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("export filter ({source_name}): {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

/// What leaves the node before any filter (`[export] profile`,
/// `--profile`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Every event (the stream as it is).
    #[default]
    Full,
    /// Execs, listeners and their close, connects (aggregated per
    /// destination, 60 s), container lifecycle and resource samples (the
    /// fleet view's inputs), findings, losses and the agent's own events:
    /// the default for a SIEM.
    Security,
    /// Findings, losses and the agent's own events.
    Findings,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Security => "security",
            Profile::Findings => "findings",
        }
    }

    /// Whether the profile exports `kind` (before a filter's `kinds`).
    fn exports(self, kind: Kind) -> bool {
        match self {
            Profile::Full => true,
            Profile::Security => matches!(
                kind,
                Kind::Exec
                    | Kind::Listen
                    | Kind::Close
                    | Kind::Connect
                    | Kind::Container
                    | Kind::Resources
            ),
            Profile::Findings => false,
        }
    }

    /// The aggregation the profile turns on when the filter names none.
    fn aggregate(self) -> Option<AggregateSpec> {
        (self == Profile::Security).then(|| AggregateSpec {
            interval_s: 60,
            kinds: vec![Kind::Connect],
            max_keys: AggregateSpec::default().max_keys,
        })
    }
}

/// Kinds that are never filtered.
pub fn protected(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Finding | Kind::Loss | Kind::Agent | Kind::Unspecified
    )
}

/// A filter as written (`[export.filter]`, or the filter file).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSpec {
    /// Replaces `[export] profile` (and `--profile`) when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Kinds turned on or off on top of the profile (`fork: true`).
    pub kinds: BTreeMap<Kind, bool>,
    /// Events matching any entry are dropped.
    pub deny: Vec<MatchEntry>,
    /// When given, events must match an entry to leave.
    pub allow: Vec<MatchEntry>,
    /// Keep 1 in N events of a kind (`fork: 10`).
    pub sample: BTreeMap<Kind, u32>,
    /// Fold repeats into one event per window; the profile's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateSpec>,
    /// Forks are not sent, and an exit only for a process whose exec was
    /// sent: a process's life is its exec and its exit.
    pub fold_lifetime: bool,
}

/// One deny or allow entry: every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MatchEntry {
    /// Kinds it applies to (empty: every filterable kind).
    pub kinds: Vec<Kind>,
    /// Containers, as in the policy (namespaces, pod labels, images,
    /// container names); an event without container metadata matches no
    /// scope.
    pub scope: Scope,
    /// The process's executable: exact paths, prefixes ending in `/`, or
    /// patterns with `*`.
    pub executables: Vec<String>,
    /// true: host processes only; false: container processes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<bool>,
}

/// `aggregate`: which kinds, over what window.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateSpec {
    /// Window, seconds; 0 turns aggregation off.
    pub interval_s: u32,
    /// `connect` and/or `accept`.
    pub kinds: Vec<Kind>,
    /// Destinations held at once; beyond it events go unaggregated.
    pub max_keys: usize,
}

impl Default for AggregateSpec {
    fn default() -> Self {
        AggregateSpec {
            interval_s: 60,
            kinds: vec![Kind::Connect],
            max_keys: 4096,
        }
    }
}

/// Why an event was not exported (`spyglass_export_filtered_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its kind is off (profile or `kinds`).
    Kind,
    Deny,
    /// `allow` is given and it matched no entry.
    Allow,
    Sampled,
    /// Held as a repeat; counted in a later event's `aggregate`.
    Aggregated,
    /// A fork, or the exit of a process whose exec was not sent.
    Folded,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Kind,
        Reason::Deny,
        Reason::Allow,
        Reason::Sampled,
        Reason::Aggregated,
        Reason::Folded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Kind => "kind",
            Reason::Deny => "deny",
            Reason::Allow => "allow",
            Reason::Sampled => "sampled",
            Reason::Aggregated => "aggregated",
            Reason::Folded => "folded",
        }
    }
}

impl MatchEntry {
    fn check(&self, what: &str, i: usize) -> Result<(), String> {
        let at = format!("{what}[{i}]");
        if self.scope == Scope::default() && self.executables.is_empty() && self.host.is_none() {
            return Err(format!(
                "{at} has no condition (scope, executables or host); it would match every event{}",
                if self.kinds.is_empty() {
                    ""
                } else {
                    " of its kinds: turn kinds off with `kinds` instead"
                }
            ));
        }
        if self.host == Some(true) && self.scope != Scope::default() {
            return Err(format!(
                "{at}: `host: true` and a container scope cannot both hold"
            ));
        }
        check_kinds(&self.kinds, &format!("{at}.kinds"))?;
        for p in &self.executables {
            if !p.starts_with('/') {
                return Err(format!("{at}: executable `{p}` must be an absolute path"));
            }
        }
        Ok(())
    }

    /// Whether `ev` meets every condition (`deny`: judged for a deny
    /// list, where what cannot be judged does not match; in an allow list
    /// it does).
    fn matches(&self, ev: &Event, deny: bool) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&ev.kind) {
            return false;
        }
        let meta = ev.container.as_ref().and_then(|c| c.meta.as_deref());
        match self.host {
            Some(true) if ev.container.is_some() => return false,
            Some(false) if ev.container.is_none() => return false,
            _ => {}
        }
        if self.scope != Scope::default() {
            match (meta, &ev.container) {
                (Some(m), _) => {
                    if !in_scope(&self.scope, m) {
                        return false;
                    }
                }
                // A container whose metadata is unknown (not attributed):
                // neither a deny nor an allow by scope can judge it, and
                // it leaves (what defeats attribution must not also hide
                // from the SIEM).
                (None, Some(_)) => return !deny,
                (None, None) => return false,
            }
        }
        if !self.executables.is_empty() {
            let Some(p) = ev.process.as_ref() else {
                return false;
            };
            // Judged on the path with `//`, `.` and `..` undone, as the
            // policy judges it; a path the kernel cut short, or a
            // relative one, is never judged (it leaves).
            if p.exe_truncated || !p.exe.starts_with('/') {
                return !deny;
            }
            let exe = normal_path(&p.exe);
            return self.executables.iter().any(|x| exe_matches(x, &exe));
        }
        true
    }
}

/// An executable pattern: a trailing `/` is a prefix, else the exact
/// path, where a `*` stands for any run of characters within one path
/// segment (never a `/`: `*/healthcheck` is a file `healthcheck` one
/// directory deep, not anywhere).
fn exe_matches(pattern: &str, exe: &str) -> bool {
    if !pattern.contains('*') {
        return path_matches(pattern, exe);
    }
    let (mut p, mut e) = (pattern.split('/'), exe.split('/'));
    loop {
        match (p.next(), e.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if glob(a, b) => {}
            _ => return false,
        }
    }
}

fn check_kinds(kinds: &[Kind], at: &str) -> Result<(), String> {
    match kinds.iter().find(|k| protected(**k)) {
        Some(k) => Err(format!(
            "{at}: `{k}` events are never filtered (findings, losses and the agent's own events always leave)"
        )),
        None => Ok(()),
    }
}

impl FilterSpec {
    /// Read and check a filter file (YAML).
    pub fn load(path: &Path) -> Result<FilterSpec, FilterError> {
        let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
            path: path.to_owned(),
            source,
        })?;
        let spec: FilterSpec = yaml_serde::from_str(&text).map_err(|e| FilterError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        spec.check(&path.display().to_string())?;
        Ok(spec)
    }

    /// Refuse what cannot mean what it says. `source_name` names where the
    /// filter came from in the error.
    pub fn check(&self, source_name: &str) -> Result<(), FilterError> {
        self.problem().map_err(|message| FilterError::Invalid {
            source_name: source_name.to_owned(),
            message,
        })
    }

    fn problem(&self) -> Result<(), String> {
        let off: Vec<Kind> = self
            .kinds
            .iter()
            .filter(|(_, on)| !**on)
            .map(|(k, _)| *k)
            .collect();
        check_kinds(&off, "kinds")?;
        let sampled: Vec<Kind> = self.sample.keys().copied().collect();
        check_kinds(&sampled, "sample")?;
        if let Some((k, _)) = self.sample.iter().find(|(_, n)| **n == 0) {
            return Err(format!(
                "sample.{k} = 0: write N to keep 1 event in N (1 keeps all)"
            ));
        }
        for (what, list) in [("deny", &self.deny), ("allow", &self.allow)] {
            for (i, e) in list.iter().enumerate() {
                e.check(what, i)?;
            }
        }
        if let Some(a) = &self.aggregate {
            if let Some(k) = a
                .kinds
                .iter()
                .find(|k| !matches!(k, Kind::Connect | Kind::Accept))
            {
                return Err(format!(
                    "aggregate.kinds: `{k}` cannot be aggregated (connect and accept can)"
                ));
            }
            if a.interval_s > 0 && (a.kinds.is_empty() || a.max_keys == 0) {
                return Err(
                    "aggregate needs kinds (connect, accept) and max_keys above 0; \
                     interval_s: 0 turns it off"
                        .into(),
                );
            }
            if a.max_keys > MAX_KEYS {
                return Err(format!(
                    "aggregate.max_keys = {}: at most {MAX_KEYS} (each window holds an event)",
                    a.max_keys
                ));
            }
        }
        Ok(())
    }
}

/// The filter in force.
#[derive(Debug)]
pub struct ExportFilter {
    profile: Profile,
    spec: FilterSpec,
    aggregate_kinds: Vec<Kind>,
    aggregator: Option<Aggregator>,
    /// Events seen per sampled kind.
    sampled: BTreeMap<Kind, u64>,
    /// Processes (pid, start) whose exec was sent, for `fold_lifetime`.
    execs_sent: HashSet<(u32, i64)>,
    /// It lets everything through as it is (decided once, not per batch).
    pass: bool,
}

impl ExportFilter {
    /// `base`: the configured profile, which the spec's own replaces.
    pub fn new(base: Profile, spec: FilterSpec) -> Self {
        let profile = spec.profile.unwrap_or(base);
        let agg = spec
            .aggregate
            .clone()
            .or_else(|| profile.aggregate())
            .filter(|a| a.interval_s > 0);
        let pass = profile == Profile::Full && agg.is_none() && spec == FilterSpec::default();
        ExportFilter {
            pass,
            profile,
            aggregate_kinds: agg.as_ref().map(|a| a.kinds.clone()).unwrap_or_default(),
            aggregator: agg.map(|a| Aggregator::new(a.interval_s, a.max_keys)),
            spec,
            sampled: BTreeMap::new(),
            execs_sent: HashSet::new(),
        }
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Whether it lets everything through as it is (nothing to do).
    pub fn is_pass(&self) -> bool {
        self.pass
    }

    /// Windows of repeats open.
    pub fn windows(&self) -> usize {
        self.aggregator.as_ref().map_or(0, Aggregator::open)
    }

    /// Window events sent and events let through unaggregated for lack
    /// of room since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        self.aggregator
            .as_mut()
            .map_or((0, 0), Aggregator::take_counts)
    }

    /// What of `events` leaves, in order; `dropped` hears of the rest.
    pub fn apply(
        &mut self,
        events: Vec<Event>,
        dropped: &mut impl FnMut(Reason, Kind),
    ) -> Vec<Event> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let kind = ev.kind;
            match self.verdict(&ev) {
                Some(reason) => dropped(reason, kind),
                None => self.admit(ev, &mut out, dropped),
            }
        }
        out
    }

    /// Why `ev` does not leave, if it does not (before aggregation).
    fn verdict(&mut self, ev: &Event) -> Option<Reason> {
        let kind = ev.kind;
        if protected(kind) {
            return None;
        }
        let on = self
            .spec
            .kinds
            .get(&kind)
            .copied()
            .unwrap_or_else(|| self.profile.exports(kind));
        if !on {
            return Some(Reason::Kind);
        }
        if self.spec.deny.iter().any(|e| e.matches(ev, true)) {
            return Some(Reason::Deny);
        }
        if !self.spec.allow.is_empty() && !self.spec.allow.iter().any(|e| e.matches(ev, false)) {
            return Some(Reason::Allow);
        }
        if let Some(n) = self.spec.sample.get(&kind).copied().filter(|n| *n > 1) {
            let seen = self.sampled.entry(kind).or_default();
            *seen += 1;
            if !(*seen - 1).is_multiple_of(u64::from(n)) {
                return Some(Reason::Sampled);
            }
        }
        if self.spec.fold_lifetime && self.folded(ev) {
            return Some(Reason::Folded);
        }
        None
    }

    /// `fold_lifetime`: forks, and exits of processes whose exec was not
    /// sent, are folded; an exec is remembered.
    fn folded(&mut self, ev: &Event) -> bool {
        let key = ev
            .process
            .as_ref()
            .map(|p| (p.pid, p.start_time.map_or(0, |t| t.0)));
        match (ev.kind, key) {
            (Kind::Fork, _) => true,
            (Kind::Exit, Some(k)) => !self.execs_sent.remove(&k),
            (Kind::Exec, Some(k)) => {
                if self.execs_sent.len() >= FOLD_MAX {
                    self.execs_sent.clear();
                }
                self.execs_sent.insert(k);
                false
            }
            _ => false,
        }
    }

    fn admit(&mut self, ev: Event, out: &mut Vec<Event>, dropped: &mut impl FnMut(Reason, Kind)) {
        match &mut self.aggregator {
            Some(a) if self.aggregate_kinds.contains(&ev.kind) => {
                let kind = ev.kind;
                if !a.offer(ev, out) {
                    dropped(Reason::Aggregated, kind);
                }
            }
            _ => out.push(ev),
        }
    }

    /// The events of windows closed by `now` (every window with `all`:
    /// at stop, or when this filter is replaced).
    pub fn sweep(&mut self, now: Timestamp, all: bool) -> Vec<Event> {
        match &mut self.aggregator {
            Some(a) => a.sweep(now, all),
            None => Vec::new(),
        }
    }

    /// Carry what the previous filter knew of sent execs (a reload must
    /// not fold the exits of processes whose exec went out).
    pub fn inherit(&mut self, old: &mut ExportFilter) {
        self.execs_sent = std::mem::take(&mut old.execs_sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spyglass_proto::model::samples;

    fn spec(yaml: &str) -> FilterSpec {
        let s: FilterSpec = yaml_serde::from_str(yaml).unwrap();
        s.check("test").unwrap();
        s
    }

    fn refused(yaml: &str) -> String {
        let s: FilterSpec = yaml_serde::from_str(yaml).unwrap();
        s.check("test").unwrap_err().to_string()
    }

    fn accept() -> Event {
        let mut ev = samples::connect();
        ev.kind = Kind::Accept;
        ev.aggregate = None;
        ev.network.as_mut().unwrap().op = crate::event::NetOp::Accept;
        ev
    }

    /// Events whose executable path the kernel kept whole.
    fn whole(mut events: Vec<Event>) -> Vec<Event> {
        for p in events.iter_mut().filter_map(|e| e.process.as_mut()) {
            p.exe_truncated = false;
        }
        events
    }

    /// One of every kind the samples give.
    fn stream() -> Vec<Event> {
        let mut connect = samples::connect();
        connect.aggregate = None;
        vec![
            samples::exec(),
            samples::fork(),
            samples::exit(),
            samples::listen(),
            connect,
            accept(),
            samples::finding(),
            samples::loss(),
            samples::agent(),
            samples::resources(),
            samples::close(),
            samples::container_exited(),
        ]
    }

    fn run(f: &mut ExportFilter, events: Vec<Event>) -> (Vec<Kind>, Vec<(Reason, Kind)>) {
        let mut dropped = Vec::new();
        let out = f.apply(events, &mut |r, k| dropped.push((r, k)));
        (out.iter().map(|e| e.kind).collect(), dropped)
    }

    #[test]
    fn profiles_pick_kinds_and_never_drop_findings_losses_or_the_agent() {
        let mut full = ExportFilter::new(Profile::Full, FilterSpec::default());
        assert!(full.is_pass());
        assert_eq!(run(&mut full, stream()).0.len(), stream().len());

        let mut sec = ExportFilter::new(Profile::Security, FilterSpec::default());
        let (kept, dropped) = run(&mut sec, stream());
        use Kind::*;
        assert_eq!(
            kept,
            [Exec, Listen, Connect, Finding, Loss, Agent, Resources, Close, Container]
        );
        assert_eq!(
            dropped,
            [
                (Reason::Kind, Fork),
                (Reason::Kind, Exit),
                (Reason::Kind, Accept)
            ]
        );
        let mut fin = ExportFilter::new(Profile::Findings, FilterSpec::default());
        assert_eq!(run(&mut fin, stream()).0, [Finding, Loss, Agent]);
        let (_, dropped) = run(&mut fin, stream());
        assert_eq!(dropped.len(), stream().len() - 3, "each one counted");
        // a filter's profile replaces the configured one; kinds refine it
        let mut f = ExportFilter::new(
            Profile::Full,
            spec("profile: findings\nkinds: {exec: true}"),
        );
        assert_eq!(run(&mut f, stream()).0, [Exec, Finding, Loss, Agent]);
    }

    #[test]
    fn deny_and_allow_match_scope_executable_and_host() {
        let ns = samples::exec()
            .container
            .unwrap()
            .meta
            .unwrap()
            .pod
            .clone()
            .unwrap()
            .namespace;
        // deny by namespace: every container event of it, not the host's
        let mut f = ExportFilter::new(
            Profile::Full,
            spec(&format!("deny: [{{scope: {{namespaces: [{ns}]}}}}]")),
        );
        let mut host = samples::exec();
        host.container = None;
        host.host = true;
        let (kept, dropped) = run(
            &mut f,
            vec![samples::exec(), host.clone(), samples::finding()],
        );
        assert_eq!(kept, [Kind::Exec, Kind::Finding]);
        assert_eq!(dropped, [(Reason::Deny, Kind::Exec)]);
        // deny by executable, for one kind only (exact, prefix, glob
        // within segments)
        for pattern in ["/usr/bin/curl", "/usr/", "/*/bin/c*"] {
            let mut f = ExportFilter::new(
                Profile::Full,
                spec(&format!(
                    "deny: [{{executables: ['{pattern}'], kinds: [exit]}}]"
                )),
            );
            let (_, dropped) = run(&mut f, whole(stream()));
            assert_eq!(dropped, [(Reason::Deny, Kind::Exit)], "{pattern}");
        }
        // allow: only this namespace's events, and the host's by name
        let mut f = ExportFilter::new(
            Profile::Full,
            spec("allow: [{scope: {namespaces: [elsewhere]}}, {host: true, kinds: [exec]}]"),
        );
        let (kept, dropped) = run(&mut f, vec![samples::exec(), host, samples::loss()]);
        assert_eq!(kept, [Kind::Exec, Kind::Loss]);
        assert_eq!(dropped, [(Reason::Allow, Kind::Exec)]);
    }

    #[test]
    fn executables_are_judged_on_the_normal_whole_path() {
        let mut f = ExportFilter::new(
            Profile::Full,
            spec("deny: [{executables: [/usr/bin/, /*/healthcheck]}]"),
        );
        let with_exe = |exe: &str, truncated: bool| {
            let mut ev = samples::exec();
            let p = ev.process.as_mut().unwrap();
            p.exe = exe.into();
            p.exe_truncated = truncated;
            ev
        };
        for (exe, truncated, denied) in [
            ("/usr/bin/curl", false, true),
            ("/usr//bin/./curl", false, true),
            // `..` undone: not under /usr/bin/ at all
            ("/usr/bin/../../tmp/evil", false, false),
            // cut short by the kernel, or relative: not judged, it leaves
            ("/usr/bin/curl", true, false),
            ("bin/curl", false, false),
            // `*` is one segment, never a `/`
            ("/app/healthcheck", false, true),
            ("/tmp/x/healthcheck", false, false),
        ] {
            let (kept, _) = run(&mut f, vec![with_exe(exe, truncated)]);
            assert_eq!(kept.is_empty(), denied, "{exe} truncated={truncated}");
        }
    }

    #[test]
    fn a_container_without_metadata_passes_scoped_allow_and_deny_lists() {
        let mut unknown = samples::exec();
        unknown.container = Some(samples::unattributed_container());
        let mut f = ExportFilter::new(
            Profile::Full,
            spec("allow: [{scope: {namespaces: [prod]}}]\ndeny: [{scope: {namespaces: [x]}}]"),
        );
        let mut host = samples::exec();
        host.container = None;
        let (kept, dropped) = run(&mut f, vec![unknown, host]);
        assert_eq!(kept, [Kind::Exec], "the unattributed one");
        assert_eq!(dropped, [(Reason::Allow, Kind::Exec)], "the host's");
    }

    #[test]
    fn sampling_keeps_one_in_n_from_the_first() {
        let mut f = ExportFilter::new(Profile::Full, spec("sample: {fork: 3}"));
        let (kept, dropped) = run(&mut f, (0..7).map(|_| samples::fork()).collect());
        assert_eq!((kept.len(), dropped.len()), (3, 4));
        assert!(dropped.iter().all(|d| *d == (Reason::Sampled, Kind::Fork)));
    }

    #[test]
    fn folding_keeps_an_exit_only_after_its_exec_was_sent() {
        let mut f = ExportFilter::new(Profile::Full, spec("fold_lifetime: true"));
        let exec = samples::exec();
        let mut exit = samples::exit();
        exit.process = exec.process.clone();
        let mut other_exit = exit.clone();
        other_exit.process.as_mut().unwrap().pid += 1;
        let (kept, dropped) = run(
            &mut f,
            vec![samples::fork(), exec, other_exit, exit.clone(), exit],
        );
        assert_eq!(kept, [Kind::Exec, Kind::Exit]);
        assert_eq!(
            dropped,
            [
                (Reason::Folded, Kind::Fork),
                (Reason::Folded, Kind::Exit),
                (Reason::Folded, Kind::Exit)
            ],
            "a fork, an exit whose exec was not seen, a second exit"
        );
    }

    #[test]
    fn the_security_profile_aggregates_connects_per_destination() {
        let mut f = ExportFilter::new(Profile::Security, FilterSpec::default());
        let mut c = samples::connect();
        c.aggregate = None;
        let (kept, dropped) = run(&mut f, vec![c.clone(), c.clone(), c.clone()]);
        assert_eq!(kept, [Kind::Connect]);
        assert_eq!(dropped, [(Reason::Aggregated, Kind::Connect); 2]);
        let swept = f.sweep(Timestamp(i64::MAX), true);
        assert_eq!(swept.len(), 1);
        assert_eq!(
            swept[0].aggregate.as_deref().unwrap().count,
            2,
            "every repeat counted"
        );
        // aggregation off in the filter
        let mut f = ExportFilter::new(Profile::Security, spec("aggregate: {interval_s: 0}"));
        assert_eq!(run(&mut f, vec![c.clone(), c]).0.len(), 2);
    }

    #[test]
    fn a_reload_keeps_what_the_old_filter_knew_of_sent_execs() {
        let mut old = ExportFilter::new(Profile::Full, spec("fold_lifetime: true"));
        let exec = samples::exec();
        let mut exit = samples::exit();
        exit.process = exec.process.clone();
        run(&mut old, vec![exec]);
        let mut new = ExportFilter::new(Profile::Full, spec("fold_lifetime: true"));
        new.inherit(&mut old);
        assert_eq!(run(&mut new, vec![exit]).0, [Kind::Exit]);
    }

    #[test]
    fn bad_filters_are_refused_with_what_to_do() {
        for (yaml, want) in [
            ("kinds: {finding: false}", "never filtered"),
            ("kinds: {loss: false}", "never filtered"),
            ("sample: {agent: 2}", "never filtered"),
            ("deny: [{kinds: [finding], host: true}]", "never filtered"),
            ("sample: {fork: 0}", "keep 1 event in N"),
            ("deny: [{kinds: [exec]}]", "turn kinds off with `kinds`"),
            ("allow: [{}]", "has no condition"),
            ("deny: [{executables: [sleep]}]", "absolute path"),
            ("deny: [{executables: ['*/sleep']}]", "absolute path"),
            ("aggregate: {max_keys: 1000000}", "at most 65536"),
            (
                "deny: [{host: true, scope: {namespaces: [a]}}]",
                "cannot both hold",
            ),
            ("aggregate: {kinds: [exec]}", "cannot be aggregated"),
            ("aggregate: {kinds: []}", "needs kinds"),
        ] {
            let e = refused(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
        // unknown fields and kinds are parse errors
        assert!(yaml_serde::from_str::<FilterSpec>("kindz: {}").is_err());
        assert!(yaml_serde::from_str::<FilterSpec>("kinds: {forks: false}").is_err());
    }

    #[test]
    fn a_filter_file_that_cannot_be_read_or_parsed_names_the_file() {
        let dir = std::env::temp_dir().join(format!("sg-filter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.yaml");
        let e = FilterSpec::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.yaml"), "{e}");
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "deny: [[[").unwrap();
        let e = FilterSpec::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("invalid"), "{e}");
        std::fs::write(&bad, "profile: security\nkinds: {accept: true}\n").unwrap();
        let s = FilterSpec::load(&bad).unwrap();
        assert_eq!(s.profile, Some(Profile::Security));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
