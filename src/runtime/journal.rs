//! What a workflow took from outside that could differ between two runs of
//! the same code: clock readings, random bytes, the answers of the
//! embedder's host functions, and the `wasnap.patched` markers.
//!
//! Every workflow keeps a journal. While it runs normally the journal
//! records each such input in order ([`Inputs`]); the executor stores what
//! one run recorded with the version that run committed. While it replays,
//! the journal hands the recorded inputs back instead of asking the clock
//! or the random generator, so that the same code, or new code that should
//! behave the same, sees exactly what the original run saw. A replayed run
//! that asks for something else than what was recorded has *diverged*: the
//! journal keeps the first such divergence, the wasnap imports trap as soon
//! as one is known, and the run reports it.
//!
//! Arguments, environment and replies are not journalled: the instance
//! keeps its arguments and environment, and each version its reply.
//!
//! Recording costs one uncontended lock and a push per clock reading or
//! random draw; code that reads neither pays nothing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, bail};
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock, MonotonicClock, WallClock};

use crate::snapshot::GlobalValue;

/// One input a run took from outside, in the order it took them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A reading of the wall clock (time since the Unix epoch).
    WallClock(Duration),
    /// The wall clock's resolution.
    WallResolution(Duration),
    /// A reading of the monotonic clock, in nanoseconds.
    MonotonicClock(u64),
    /// The monotonic clock's resolution, in nanoseconds.
    MonotonicResolution(u64),
    /// Bytes drawn from the random generator (consecutive draws are kept
    /// as one run of bytes).
    Random(Vec<u8>),
    /// `wasnap.patched(id)` answered true: the code took the patched path.
    Patched(String),
    /// An embedder's host function answered.
    Host {
        /// The import, as `module.name`.
        import: String,
        /// What it did.
        answer: HostAnswer,
    },
}

/// What one call of an embedder's host function did, so that a replay can
/// do it again without calling it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAnswer {
    /// The values it returned (raw bits; references as null).
    pub values: Vec<GlobalValue>,
    /// The bytes it wrote into memory 0, as `(address, bytes)`.
    pub writes: Vec<(u32, Vec<u8>)>,
    /// The value it suspended the workflow with, if it did.
    pub suspended: Option<Vec<u8>>,
}

impl Input {
    /// What the input is, as a report names it.
    pub fn describe(&self) -> String {
        match self {
            Input::WallClock(_) => "reads the wall clock".into(),
            Input::WallResolution(_) => "asks the wall clock's resolution".into(),
            Input::MonotonicClock(_) => "reads the monotonic clock".into(),
            Input::MonotonicResolution(_) => "asks the monotonic clock's resolution".into(),
            Input::Random(_) => "draws random bytes".into(),
            Input::Patched(id) => format!("takes patch {id:?}"),
            Input::Host { import, .. } => format!("calls {import}"),
        }
    }

    /// Whether `self` is the same kind of input as `other`.
    fn same_kind(&self, other: &Input) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The inputs of one run (or handler call), in order. Its bytes
/// ([`Inputs::encode`]) are what the store keeps with a version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The inputs, in the order the run took them.
    pub entries: Vec<Input>,
}

/// Layout of the encoded form, first byte of a non-empty encoding.
const LAYOUT: u8 = 1;

mod tag {
    pub const WALL: u8 = 1;
    pub const WALL_RESOLUTION: u8 = 2;
    pub const MONOTONIC: u8 = 3;
    pub const MONOTONIC_RESOLUTION: u8 = 4;
    pub const RANDOM: u8 = 5;
    pub const PATCHED: u8 = 6;
    pub const HOST: u8 = 7;
}

impl Inputs {
    /// The compact byte form: nothing at all for a run that took no input
    /// (most runs), else a layout byte and one tagged entry per input, with
    /// LEB128 numbers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.entries.is_empty() {
            return out;
        }
        out.push(LAYOUT);
        for entry in &self.entries {
            match entry {
                Input::WallClock(d) | Input::WallResolution(d) => {
                    out.push(match entry {
                        Input::WallClock(_) => tag::WALL,
                        _ => tag::WALL_RESOLUTION,
                    });
                    leb(&mut out, d.as_secs());
                    leb(&mut out, d.subsec_nanos() as u64);
                }
                Input::MonotonicClock(n) => {
                    out.push(tag::MONOTONIC);
                    leb(&mut out, *n);
                }
                Input::MonotonicResolution(n) => {
                    out.push(tag::MONOTONIC_RESOLUTION);
                    leb(&mut out, *n);
                }
                Input::Random(bytes) => {
                    out.push(tag::RANDOM);
                    bytes_to(&mut out, bytes);
                }
                Input::Patched(id) => {
                    out.push(tag::PATCHED);
                    bytes_to(&mut out, id.as_bytes());
                }
                Input::Host { import, answer } => {
                    out.push(tag::HOST);
                    bytes_to(&mut out, import.as_bytes());
                    leb(&mut out, answer.values.len() as u64);
                    for value in &answer.values {
                        value_to(&mut out, value);
                    }
                    leb(&mut out, answer.writes.len() as u64);
                    for (address, bytes) in &answer.writes {
                        leb(&mut out, *address as u64);
                        bytes_to(&mut out, bytes);
                    }
                    match &answer.suspended {
                        None => out.push(0),
                        Some(value) => {
                            out.push(1);
                            bytes_to(&mut out, value);
                        }
                    }
                }
            }
        }
        out
    }

    /// The inputs [`Inputs::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Inputs> {
        let mut entries = Vec::new();
        if bytes.is_empty() {
            return Ok(Inputs { entries });
        }
        let mut r = Cursor { bytes, at: 0 };
        let layout = r.byte()?;
        if layout != LAYOUT {
            bail!("recorded inputs have layout {layout}, newer than this wasnap reads ({LAYOUT})");
        }
        while r.at < bytes.len() {
            let entry = match r.byte()? {
                tag::WALL => Input::WallClock(r.duration()?),
                tag::WALL_RESOLUTION => Input::WallResolution(r.duration()?),
                tag::MONOTONIC => Input::MonotonicClock(r.leb()?),
                tag::MONOTONIC_RESOLUTION => Input::MonotonicResolution(r.leb()?),
                tag::RANDOM => Input::Random(r.bytes()?.to_vec()),
                tag::PATCHED => Input::Patched(r.string()?),
                tag::HOST => {
                    let import = r.string()?;
                    let values = (0..r.count()?).map(|_| r.value()).collect::<Result<_>>()?;
                    let writes = (0..r.count()?)
                        .map(|_| Ok((r.leb()? as u32, r.bytes()?.to_vec())))
                        .collect::<Result<_>>()?;
                    let suspended = match r.byte()? {
                        0 => None,
                        _ => Some(r.bytes()?.to_vec()),
                    };
                    Input::Host {
                        import,
                        answer: HostAnswer {
                            values,
                            writes,
                            suspended,
                        },
                    }
                }
                other => bail!("recorded inputs hold an unknown entry (tag {other})"),
            };
            entries.push(entry);
        }
        Ok(Inputs { entries })
    }
}

fn leb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn bytes_to(out: &mut Vec<u8>, bytes: &[u8]) {
    leb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn value_to(out: &mut Vec<u8>, value: &GlobalValue) {
    match *value {
        GlobalValue::I32(v) => {
            out.push(0);
            leb(out, v as u64);
        }
        GlobalValue::I64(v) => {
            out.push(1);
            leb(out, v);
        }
        GlobalValue::F32(v) => {
            out.push(2);
            leb(out, v as u64);
        }
        GlobalValue::F64(v) => {
            out.push(3);
            leb(out, v);
        }
        GlobalValue::V128(v) => {
            out.push(4);
            out.extend_from_slice(&v.to_le_bytes());
        }
        GlobalValue::NullRef | GlobalValue::FuncRef(_) => out.push(5),
    }
}

/// Reads what the functions above wrote, checking every length.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8> {
        let Some(&b) = self.bytes.get(self.at) else {
            bail!("recorded inputs are truncated");
        };
        self.at += 1;
        Ok(b)
    }

    fn leb(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        bail!("recorded inputs hold a number that is too long")
    }

    fn count(&mut self) -> Result<usize> {
        let n = self.leb()? as usize;
        if n > self.bytes.len() - self.at {
            bail!("recorded inputs are truncated");
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.count()?;
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn duration(&mut self) -> Result<Duration> {
        let secs = self.leb()?;
        let nanos = self.leb()?;
        if nanos >= 1_000_000_000 {
            bail!("recorded inputs hold a clock reading with {nanos} nanoseconds");
        }
        Ok(Duration::new(secs, nanos as u32))
    }

    fn value(&mut self) -> Result<GlobalValue> {
        Ok(match self.byte()? {
            0 => GlobalValue::I32(self.leb()? as u32),
            1 => GlobalValue::I64(self.leb()?),
            2 => GlobalValue::F32(self.leb()? as u32),
            3 => GlobalValue::F64(self.leb()?),
            4 => {
                let mut bits = [0u8; 16];
                for b in &mut bits {
                    *b = self.byte()?;
                }
                GlobalValue::V128(u128::from_le_bytes(bits))
            }
            5 => GlobalValue::NullRef,
            other => bail!("recorded inputs hold a value of unknown type {other}"),
        })
    }
}

/// Where a replayed run first asked for something else than the recorded
/// run took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// What the recorded (old) code did there.
    pub old: String,
    /// What the replayed (new) code does there.
    pub new: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the new code {} where the old code {}",
            self.new, self.old
        )
    }
}

impl std::error::Error for Mismatch {}

/// A workflow's journal, shared with the clocks and the random generator
/// that WASI was given.
pub(crate) type SharedJournal = Arc<Mutex<Journal>>;

/// Records a run's inputs, or hands back recorded ones.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// Recorded so far, or still to hand back.
    entries: Vec<Input>,
    /// Replaying: the next entry to hand back, and how many bytes of it
    /// (a run of random bytes) are used already.
    replay: Option<(usize, usize)>,
    /// The first divergence of a replay.
    divergence: Option<Mismatch>,
    /// Neither recording nor replaying: inputs pass through.
    off: bool,
}

impl Journal {
    /// A journal that records (`None`) or replays `inputs`; with `off`, one
    /// that does neither.
    pub fn new(replaying: Option<Inputs>, off: bool) -> SharedJournal {
        let mut journal = Journal {
            off,
            ..Journal::default()
        };
        if let Some(inputs) = replaying {
            journal.replay(inputs);
        }
        Arc::new(Mutex::new(journal))
    }

    pub fn lock(shared: &SharedJournal) -> MutexGuard<'_, Journal> {
        shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the journal hands back recorded inputs.
    pub fn is_replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// From now on, hand back `inputs`.
    pub fn replay(&mut self, inputs: Inputs) {
        self.off = false;
        self.entries = inputs.entries;
        self.replay = Some((0, 0));
        self.divergence = None;
    }

    /// From now on, record (what was left of a replay is dropped).
    pub fn record(&mut self) {
        self.entries.clear();
        self.replay = None;
    }

    /// What was recorded since the last take; recording goes on.
    pub fn take(&mut self) -> Inputs {
        if self.replay.is_some() {
            return Inputs::default();
        }
        Inputs {
            entries: std::mem::take(&mut self.entries),
        }
    }

    /// The first divergence of the replay, if one happened.
    pub fn divergence(&self) -> Option<&Mismatch> {
        self.divergence.as_ref()
    }

    /// After a replayed run: fails with the first divergence, or when the
    /// run left recorded inputs unused (the old code took more).
    pub fn check_replayed(&self) -> std::result::Result<(), Mismatch> {
        if let Some(divergence) = &self.divergence {
            return Err(divergence.clone());
        }
        if let Some((next, used)) = self.replay
            && let Some(entry) = self.entries.get(next)
        {
            let left = self.entries.len() - next;
            let what = match entry {
                Input::Random(_) if used > 0 => "draws more random bytes".to_string(),
                entry => entry.describe(),
            };
            return Err(Mismatch {
                new: "takes no more inputs in this step".into(),
                old: format!("then {what} (input {}; {left} left unused)", next + 1),
            });
        }
        Ok(())
    }

    fn diverge(&mut self, new: String, old: String) {
        if self.divergence.is_none() {
            self.divergence = Some(Mismatch { old, new });
        }
    }

    /// The next recorded input, which must be of the same kind as
    /// `wanted`; `None` (and a divergence) otherwise.
    fn next_like(&mut self, wanted: &Input) -> Option<Input> {
        let (next, used) = self.replay.expect("replaying");
        match self.entries.get(next) {
            Some(entry) if entry.same_kind(wanted) && used == 0 => {
                self.replay = Some((next + 1, 0));
                Some(entry.clone())
            }
            Some(entry) => {
                let old = format!("{} (input {})", entry.describe(), next + 1);
                self.diverge(wanted.describe(), old);
                None
            }
            None => {
                let old = "took no more inputs in this step".to_string();
                self.diverge(wanted.describe(), old);
                None
            }
        }
    }

    /// An input a clock gives: recorded (`live` asks the clock) or handed back.
    fn clock<T>(&mut self, live: impl FnOnce() -> Input, unwrap: impl Fn(&Input) -> T) -> T {
        if self.replay.is_none() {
            let input = live();
            let value = unwrap(&input);
            if !self.off {
                self.entries.push(input);
            }
            return value;
        }
        // A stand-in of the right kind, to name what was asked for.
        let wanted = live();
        match self.next_like(&wanted) {
            Some(recorded) => unwrap(&recorded),
            None => unwrap(&wanted),
        }
    }

    /// Random bytes: drawn with `draw` and recorded, or handed back.
    fn random(&mut self, dst: &mut [u8], draw: impl FnOnce(&mut [u8])) {
        let Some((next, used)) = self.replay else {
            draw(dst);
            if self.off {
                return;
            }
            match self.entries.last_mut() {
                Some(Input::Random(bytes)) => bytes.extend_from_slice(dst),
                _ => self.entries.push(Input::Random(dst.to_vec())),
            }
            return;
        };
        if let Some(Input::Random(bytes)) = self.entries.get(next)
            && bytes.len() - used >= dst.len()
        {
            dst.copy_from_slice(&bytes[used..used + dst.len()]);
            let used = used + dst.len();
            self.replay = Some(if used == bytes.len() {
                (next + 1, 0)
            } else {
                (next, used)
            });
            return;
        }
        dst.fill(0);
        let old = match self.entries.get(next) {
            Some(Input::Random(_)) => format!("drew fewer random bytes here (input {})", next + 1),
            Some(entry) => format!("{} (input {})", entry.describe(), next + 1),
            None => "took no more inputs in this step".to_string(),
        };
        self.diverge("draws random bytes".into(), old);
    }

    /// `wasnap.patched(id)`: true and recorded when running normally; when
    /// replaying, true only if the original run took this patch here.
    pub fn patched(&mut self, id: &str) -> bool {
        let Some((next, used)) = self.replay else {
            if !self.off {
                self.entries.push(Input::Patched(id.to_string()));
            }
            return true;
        };
        match self.entries.get(next) {
            Some(Input::Patched(recorded)) if recorded == id && used == 0 => {
                self.replay = Some((next + 1, 0));
                true
            }
            _ => false,
        }
    }

    /// Records what an embedder's host function did.
    pub fn record_host(&mut self, import: &str, answer: HostAnswer) {
        if self.replay.is_none() && !self.off {
            self.entries.push(Input::Host {
                import: import.to_string(),
                answer,
            });
        }
    }

    /// The recorded answer of an embedder's host function, when replaying
    /// (`None` with a divergence when the run called something else).
    pub fn replayed_host(&mut self, import: &str) -> Option<HostAnswer> {
        let wanted = Input::Host {
            import: import.to_string(),
            answer: HostAnswer {
                values: Vec::new(),
                writes: Vec::new(),
                suspended: None,
            },
        };
        match self.next_like(&wanted)? {
            Input::Host {
                import: recorded,
                answer,
            } if recorded == import => Some(answer),
            Input::Host {
                import: recorded, ..
            } => {
                let (next, _) = self.replay.expect("replaying");
                self.diverge(
                    format!("calls {import}"),
                    format!("calls {recorded} (input {next})"),
                );
                None
            }
            _ => None,
        }
    }
}

/// The wall clock WASI reads, through the journal.
pub(crate) struct JournalledWallClock {
    pub journal: SharedJournal,
    pub clock: WallClock,
}

impl HostWallClock for JournalledWallClock {
    fn resolution(&self) -> Duration {
        Journal::lock(&self.journal).clock(
            || Input::WallResolution(self.clock.resolution()),
            |input| match input {
                Input::WallResolution(d) => *d,
                _ => unreachable!("same kind"),
            },
        )
    }

    fn now(&self) -> Duration {
        Journal::lock(&self.journal).clock(
            || Input::WallClock(self.clock.now()),
            |input| match input {
                Input::WallClock(d) => *d,
                _ => unreachable!("same kind"),
            },
        )
    }
}

/// The monotonic clock WASI reads, through the journal.
pub(crate) struct JournalledMonotonicClock {
    pub journal: SharedJournal,
    pub clock: MonotonicClock,
}

impl HostMonotonicClock for JournalledMonotonicClock {
    fn resolution(&self) -> u64 {
        Journal::lock(&self.journal).clock(
            || Input::MonotonicResolution(self.clock.resolution()),
            |input| match input {
                Input::MonotonicResolution(n) => *n,
                _ => unreachable!("same kind"),
            },
        )
    }

    fn now(&self) -> u64 {
        Journal::lock(&self.journal).clock(
            || Input::MonotonicClock(self.clock.now()),
            |input| match input {
                Input::MonotonicClock(n) => *n,
                _ => unreachable!("same kind"),
            },
        )
    }
}

/// The random generator WASI draws from, through the journal.
pub(crate) struct JournalledRandom {
    pub journal: SharedJournal,
    pub random: Box<dyn rand_core::Rng + Send>,
}

impl rand_core::TryRng for JournalledRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let random = &mut self.random;
        Journal::lock(&self.journal).random(dst, |dst| random.fill_bytes(dst));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_and_an_empty_run_is_no_bytes() {
        assert!(Inputs::default().encode().is_empty());
        let inputs = Inputs {
            entries: vec![
                Input::WallClock(Duration::new(1_700_000_000, 123)),
                Input::MonotonicClock(42),
                Input::Random(vec![1, 2, 3]),
                Input::Patched("greeting-v2".into()),
                Input::Host {
                    import: "machines.wait".into(),
                    answer: HostAnswer {
                        values: vec![GlobalValue::I32(7), GlobalValue::F64(1)],
                        writes: vec![(16, b"ok".to_vec())],
                        suspended: Some(b"waiting".to_vec()),
                    },
                },
            ],
        };
        let bytes = inputs.encode();
        assert_eq!(Inputs::decode(&bytes).unwrap(), inputs);
        assert!(Inputs::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_replay_hands_back_what_was_recorded_and_names_the_first_divergence() {
        let shared = Journal::new(None, false);
        let mut journal = Journal::lock(&shared);
        let mut drawn = [0u8; 6];
        journal.random(&mut drawn[..2], |d| d.fill(7));
        journal.random(&mut drawn[2..], |d| d.fill(9));
        assert!(journal.patched("v2"));
        let recorded = journal.take();
        assert_eq!(recorded.entries.len(), 2, "consecutive draws are one entry");

        journal.replay(recorded.clone());
        let mut again = [0u8; 6];
        journal.random(&mut again, |_| panic!("a replay draws nothing new"));
        assert_eq!(again, [7, 7, 9, 9, 9, 9]);
        assert!(!journal.patched("other"));
        assert!(journal.patched("v2"));
        journal.check_replayed().unwrap();

        journal.replay(recorded);
        let clock = || Input::WallClock(Duration::ZERO);
        journal.clock(clock, |_| ());
        let divergence = journal.check_replayed().unwrap_err().to_string();
        assert_eq!(
            journal.divergence().map(|m| m.old.as_str()),
            Some("draws random bytes (input 1)")
        );
        assert!(
            divergence.contains("reads the wall clock where the old code draws random bytes"),
            "{divergence}"
        );
    }
}
