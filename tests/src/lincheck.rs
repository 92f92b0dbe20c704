//! A linearizability checker for the metadata service's namespace operations (pure, no I/O).
//!
//! The model is one directory restricted to a few names: a map name → inode number. A history
//! is what concurrent clients saw: each operation with its call and return time. `check`
//! searches for a linearization (an order of the operations that respects real time and the
//! model) as Wing & Gong's algorithm does, with Porcupine's memoization of (set of linearized
//! operations, model state) so no configuration is explored twice (`checkSingle` in
//! Porcupine's checker.go).
//!
//! An operation whose call failed (timeout, lost connection: `Outcome::Unknown`) may or may not
//! have taken effect: as in Porcupine it returns at +infinity, takes effect with whatever
//! result the model allows, and need not be linearized at all (then it never took effect).
//! A create with an unknown outcome made a file whose inode number nobody was told: it may be
//! any number that a lookup saw and no acknowledged create returned, or one never seen.
//!
//! Records are read and written as one JSON object per line (`to_line`, `parse_line`).

use std::collections::{HashMap, HashSet};
use std::fmt;

/// An operation on a name of the directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create(String),
    Unlink(String),
    /// `from` ≠ `to`; replaces `to` if present.
    Rename(String, String),
    Lookup(String),
}

/// What the caller was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Create: made, with this inode number.
    Created(u64),
    /// Create: the name was taken.
    Exists,
    /// Unlink, Rename: done.
    Done,
    /// Unlink, Rename (source absent), Lookup.
    NotFound,
    /// Lookup: the name has this inode.
    Found(u64),
    /// The call failed without an answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of one client. Times are nanoseconds on one monotonic clock; `ret` is
/// `u64::MAX` when the outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub client: u32,
    pub op: Op,
    pub result: Outcome,
    pub call: u64,
    pub ret: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Linearizable,
    NotLinearizable,
    /// The search hit its step bound.
    Undecided,
    /// A record contradicts itself (returns before its call, a rename onto itself, ...).
    Invalid,
}

#[derive(Clone, Debug)]
pub struct Verdict {
    pub decision: Decision,
    pub ops: usize,
    pub unknown: usize,
    /// Model steps tried.
    pub steps: u64,
    /// Empty when linearizable; otherwise why not (one paragraph).
    pub why: String,
}

impl Verdict {
    pub fn linearizable(&self) -> bool {
        self.decision == Decision::Linearizable
    }
}

/// The default bound on model steps of [`check`].
pub const DEFAULT_MAX_STEPS: u64 = 5_000_000;

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create(n) => write!(f, "create {n}"),
            Op::Unlink(n) => write!(f, "unlink {n}"),
            Op::Rename(a, b) => write!(f, "rename {a} {b}"),
            Op::Lookup(n) => write!(f, "lookup {n}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created(i) => write!(f, "created {i}"),
            Outcome::Exists => write!(f, "exists"),
            Outcome::Done => write!(f, "done"),
            Outcome::NotFound => write!(f, "not found"),
            Outcome::Found(i) => write!(f, "found {i}"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

impl Record {
    fn validate(&self) -> Result<(), String> {
        if let Op::Rename(a, b) = &self.op {
            if a == b {
                return Err(format!("rename of {a} onto itself"));
            }
        }
        match (self.result == Outcome::Unknown, self.ret == u64::MAX) {
            (true, false) => return Err("an unknown outcome with a return time".into()),
            (false, true) => return Err(format!("outcome {} without a return time", self.result)),
            _ => {}
        }
        if self.ret < self.call {
            return Err(format!("returns ({}) before its call ({})", self.ret, self.call));
        }
        let fits = match (&self.op, self.result) {
            (_, Outcome::Unknown) => true,
            (Op::Create(_), Outcome::Created(_) | Outcome::Exists) => true,
            (Op::Unlink(_) | Op::Rename(..), Outcome::Done | Outcome::NotFound) => true,
            (Op::Lookup(_), Outcome::Found(_) | Outcome::NotFound) => true,
            _ => false,
        };
        if !fits {
            return Err(format!("{} cannot answer {}", self.op, self.result));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Line format
// ---------------------------------------------------------------------------------------------

/// One record as a JSON object (no newline), e.g.
/// `{"client":0,"op":"rename","from":"n0","to":"n1","result":"done","call":10,"ret":20}`.
pub fn to_line(r: &Record) -> String {
    let mut v = serde_json::Map::new();
    v.insert("client".into(), r.client.into());
    match &r.op {
        Op::Create(n) | Op::Unlink(n) | Op::Lookup(n) => {
            let op = match r.op {
                Op::Create(_) => "create",
                Op::Unlink(_) => "unlink",
                _ => "lookup",
            };
            v.insert("op".into(), op.into());
            v.insert("name".into(), n.as_str().into());
        }
        Op::Rename(a, b) => {
            v.insert("op".into(), "rename".into());
            v.insert("from".into(), a.as_str().into());
            v.insert("to".into(), b.as_str().into());
        }
    }
    let (res, ino) = match r.result {
        Outcome::Created(i) => ("created", Some(i)),
        Outcome::Exists => ("exists", None),
        Outcome::Done => ("done", None),
        Outcome::NotFound => ("not_found", None),
        Outcome::Found(i) => ("found", Some(i)),
        Outcome::Unknown => ("unknown", None),
    };
    v.insert("result".into(), res.into());
    if let Some(i) = ino {
        v.insert("ino".into(), i.into());
    }
    v.insert("call".into(), r.call.into());
    v.insert("ret".into(), if r.ret == u64::MAX { serde_json::Value::Null } else { r.ret.into() });
    serde_json::Value::Object(v).to_string()
}

/// Parse one line written by [`to_line`]; the error says what is wrong in a few words.
pub fn parse_line(line: &str) -> Result<Record, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let str_of = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| format!("no string \"{k}\""));
    let num_of = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| format!("no number \"{k}\""));
    let client = u32::try_from(num_of("client")?).map_err(|_| "\"client\" out of range".to_string())?;
    let op = match str_of("op")?.as_str() {
        "create" => Op::Create(str_of("name")?),
        "unlink" => Op::Unlink(str_of("name")?),
        "lookup" => Op::Lookup(str_of("name")?),
        "rename" => Op::Rename(str_of("from")?, str_of("to")?),
        o => return Err(format!("unknown op \"{o}\"")),
    };
    let result = match str_of("result")?.as_str() {
        "created" => Outcome::Created(num_of("ino")?),
        "exists" => Outcome::Exists,
        "done" => Outcome::Done,
        "not_found" => Outcome::NotFound,
        "found" => Outcome::Found(num_of("ino")?),
        "unknown" => Outcome::Unknown,
        o => return Err(format!("unknown result \"{o}\"")),
    };
    let call = num_of("call")?;
    let ret = match v.get("ret") {
        None | Some(serde_json::Value::Null) => u64::MAX,
        Some(x) => x.as_u64().ok_or("\"ret\" is not a number or null")?,
    };
    let r = Record { client, op, result, call, ret };
    r.validate()?;
    Ok(r)
}

/// Parse a whole history file's text (blank lines skipped); errors name the line.
pub fn parse_history(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What one name holds in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    Empty,
    Ino(u64),
    /// A file made by a create with an unknown outcome whose inode nobody ever saw.
    Unseen,
}

/// The map name (index) → slot.
type Map = Vec<Slot>;

/// Operations with names interned.
#[derive(Clone, Copy, Debug)]
enum IOp {
    Create(usize),
    Unlink(usize),
    Rename(usize, usize),
    Lookup(usize),
}

/// The maps `op` answered with `out` may lead to from `m` (none: illegal there). Nondeterminism
/// comes only from creates with an unknown outcome (which inode they made).
fn step_map(m: &Map, op: IOp, out: Outcome, orphans: &[u64], next: &mut Vec<Map>) {
    let with = |i: usize, s: Slot| {
        let mut n = m.clone();
        n[i] = s;
        n
    };
    let unknown = out == Outcome::Unknown;
    match op {
        IOp::Create(i) => match (m[i], out) {
            (Slot::Empty, Outcome::Created(ino)) => next.push(with(i, Slot::Ino(ino))),
            (Slot::Empty, Outcome::Unknown) => {
                // An inode number can belong to one file only.
                for &o in orphans.iter().filter(|&&o| !m.contains(&Slot::Ino(o))) {
                    next.push(with(i, Slot::Ino(o)));
                }
                next.push(with(i, Slot::Unseen));
            }
            (Slot::Ino(_) | Slot::Unseen, Outcome::Exists | Outcome::Unknown) => next.push(m.clone()),
            _ => {}
        },
        IOp::Unlink(i) => match m[i] {
            Slot::Empty if out == Outcome::NotFound || unknown => next.push(m.clone()),
            Slot::Ino(_) | Slot::Unseen if out == Outcome::Done || unknown => next.push(with(i, Slot::Empty)),
            _ => {}
        },
        IOp::Rename(a, b) => match m[a] {
            Slot::Empty if out == Outcome::NotFound || unknown => next.push(m.clone()),
            s @ (Slot::Ino(_) | Slot::Unseen) if out == Outcome::Done || unknown => {
                let mut n = m.clone();
                n[b] = s;
                n[a] = Slot::Empty;
                next.push(n);
            }
            _ => {}
        },
        IOp::Lookup(i) => match (m[i], out) {
            (Slot::Ino(x), Outcome::Found(y)) if x == y => next.push(m.clone()),
            (Slot::Empty, Outcome::NotFound) | (_, Outcome::Unknown) => next.push(m.clone()),
            _ => {}
        },
    }
}

/// A model state: the set of maps the system may be in (Porcupine's power-set construction
/// for nondeterministic models), sorted, without repeats.
type States = Vec<Map>;

fn step_states(s: &States, op: IOp, out: Outcome, orphans: &[u64]) -> Option<States> {
    let mut next = Vec::new();
    for m in s {
        step_map(m, op, out, orphans, &mut next);
    }
    next.sort();
    next.dedup();
    (!next.is_empty()).then_some(next)
}

/// SplitMix64: fixed pseudo-random numbers for the fingerprints of linearized sets.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------------------------
// The search
// ---------------------------------------------------------------------------------------------

/// [`check`] with the default step bound.
pub fn check(history: &[Record]) -> Verdict {
    check_with_limit(history, DEFAULT_MAX_STEPS)
}

/// Whether `history` is linearizable, trying at most `max_steps` model steps.
pub fn check_with_limit(history: &[Record], max_steps: u64) -> Verdict {
    let unknown = history.iter().filter(|r| r.result == Outcome::Unknown).count();
    let mut verdict = Verdict { decision: Decision::Linearizable, ops: history.len(), unknown, steps: 0, why: String::new() };
    for (k, r) in history.iter().enumerate() {
        if let Err(e) = r.validate() {
            verdict.decision = Decision::Invalid;
            verdict.why = format!("record {k} (client {}, {}): {e}", r.client, r.op);
            return verdict;
        }
    }
    // A lookup with an unknown outcome changes nothing and tells nothing: leave it out.
    let ops: Vec<&Record> = history.iter().filter(|r| !(matches!(r.op, Op::Lookup(_)) && r.result == Outcome::Unknown)).collect();
    let n = ops.len();

    // Intern the names.
    let mut names: Vec<String> = Vec::new();
    let mut idx = |s: &String| match names.iter().position(|x| x == s) {
        Some(i) => i,
        None => {
            names.push(s.clone());
            names.len() - 1
        }
    };
    let iops: Vec<IOp> = ops
        .iter()
        .map(|r| match &r.op {
            Op::Create(a) => IOp::Create(idx(a)),
            Op::Unlink(a) => IOp::Unlink(idx(a)),
            Op::Rename(a, b) => IOp::Rename(idx(a), idx(b)),
            Op::Lookup(a) => IOp::Lookup(idx(a)),
        })
        .collect();
    // Inodes seen by lookups that no acknowledged create returned: only a create with an
    // unknown outcome can have made them.
    let created: HashSet<u64> = ops.iter().filter_map(|r| if let Outcome::Created(i) = r.result { Some(i) } else { None }).collect();
    let mut orphans: Vec<u64> = ops.iter().filter_map(|r| if let Outcome::Found(i) = r.result { Some(i) } else { None }).filter(|i| !created.contains(i)).collect();
    orphans.sort_unstable();
    orphans.dedup();

    // The events, in time order; at equal times calls first (such operations overlap).
    // Entry 0 is the list's head; entry 1 + 2k is op k's call, 2 + 2k its return.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (k, r) in ops.iter().enumerate() {
        events.push((r.call, false, k));
        events.push((r.ret, true, k));
    }
    events.sort();
    let m = 2 * n + 1;
    const NIL: usize = usize::MAX;
    let (mut prev, mut next) = (vec![NIL; m], vec![NIL; m]);
    let entry_of = |(_, is_ret, k): (u64, bool, usize)| 1 + 2 * k + is_ret as usize;
    let mut last = 0;
    for &e in &events {
        let id = entry_of(e);
        next[last] = id;
        prev[id] = last;
        last = id;
    }
    let is_call = |id: usize| id % 2 == 1;
    let op_of = |id: usize| (id - 1) / 2;
    // Remove op k's call and return from the list; `unlift` undoes the latest `lift` (their
    // own links are left as they were: dancing links).
    fn lift(prev: &mut [usize], next: &mut [usize], k: usize) {
        for id in [1 + 2 * k, 2 + 2 * k] {
            let (p, nx) = (prev[id], next[id]);
            next[p] = nx;
            if nx != NIL {
                prev[nx] = p;
            }
        }
    }
    fn unlift(prev: &mut [usize], next: &mut [usize], k: usize) {
        for id in [2 + 2 * k, 1 + 2 * k] {
            let (p, nx) = (prev[id], next[id]);
            next[p] = id;
            if nx != NIL {
                prev[nx] = id;
            }
        }
    }

    // States are interned (exact); sets of linearized ops are fingerprinted: 128 bits XORed
    // per op (Zobrist), kept up to date in O(1). A collision could only prune a path, so it
    // could make a legal history look illegal (odds ~ steps² / 2¹²⁹), never the reverse: an
    // accepted history always has the linearization found.
    let zob: Vec<u128> = (0..n as u64).map(|k| ((splitmix(2 * k) as u128) << 64) | splitmix(2 * k + 1) as u128).collect();
    let mut state_ids: HashMap<States, u32> = HashMap::new();
    let mut states: Vec<States> = Vec::new();
    let mut intern = |s: States, states: &mut Vec<States>| -> u32 {
        *state_ids.entry(s.clone()).or_insert_with(|| {
            states.push(s);
            (states.len() - 1) as u32
        })
    };
    let mut seen: HashSet<(u128, u32)> = HashSet::new();

    let mut state = intern(vec![vec![Slot::Empty; names.len()]], &mut states);
    let mut fp: u128 = 0;
    let known = |k: usize| ops[k].result != Outcome::Unknown;
    let mut pending_known = (0..n).filter(|&k| known(k)).count();
    // (op, state before it).
    let mut stack: Vec<(usize, u32)> = Vec::new();
    // The deepest point reached: the linearization there, its state, and the operation
    // whose return came before it could be placed.
    let mut best: Option<(Vec<usize>, u32, usize)> = None;
    let mut entry = next[0];
    loop {
        if pending_known == 0 {
            // What is left has unknown outcomes: it never took effect.
            return verdict;
        }
        if verdict.steps >= max_steps {
            verdict.decision = Decision::Undecided;
            verdict.why = format!("gave up after {max_steps} steps; {}", explain(&ops, &names, &states, best.as_ref()));
            return verdict;
        }
        // A known return is always in the list while known ops are pending (returns at +inf
        // come last), so the walk meets it before running off the end.
        debug_assert!(entry != NIL);
        if is_call(entry) {
            let k = op_of(entry);
            verdict.steps += 1;
            let to = step_states(&states[state as usize], iops[k], ops[k].result, &orphans).map(|s| intern(s, &mut states));
            if let Some(to) = to {
                let nfp = fp ^ zob[k];
                if seen.insert((nfp, to)) {
                    stack.push((k, state));
                    state = to;
                    fp = nfp;
                    pending_known -= known(k) as usize;
                    lift(&mut prev, &mut next, k);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // An operation returned before it could be placed: undo the last choice.
            if best.as_ref().is_none_or(|(lin, _, _)| stack.len() > lin.len()) {
                best = Some((stack.iter().map(|&(k, _)| k).collect(), state, op_of(entry)));
            }
            let Some((k, before)) = stack.pop() else {
                verdict.decision = Decision::NotLinearizable;
                verdict.why = format!("not linearizable: {}", explain(&ops, &names, &states, best.as_ref()));
                return verdict;
            };
            state = before;
            fp ^= zob[k];
            pending_known += known(k) as usize;
            unlift(&mut prev, &mut next, k);
            entry = next[1 + 2 * k];
        }
    }
}

/// A short account of the deepest point the search reached.
fn explain(ops: &[&Record], names: &[String], states: &[States], best: Option<&(Vec<usize>, u32, usize)>) -> String {
    let Some((lin, state, stuck)) = best else { return "no operation could be placed".into() };
    // Times as in the history (ms), to find the records there.
    let show = |k: usize| {
        let r = ops[k];
        let ret = if r.ret == u64::MAX { "never".to_string() } else { format!("{:.3} ms", r.ret as f64 / 1e6) };
        format!("client {} {} -> {} [called {:.3} ms, returned {ret}]", r.client, r.op, r.result, r.call as f64 / 1e6)
    };
    let maps: Vec<String> = states[*state as usize]
        .iter()
        .map(|m| {
            let kv: Vec<String> = names
                .iter()
                .zip(m)
                .map(|(n, s)| match s {
                    Slot::Empty => format!("{n}=-"),
                    Slot::Ino(i) => format!("{n}={i}"),
                    Slot::Unseen => format!("{n}=(unseen)"),
                })
                .collect();
            format!("{{{}}}", kv.join(" "))
        })
        .collect();
    let tail: Vec<String> = lin.iter().rev().take(3).rev().map(|&k| show(k)).collect();
    format!(
        "the longest linearizable prefix holds {} of {} operations (lookups with unknown outcome left out; it ends: {}); state then {}; cannot place {}",
        lin.len(),
        ops.len(),
        if tail.is_empty() { "-".into() } else { tail.join("; ") },
        maps.join(" or "),
        show(*stuck)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(client: u32, op: Op, result: Outcome, call: u64, ret: u64) -> Record {
        let ret = if result == Outcome::Unknown { u64::MAX } else { ret };
        Record { client, op, result, call, ret }
    }
    fn c(n: &str) -> Op {
        Op::Create(n.into())
    }
    fn u(n: &str) -> Op {
        Op::Unlink(n.into())
    }
    fn l(n: &str) -> Op {
        Op::Lookup(n.into())
    }
    fn r(a: &str, b: &str) -> Op {
        Op::Rename(a.into(), b.into())
    }
    use Outcome::*;

    fn assert_ok(h: &[Record]) {
        let v = check(h);
        assert!(v.linearizable(), "expected linearizable: {v:?}");
    }
    fn assert_bad(h: &[Record]) {
        let v = check(h);
        assert_eq!(v.decision, Decision::NotLinearizable, "expected a violation: {v:?}");
        assert!(v.why.contains("cannot place"), "{}", v.why);
    }

    #[test]
    fn sequential_legal_history_passes() {
        let h = vec![
            rec(0, l("a"), NotFound, 0, 1),
            rec(0, c("a"), Created(10), 2, 3),
            rec(0, c("a"), Exists, 4, 5),
            rec(0, l("a"), Found(10), 6, 7),
            rec(0, u("a"), Done, 8, 9),
            rec(0, u("a"), NotFound, 10, 11),
            rec(0, l("a"), NotFound, 12, 13),
        ];
        assert_ok(&h);
        assert_eq!(check(&h).ops, 7);
    }

    #[test]
    fn sequential_wrong_answer_fails() {
        assert_bad(&[rec(0, c("a"), Created(10), 0, 1), rec(0, l("a"), Found(11), 2, 3)]);
        assert_bad(&[rec(0, u("a"), Done, 0, 1)]);
    }

    #[test]
    fn overlapping_create_and_lookups_pass() {
        // The lookups overlap the create: each may fall before or after it.
        assert_ok(&[rec(0, c("a"), Created(5), 10, 50), rec(1, l("a"), NotFound, 0, 20), rec(2, l("a"), Found(5), 15, 30), rec(1, l("a"), Found(5), 25, 60)]);
        // Two creates race: one wins, the other sees Exists; a lookup overlapping both sees the winner.
        assert_ok(&[rec(0, c("a"), Exists, 0, 100), rec(1, c("a"), Created(7), 10, 40), rec(2, l("a"), Found(7), 5, 90)]);
        // Read order must still be consistent: after a lookup saw the file, a later one (called
        // after it returned) cannot miss it.
        assert_bad(&[rec(0, c("a"), Created(5), 0, 100), rec(1, l("a"), Found(5), 10, 20), rec(2, l("a"), NotFound, 30, 40)]);
    }

    #[test]
    fn stale_read_fails() {
        // The create was acknowledged before the lookup was called.
        assert_bad(&[rec(0, c("a"), Created(5), 0, 10), rec(1, l("a"), NotFound, 11, 20)]);
        // Equal times count as overlapping, so this one is fine.
        assert_ok(&[rec(0, c("a"), Created(5), 0, 10), rec(1, l("a"), NotFound, 10, 20)]);
    }

    #[test]
    fn create_applied_twice_fails() {
        // The client's own create was applied (by a retry, say) before the answer it got.
        assert_bad(&[rec(0, l("a"), NotFound, 0, 1), rec(0, c("a"), Exists, 2, 3)]);
        // A second application after the answer: the file was unlinked, and comes back.
        assert_bad(&[rec(0, c("a"), Created(5), 0, 1), rec(0, u("a"), Done, 2, 3), rec(1, l("a"), NotFound, 4, 5), rec(1, l("a"), Found(5), 6, 7)]);
    }

    #[test]
    fn unknown_create_seen_or_not_passes() {
        // It took effect and a later lookup found it (the inode nobody was told about).
        assert_ok(&[rec(0, c("a"), Unknown, 0, 0), rec(1, l("a"), NotFound, 5, 6), rec(1, l("a"), Found(42), 10, 11), rec(0, l("a"), Found(42), 20, 21)]);
        // It never took effect.
        assert_ok(&[rec(0, c("a"), Unknown, 0, 0), rec(1, l("a"), NotFound, 5, 6), rec(0, l("a"), NotFound, 20, 21)]);
        // It may take effect late, after an acknowledged unlink.
        assert_ok(&[rec(0, c("a"), Created(1), 0, 1), rec(1, c("a"), Unknown, 2, 0), rec(0, u("a"), Done, 3, 4), rec(0, l("a"), Found(9), 5, 6)]);
        // But not before it was called.
        assert_bad(&[rec(1, l("a"), Found(9), 0, 1), rec(0, c("a"), Unknown, 2, 0)]);
        // And an unknown create cannot make a file seen with two different inodes.
        assert_bad(&[rec(0, c("a"), Unknown, 0, 0), rec(1, l("a"), Found(8), 5, 6), rec(1, l("a"), Found(9), 7, 8)]);
        // Nor an inode an acknowledged create returned for another file.
        assert_bad(&[rec(0, c("b"), Created(8), 0, 1), rec(0, c("a"), Unknown, 2, 0), rec(1, l("b"), Found(8), 5, 6), rec(1, l("a"), Found(8), 7, 8)]);
    }

    #[test]
    fn unknown_unlink_and_rename_may_or_may_not_happen() {
        assert_ok(&[rec(0, c("a"), Created(1), 0, 1), rec(0, u("a"), Unknown, 2, 0), rec(1, l("a"), Found(1), 5, 6), rec(1, l("a"), NotFound, 7, 8)]);
        assert_ok(&[rec(0, c("a"), Created(1), 0, 1), rec(0, u("a"), Unknown, 2, 0), rec(1, l("a"), Found(1), 5, 6)]);
        assert_ok(&[rec(0, c("a"), Created(1), 0, 1), rec(0, r("a", "b"), Unknown, 2, 0), rec(1, l("b"), Found(1), 5, 6), rec(1, l("a"), NotFound, 7, 8)]);
        // Once gone, an unlink cannot be undone.
        assert_bad(&[rec(0, c("a"), Created(1), 0, 1), rec(0, u("a"), Unknown, 2, 0), rec(1, l("a"), NotFound, 5, 6), rec(1, l("a"), Found(1), 7, 8)]);
    }

    #[test]
    fn rename_replaces_target_and_removes_source() {
        let base = vec![rec(0, c("a"), Created(1), 0, 1), rec(0, c("b"), Created(2), 2, 3), rec(0, r("a", "b"), Done, 4, 5)];
        let with = |extra: Vec<Record>| base.iter().cloned().chain(extra).collect::<Vec<_>>();
        assert_ok(&with(vec![rec(0, l("b"), Found(1), 6, 7), rec(0, l("a"), NotFound, 8, 9), rec(0, r("a", "b"), NotFound, 10, 11)]));
        assert_bad(&with(vec![rec(0, l("b"), Found(2), 6, 7)]));
        assert_bad(&with(vec![rec(0, l("a"), Found(1), 6, 7)]));
        assert_bad(&with(vec![rec(0, c("b"), Created(3), 6, 7)]));
        // Renaming an absent name is NotFound, and Done is illegal then.
        assert_bad(&[rec(0, r("a", "b"), Done, 0, 1)]);
        assert_ok(&[rec(0, r("a", "b"), NotFound, 0, 1)]);
    }

    #[test]
    fn bad_records_are_invalid() {
        let v = check(&[rec(0, c("a"), Created(1), 5, 4)]);
        assert_eq!(v.decision, Decision::Invalid, "{v:?}");
        let v = check(&[rec(0, l("a"), Done, 0, 1)]);
        assert_eq!(v.decision, Decision::Invalid, "{v:?}");
        let v = check(&[rec(0, r("a", "a"), Done, 0, 1)]);
        assert_eq!(v.decision, Decision::Invalid, "{v:?}");
    }

    #[test]
    fn lines_round_trip_and_bad_lines_are_refused() {
        let h = vec![
            rec(3, c("n0"), Created(77), 1, 2),
            rec(1, r("n0", "n1"), Done, 3, 4),
            rec(2, l("n1"), Found(77), 5, 6),
            rec(0, u("n2"), NotFound, 7, 8),
            rec(0, c("n2"), Exists, 9, 10),
            rec(0, c("n3"), Unknown, 11, 0),
        ];
        let text: String = h.iter().map(|r| to_line(r) + "\n").collect();
        assert_eq!(parse_history(&text).unwrap(), h);
        assert!(text.lines().last().unwrap().contains("\"ret\":null"));
        for bad in ["{", "{\"client\":0}", r#"{"client":0,"op":"create","name":"a","result":"done","call":1,"ret":2}"#, r#"{"client":0,"op":"lookup","name":"a","result":"found","call":1,"ret":2}"#] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        let e = parse_history("\n{}\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    /// A random legal history from a simulated system: `clients` clients, each op taking effect
    /// at a random point inside its interval; a few outcomes are replaced with Unknown.
    fn simulated(seed: u64, clients: usize, n: usize, unknown_pct: u32) -> Vec<Record> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let names = ["n0", "n1", "n2", "n3"];
        let mut map: HashMap<&str, u64> = HashMap::new();
        let mut next_ino = 100;
        // Per client: the time it is free again.
        let mut free = vec![0u64; clients];
        // Effects happen in time order: pick each op's effect point, then process by it.
        let mut planned = Vec::new();
        for _ in 0..n {
            let cl = rng.random_range(0..clients);
            let call = free[cl] + rng.random_range(0..5);
            let effect = call + rng.random_range(1..20);
            let ret = effect + rng.random_range(1..20);
            free[cl] = ret;
            let a = names[rng.random_range(0..4)];
            let b = names[rng.random_range(0..4)];
            let op = match rng.random_range(0..4) {
                0 => c(a),
                1 => u(a),
                2 if a != b => r(a, b),
                _ => l(a),
            };
            planned.push((effect, cl as u32, op, call, ret));
        }
        planned.sort_by_key(|p| p.0);
        let mut h = Vec::new();
        for (_, cl, op, call, ret) in planned {
            let out = match &op {
                Op::Create(a) => match map.get(a.as_str()) {
                    Some(_) => Exists,
                    None => {
                        next_ino += 1;
                        map.insert(names.iter().find(|x| **x == a).unwrap(), next_ino);
                        Created(next_ino)
                    }
                },
                Op::Unlink(a) => map.remove(a.as_str()).map(|_| Done).unwrap_or(NotFound),
                Op::Rename(a, b) => match map.remove(a.as_str()) {
                    Some(i) => {
                        map.insert(names.iter().find(|x| **x == b).unwrap(), i);
                        Done
                    }
                    None => NotFound,
                },
                Op::Lookup(a) => map.get(a.as_str()).map(|&i| Found(i)).unwrap_or(NotFound),
            };
            let out = if rng.random_range(0..100) < unknown_pct { Unknown } else { out };
            h.push(rec(cl, op, out, call, ret));
        }
        h.sort_by_key(|r| r.call);
        h
    }

    #[test]
    fn simulated_histories_pass_fast_and_a_corrupted_read_fails() {
        let mut corrupted = 0;
        for seed in 0..6 {
            // Three or four clients; 1 % or 3 % of the answers lost.
            let h = simulated(seed, 3 + (seed % 2) as usize, 3000, 1 + 2 * (seed / 3) as u32);
            let t = std::time::Instant::now();
            let v = check(&h);
            assert!(v.linearizable(), "seed {seed}: {v:?}");
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "seed {seed} took {:?} ({} steps)", t.elapsed(), v.steps);
            eprintln!("seed {seed}: {} ops, {} unknown, {} steps, {:?}", v.ops, v.unknown, v.steps, t.elapsed());
            // Turn the first lookup that found a file long after its create returned (and with
            // nothing that could remove it in between) into a miss.
            let mut bad = h.clone();
            let target = bad.iter().position(|lk| {
                let (Op::Lookup(name), Found(ino)) = (&lk.op, lk.result) else { return false };
                let Some(cr) = h.iter().find(|x| x.result == Created(ino)) else { return false };
                matches!(&cr.op, Op::Create(n) if n == name)
                    && cr.ret < lk.call
                    && !h.iter().any(|x| matches!(&x.op, Op::Unlink(a) | Op::Rename(a, _) if a == name) && x.call < lk.ret && x.ret > cr.call)
            });
            let Some(i) = target else { continue };
            bad[i].result = NotFound;
            let v = check(&bad);
            assert_eq!(v.decision, Decision::NotLinearizable, "seed {seed}: {v:?}");
            corrupted += 1;
        }
        assert!(corrupted >= 3, "only {corrupted} histories had a read to corrupt");
    }

    #[test]
    fn the_step_bound_gives_undecided() {
        let h = simulated(1, 3, 500, 1);
        let v = check_with_limit(&h, 10);
        assert_eq!(v.decision, Decision::Undecided, "{v:?}");
    }
}
