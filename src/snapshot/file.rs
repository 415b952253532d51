//! The portable snapshot file format.
//!
//! A snapshot file is a zstd stream (zstd's content checksum on). Its
//! uncompressed form is:
//!
//! ```text
//! magic      8 bytes  "WASNAPSF"
//! version    u32      FORMAT_VERSION
//! flags      u32      bit 0: a module is embedded; bit 1: page contents left out
//! state               module hash, instrumenter version, globals, tables,
//!                     coroutines, host state
//! memories            per memory: page count (u64), non-zero page count (u32),
//!                     then each page as its index (u32) and its 65536 raw bytes
//! module              if embedded: length (u32) and the original module bytes
//! checksum   32 bytes BLAKE3 of everything before it
//! ```
//!
//! All integers are little-endian; byte strings and lists are prefixed with
//! their length as `u32`. Page contents are stored raw so that
//! `zstd -dc FILE | grep` finds data from the guest's memory.
//!
//! The same encoding without page contents (and without zstd) is the
//! per-version state blob of the store, which keeps pages apart.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::codec::{Reader, Writer};
use super::{
    Coroutine, CoroutineState, GlobalValue, HostSide, MemoryImage, PAGE_SIZE, Page, Snapshot,
    Stdin, TableImage,
};

/// The first bytes of an uncompressed snapshot file.
pub const MAGIC: [u8; 8] = *b"WASNAPSF";

/// The version of the format this build writes, and the newest it reads.
/// Version 2 added the standard input to the host state; a version 1 file
/// reads as a workflow whose standard input is empty.
pub const FORMAT_VERSION: u32 = 2;

/// zstd level for files. Level 1 compresses this kind of data (memory
/// pages) four to five times faster than level 3, for files 15-20% larger
/// (docs/PERFORMANCE.md): writing a snapshot costs about what copying and
/// compressing its non-zero pages must cost.
const FILE_ZSTD_LEVEL: i32 = 1;

const FLAG_MODULE: u32 = 1;
const FLAG_NO_PAGES: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_MODULE | FLAG_NO_PAGES;

/// The first bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Largest memory in Wasm pages: 2^64 bytes (memory64) / 64 KiB.
const MAX_PAGE_COUNT: u64 = 1 << 48;

/// Encodes `snapshot`, and the original module bytes if given, as a
/// self-contained snapshot file.
pub fn encode(snapshot: &Snapshot, module: Option<&[u8]>) -> Result<Vec<u8>> {
    let raw = encode_raw(snapshot, module, true, FORMAT_VERSION)?;
    // One-shot compression of the whole buffer: zstd's streaming encoder
    // compresses a large input that was written to it in one piece against
    // an "external dictionary" of its own earlier blocks, which made it
    // several times slower (docs/PERFORMANCE.md). The output is still one
    // zstd frame with its checksum.
    let mut compressor =
        zstd::bulk::Compressor::new(FILE_ZSTD_LEVEL).context("cannot start zstd compression")?;
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .context("cannot enable the zstd checksum")?;
    compressor
        .compress(&raw)
        .context("cannot compress the snapshot")
}

/// The most a snapshot file may inflate to unless the caller chooses
/// otherwise ([`decode_limited`]): a memory of 4 GiB, the largest a 32-bit
/// memory can be, and 1 GiB for everything else.
pub const DEFAULT_MAX_UNCOMPRESSED: u64 = 5 << 30;

/// Decodes a snapshot file into its snapshot and, if the file embeds one,
/// the original module bytes. Everything is checked before it returns: the
/// zstd checksum, the magic, the format version, the BLAKE3 checksum, the
/// structure, and that an embedded module matches the snapshot's hash.
/// The file may inflate to [`DEFAULT_MAX_UNCOMPRESSED`] bytes at most.
///
/// What it does not check is whether the snapshot is a state of its
/// module: [`crate::Engine::restore_with`] does, before anything runs.
pub fn decode(bytes: &[u8]) -> Result<(Snapshot, Option<Vec<u8>>)> {
    decode_limited(bytes, DEFAULT_MAX_UNCOMPRESSED)
}

/// Like [`decode`], for a file that may inflate to `max_uncompressed`
/// bytes at most. The bound holds before and while the file inflates: the
/// sizes its frames declare are checked first, the magic and version as
/// soon as their bytes are out, and inflating stops at the declared size
/// (or at the bound, for frames that declare none). So a small file that
/// inflates to gigabytes of anything costs neither the time nor the
/// memory.
pub fn decode_limited(bytes: &[u8], max_uncompressed: u64) -> Result<(Snapshot, Option<Vec<u8>>)> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        bail!("not a wasnap snapshot file (it is not zstd-compressed)");
    }
    let raw = decompress(bytes, max_uncompressed)?;
    let (snapshot, module) = decode_raw(&raw, true).map_err(|e| {
        if e.is::<NotCorruption>() {
            e
        } else {
            anyhow::anyhow!("snapshot file is corrupt: {e:#}")
        }
    })?;
    if let Some(module) = &module
        && *blake3::hash(module).as_bytes() != snapshot.module_hash
    {
        bail!("snapshot file is corrupt: the embedded module does not match its hash");
    }
    Ok((snapshot, module))
}

/// Encodes everything but the page contents and the yielded value,
/// uncompressed: the per-version state blob of the store, which keeps
/// pages and the value apart. Memories keep their sizes, not their pages.
pub(crate) fn encode_state(snapshot: &Snapshot) -> Result<Vec<u8>> {
    encode_raw(snapshot, None, false, FORMAT_VERSION)
}

/// Decodes a blob written by [`encode_state`]; memories come back with
/// their sizes and no pages, and the yielded value empty (blobs written
/// before it was left out have it).
pub(crate) fn decode_state(bytes: &[u8]) -> Result<Snapshot> {
    Ok(decode_raw(bytes, false)?.0)
}

/// Errors that are not corruption (a newer format, a wrong kind of blob)
/// and must reach the user as they are.
#[derive(Debug)]
struct NotCorruption(String);

impl std::fmt::Display for NotCorruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotCorruption {}

/// Bytes of the magic and the format version, checked before the rest of
/// a file is inflated.
const HEADER_BYTES: usize = MAGIC.len() + 4;

fn decompress(bytes: &[u8], limit: u64) -> Result<Vec<u8>> {
    let declared = declared_size(bytes);
    if let Some(size) = declared
        && size > limit
    {
        bail!(
            "snapshot file declares {size} bytes uncompressed, more than the {limit} it may have"
        );
    }
    let mut decoder = zstd::stream::read::Decoder::new(bytes)
        .context("snapshot file cannot be read: zstd cannot start")?;
    let mut raw = Vec::new();
    inflate(&mut decoder, HEADER_BYTES as u64, &mut raw)?;
    check_header(&raw)?;
    // A file that is one frame declaring its size, as `encode` writes it,
    // is decompressed in one call into a buffer of that size: the streaming
    // decoder grows its output by doubling and copies it at each step. The
    // declared size is believed only up to a bound on what these bytes can
    // expand to (a corrupt header must not reserve gigabytes); beyond it,
    // or when the one-shot call fails, the streaming path decides and
    // reports. Either path checks the frame's checksum.
    let one_frame = zstd::zstd_safe::find_frame_compressed_size(bytes) == Ok(bytes.len());
    if one_frame
        && let Some(size) = declared
        && size <= (bytes.len() as u64).saturating_mul(1024) + (64 << 20)
        && let Ok(raw) = zstd::bulk::decompress(bytes, size as usize)
        && raw.len() as u64 == size
    {
        return Ok(raw);
    }
    let bound = declared.unwrap_or(limit);
    inflate(&mut decoder, bound + 1, &mut raw)?;
    if raw.len() as u64 > bound {
        match declared {
            Some(size) => {
                bail!("snapshot file is corrupt: it inflates beyond the {size} bytes it declares")
            }
            None => bail!("snapshot file inflates beyond the {limit} bytes it may have"),
        }
    }
    Ok(raw)
}

/// The uncompressed size the file's frames declare, when every one does.
fn declared_size(mut bytes: &[u8]) -> Option<u64> {
    let mut total = 0u64;
    while !bytes.is_empty() {
        let frame = zstd::zstd_safe::find_frame_compressed_size(bytes).ok()?;
        let size = zstd::zstd_safe::get_frame_content_size(&bytes[..frame]).ok()??;
        total = total.checked_add(size)?;
        bytes = &bytes[frame..];
    }
    Some(total)
}

/// Inflates until `raw` holds `up_to` bytes or the stream ends.
fn inflate(decoder: &mut impl Read, up_to: u64, raw: &mut Vec<u8>) -> Result<()> {
    let wanted = up_to.saturating_sub(raw.len() as u64);
    match decoder.take(wanted).read_to_end(raw) {
        Ok(_) => Ok(()),
        Err(e) => bail!("snapshot file is corrupt or truncated (zstd: {e})"),
    }
}

/// The magic and the format version, from the first bytes of a file.
fn check_header(raw: &[u8]) -> Result<()> {
    if raw.len() < MAGIC.len() || raw[..MAGIC.len()] != MAGIC {
        return Err(NotCorruption("not a wasnap snapshot (bad magic)".into()).into());
    }
    let version = match raw.get(MAGIC.len()..HEADER_BYTES) {
        Some(bytes) => u32::from_le_bytes(bytes.try_into().expect("4 bytes")),
        None => bail!("snapshot file is corrupt: the header is truncated"),
    };
    if version > FORMAT_VERSION {
        return Err(NotCorruption(format!(
            "snapshot format version {version} is newer than this wasnap supports ({FORMAT_VERSION})"
        ))
        .into());
    }
    Ok(())
}

/// The uncompressed form in format `version` (older versions only for
/// the tests that prove they are still read).
fn encode_raw(
    snapshot: &Snapshot,
    module: Option<&[u8]>,
    with_pages: bool,
    version: u32,
) -> Result<Vec<u8>> {
    // Reserved once: growing by doubling would copy the pages again.
    let pages: usize = snapshot.memories.iter().map(|m| m.pages.len()).sum();
    let page_bytes = if with_pages {
        pages * (4 + PAGE_SIZE)
    } else {
        0
    };
    let mut w = Writer {
        buf: Vec::with_capacity(page_bytes + module.map_or(0, <[u8]>::len) + 4096),
    };
    w.raw(&MAGIC);
    w.u32(version);
    let mut flags = if with_pages { 0 } else { FLAG_NO_PAGES };
    if module.is_some() {
        flags |= FLAG_MODULE;
    }
    w.u32(flags);
    write_state(&mut w, snapshot, with_pages, version)?;
    write_memories(&mut w, &snapshot.memories, with_pages)?;
    if let Some(module) = module {
        w.bytes(module)?;
    }
    let sum = blake3::hash(&w.buf);
    w.raw(sum.as_bytes());
    Ok(w.buf)
}

fn decode_raw(raw: &[u8], with_pages: bool) -> Result<(Snapshot, Option<Vec<u8>>)> {
    let mut r = Reader::new(raw);
    if r.remaining() < MAGIC.len() || r.raw(MAGIC.len())? != MAGIC {
        return Err(NotCorruption("not a wasnap snapshot (bad magic)".into()).into());
    }
    let version = r.u32().context("the header is truncated")?;
    if version > FORMAT_VERSION {
        return Err(NotCorruption(format!(
            "snapshot format version {version} is newer than this wasnap supports ({FORMAT_VERSION})"
        ))
        .into());
    }
    if version == 0 {
        bail!("format version 0 does not exist");
    }
    verify_checksum(raw)?;
    let body = &raw[..raw.len() - 32];
    let mut r = Reader::new(&body[MAGIC.len() + 4..]);
    let flags = r.u32()?;
    check_flags(flags, with_pages)?;
    let mut snapshot = read_state(&mut r, version)?;
    snapshot.memories = read_memories(&mut r)?;
    let module = if flags & FLAG_MODULE != 0 {
        Some(r.bytes().context("the embedded module")?)
    } else {
        None
    };
    r.finish()?;
    Ok((snapshot, module))
}

fn verify_checksum(raw: &[u8]) -> Result<()> {
    if raw.len() < MAGIC.len() + 8 + 32 {
        bail!("it is truncated ({} bytes)", raw.len());
    }
    let (body, sum) = raw.split_at(raw.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        bail!("checksum mismatch");
    }
    Ok(())
}

fn check_flags(flags: u32, with_pages: bool) -> Result<()> {
    if flags & !KNOWN_FLAGS != 0 {
        bail!("unknown flags {flags:#x}");
    }
    if (flags & FLAG_NO_PAGES == 0) != with_pages {
        let what = if with_pages {
            "a snapshot file"
        } else {
            "a stored state"
        };
        return Err(NotCorruption(format!("this is not {what}")).into());
    }
    Ok(())
}

/// The state without memories; without the yielded value unless
/// `with_value`; in format `version`.
fn write_state(w: &mut Writer, s: &Snapshot, with_value: bool, version: u32) -> Result<()> {
    w.raw(&s.module_hash);
    w.u32(s.instrumenter_version);
    w.len(s.globals.len())?;
    s.globals.iter().for_each(|g| write_global(w, g));
    w.len(s.tables.len())?;
    for table in &s.tables {
        write_table(w, table)?;
    }
    w.len(s.coroutines.len())?;
    for c in &s.coroutines {
        write_coroutine(w, c)?;
    }
    write_host(w, &s.host, with_value, version)
}

fn read_state(r: &mut Reader, version: u32) -> Result<Snapshot> {
    let module_hash = r.hash()?;
    let instrumenter_version = r.u32()?;
    let globals = (0..r.count(1)?)
        .map(|i| read_global(r).with_context(|| format!("global {i}")))
        .collect::<Result<_>>()?;
    let tables = (0..r.count(4)?)
        .map(|i| read_table(r).with_context(|| format!("table {i}")))
        .collect::<Result<_>>()?;
    let coroutines = read_coroutines(r)?;
    let host = read_host(r, version).context("host state")?;
    Ok(Snapshot {
        module_hash,
        instrumenter_version,
        memories: Vec::new(),
        globals,
        tables,
        coroutines,
        host,
    })
}

fn write_global(w: &mut Writer, g: &GlobalValue) {
    match *g {
        GlobalValue::I32(v) => {
            w.u8(0);
            w.u32(v);
        }
        GlobalValue::I64(v) => {
            w.u8(1);
            w.u64(v);
        }
        GlobalValue::F32(v) => {
            w.u8(2);
            w.u32(v);
        }
        GlobalValue::F64(v) => {
            w.u8(3);
            w.u64(v);
        }
        GlobalValue::V128(v) => {
            w.u8(4);
            w.u128(v);
        }
        GlobalValue::NullRef => w.u8(5),
        GlobalValue::FuncRef(f) => {
            w.u8(6);
            w.u32(f);
        }
    }
}

fn read_global(r: &mut Reader) -> Result<GlobalValue> {
    Ok(match r.u8()? {
        0 => GlobalValue::I32(r.u32()?),
        1 => GlobalValue::I64(r.u64()?),
        2 => GlobalValue::F32(r.u32()?),
        3 => GlobalValue::F64(r.u64()?),
        4 => GlobalValue::V128(r.u128()?),
        5 => GlobalValue::NullRef,
        6 => GlobalValue::FuncRef(r.u32()?),
        tag => bail!("unknown value kind {tag}"),
    })
}

fn write_table(w: &mut Writer, t: &TableImage) -> Result<()> {
    w.len(t.elements.len())?;
    for e in &t.elements {
        match e {
            None => w.u8(0),
            Some(f) => {
                w.u8(1);
                w.u32(*f);
            }
        }
    }
    Ok(())
}

fn read_table(r: &mut Reader) -> Result<TableImage> {
    let elements = (0..r.count(1)?)
        .map(|_| match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(r.u32()?)),
            tag => bail!("unknown element kind {tag}"),
        })
        .collect::<Result<_>>()?;
    Ok(TableImage { elements })
}

fn write_coroutine(w: &mut Writer, c: &Coroutine) -> Result<()> {
    w.u32(c.id);
    w.u32(c.parent);
    w.u8(match c.state {
        CoroutineState::Fresh => 0,
        CoroutineState::Suspended => 1,
        CoroutineState::Finished => 2,
    });
    w.u32(c.entry_function);
    w.u32(c.entry_argument);
    w.u32(c.stack_pointer);
    w.bytes(&c.stack)?;
    w.u32(c.resume_value);
    Ok(())
}

fn read_coroutines(r: &mut Reader) -> Result<Vec<Coroutine>> {
    let coroutines: Vec<Coroutine> = (0..r.count(25)?)
        .map(|i| read_coroutine(r).with_context(|| format!("coroutine {i}")))
        .collect::<Result<_>>()?;
    let mut ids: Vec<u32> = coroutines.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        bail!("two coroutines share an id");
    }
    Ok(coroutines)
}

fn read_coroutine(r: &mut Reader) -> Result<Coroutine> {
    let id = r.u32()?;
    let parent = r.u32()?;
    let state = match r.u8()? {
        0 => CoroutineState::Fresh,
        1 => CoroutineState::Suspended,
        2 => CoroutineState::Finished,
        tag => bail!("unknown coroutine state {tag}"),
    };
    Ok(Coroutine {
        id,
        parent,
        state,
        entry_function: r.u32()?,
        entry_argument: r.u32()?,
        stack_pointer: r.u32()?,
        stack: r.bytes()?,
        resume_value: r.u32()?,
    })
}

fn write_host(w: &mut Writer, h: &HostSide, with_value: bool, version: u32) -> Result<()> {
    w.u32(h.current);
    w.u32(h.next_coroutine_id);
    w.str(&h.suspended_in)?;
    w.bytes(if with_value { &h.yielded } else { &[] })?;
    w.bytes(&h.reply)?;
    w.strings(&h.args)?;
    w.len(h.env.len())?;
    for (k, v) in &h.env {
        w.str(k)?;
        w.str(v)?;
    }
    match &h.stdin {
        Stdin::Empty if version < 2 => {}
        Stdin::Suspending { .. } if version < 2 => {
            bail!("format version {version} cannot hold a suspending standard input")
        }
        Stdin::Empty => w.u8(STDIN_EMPTY),
        Stdin::Suspending { buffered } => {
            w.u8(STDIN_SUSPENDING);
            w.bytes(buffered)?;
        }
    }
    Ok(())
}

const STDIN_EMPTY: u8 = 0;
const STDIN_SUSPENDING: u8 = 1;

fn read_stdin(r: &mut Reader, version: u32) -> Result<Stdin> {
    if version < 2 {
        return Ok(Stdin::Empty);
    }
    Ok(match r.u8()? {
        STDIN_EMPTY => Stdin::Empty,
        STDIN_SUSPENDING => Stdin::Suspending {
            buffered: r.bytes()?,
        },
        other => bail!("unknown standard input kind {other}"),
    })
}

fn read_host(r: &mut Reader, version: u32) -> Result<HostSide> {
    let current = r.u32()?;
    let next_coroutine_id = r.u32()?;
    let suspended_in = r.str()?;
    let yielded = r.bytes()?;
    let reply = r.bytes()?;
    let args = r.strings()?;
    let env = (0..r.count(8)?)
        .map(|_| Ok((r.str()?, r.str()?)))
        .collect::<Result<_>>()?;
    let stdin = read_stdin(r, version)?;
    Ok(HostSide {
        current,
        next_coroutine_id,
        suspended_in,
        yielded,
        reply,
        args,
        env,
        stdin,
    })
}

fn write_memories(w: &mut Writer, memories: &[MemoryImage], with_pages: bool) -> Result<()> {
    w.len(memories.len())?;
    for (i, m) in memories.iter().enumerate() {
        // Without its pages, only the memory's layout is saved here.
        let checked = match with_pages {
            true => check_memory(m),
            false => check_layout(m),
        };
        checked.map_err(|e| anyhow::anyhow!("memory {i} cannot be saved: {e}"))?;
        w.u64(m.page_count);
        if with_pages {
            w.len(m.pages.len())?;
            for p in &m.pages {
                w.u32(p.index);
                w.raw(
                    p.data
                        .bytes()
                        .with_context(|| format!("page {}", p.index))?,
                );
            }
        } else {
            w.u32(0);
        }
    }
    Ok(())
}

fn read_memories(r: &mut Reader) -> Result<Vec<MemoryImage>> {
    (0..r.count(12)?)
        .map(|i| read_memory(r).with_context(|| format!("memory {i}")))
        .collect()
}

fn read_memory(r: &mut Reader) -> Result<MemoryImage> {
    let page_count = r.u64()?;
    let pages = (0..r.count(4 + PAGE_SIZE)?)
        .map(|_| {
            let index = r.u32()?;
            let data = r.raw(PAGE_SIZE)?.into();
            Ok(Page { index, data })
        })
        .collect::<Result<_>>()?;
    let memory = MemoryImage { page_count, pages };
    check_memory(&memory)?;
    Ok(memory)
}

/// The invariants of a memory image: a possible size, and whole pages
/// inside it in strictly ascending order.
pub(crate) fn check_memory(m: &MemoryImage) -> Result<()> {
    check_layout(m)?;
    m.pages.iter().try_for_each(check_page_size)
}

/// [`check_memory`] but for the pages' sizes: a possible size, and page
/// indices inside it in strictly ascending order. It reads the page list
/// only, not a page, so that it costs little per page of a large memory
/// whose pages are checked where their bytes are written (the store
/// checks the pages it stores, [`check_page_size`]).
pub(crate) fn check_layout(m: &MemoryImage) -> Result<()> {
    if m.page_count > MAX_PAGE_COUNT {
        bail!("size of {} pages is beyond any Wasm memory", m.page_count);
    }
    let mut previous: Option<u32> = None;
    for p in &m.pages {
        if u64::from(p.index) >= m.page_count {
            bail!(
                "page {} is beyond its size of {} pages",
                p.index,
                m.page_count
            );
        }
        if previous.is_some_and(|prev| prev >= p.index) {
            bail!("page {} is out of order", p.index);
        }
        previous = Some(p.index);
    }
    Ok(())
}

/// That a page holds exactly [`PAGE_SIZE`] bytes.
pub(crate) fn check_page_size(p: &Page) -> Result<()> {
    if p.data.len() != PAGE_SIZE {
        bail!(
            "page {} holds {} bytes, not {PAGE_SIZE}",
            p.index,
            p.data.len()
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use super::*;

    /// A snapshot that uses every kind of field, with recognisable bytes in
    /// two memories.
    pub(crate) fn sample() -> Snapshot {
        let mut page = vec![0u8; PAGE_SIZE];
        page[100..118].copy_from_slice(b"special-g-stack!!!");
        let mut other = vec![7u8; PAGE_SIZE];
        other[0] = 1;
        Snapshot {
            module_hash: *blake3::hash(b"module").as_bytes(),
            instrumenter_version: 3,
            memories: vec![
                MemoryImage {
                    page_count: 17,
                    pages: vec![
                        Page {
                            index: 0,
                            data: page.into(),
                        },
                        Page {
                            index: 16,
                            data: other.clone().into(),
                        },
                    ]
                    .into(),
                },
                MemoryImage {
                    page_count: 1,
                    pages: vec![Page {
                        index: 0,
                        data: other.into(),
                    }]
                    .into(),
                },
            ],
            globals: vec![
                GlobalValue::I32(1),
                GlobalValue::I64(u64::MAX),
                GlobalValue::F32(0x7fc0_0001),
                GlobalValue::F64(0x7ff8_0000_0000_0001),
                GlobalValue::V128(u128::MAX - 5),
                GlobalValue::NullRef,
                GlobalValue::FuncRef(9),
            ],
            tables: vec![TableImage {
                elements: vec![None, Some(3), Some(0)],
            }],
            coroutines: vec![
                Coroutine {
                    id: 0,
                    parent: 0,
                    state: CoroutineState::Suspended,
                    entry_function: 0,
                    entry_argument: 0,
                    stack_pointer: 65536,
                    stack: vec![1, 2, 3, 4],
                    resume_value: 0,
                },
                Coroutine {
                    id: 1,
                    parent: 0,
                    state: CoroutineState::Fresh,
                    entry_function: 2,
                    entry_argument: 42,
                    stack_pointer: 4096,
                    stack: Vec::new(),
                    resume_value: 5,
                },
            ],
            host: HostSide {
                current: 1,
                next_coroutine_id: 2,
                suspended_in: "wasnap.yield".into(),
                yielded: b"ask the boss".to_vec(),
                reply: b"true".to_vec(),
                args: vec!["wf.wasm".into(), "--fast".into()],
                env: vec![("HOME".into(), "/root".into())],
                stdin: Stdin::Suspending {
                    buffered: b"rest of a line\n".to_vec(),
                },
            },
        }
    }

    #[test]
    fn a_version_1_file_reads_with_an_empty_standard_input() {
        let mut s = sample();
        s.host.stdin = Stdin::Empty;
        let raw = encode_raw(&s, Some(b"module"), true, 1).unwrap();
        let v1 = zstd::bulk::compress(&raw, 1).unwrap();
        assert_eq!(decode(&v1).unwrap(), (s.clone(), Some(b"module".to_vec())));
        // A suspending standard input did not exist then.
        let error = encode_raw(&sample(), None, true, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "format version 1 cannot hold a suspending standard input"
        );
    }

    #[test]
    fn round_trips_with_and_without_module() {
        let s = sample();
        let bytes = encode(&s, Some(b"module")).unwrap();
        assert_eq!(
            decode(&bytes).unwrap(),
            (s.clone(), Some(b"module".to_vec()))
        );
        let bytes = encode(&s, None).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (s, None));
    }

    #[test]
    fn pages_appear_raw_once_decompressed() {
        let bytes = encode(&sample(), None).unwrap();
        let raw = zstd::stream::decode_all(&bytes[..]).unwrap();
        let needle = b"special-g-stack";
        assert!(raw.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn several_frames_are_one_stream() {
        let bytes = encode(&sample(), None).unwrap();
        let raw = zstd::stream::decode_all(&bytes[..]).unwrap();
        let (a, b) = raw.split_at(raw.len() / 3);
        let mut two = zstd::stream::encode_all(a, 1).unwrap();
        two.extend(zstd::stream::encode_all(b, 1).unwrap());
        assert_eq!(decode(&two).unwrap().0, sample());
    }

    #[test]
    fn state_blob_leaves_pages_out() {
        let s = sample();
        let blob = encode_state(&s).unwrap();
        assert!(blob.len() < PAGE_SIZE);
        let back = decode_state(&blob).unwrap();
        assert_eq!(back.memories[0].page_count, 17);
        assert!(back.memories.iter().all(|m| m.pages.is_empty()));
        assert!(back.host.yielded.is_empty());
        assert_eq!(
            back.host,
            HostSide {
                yielded: Vec::new(),
                ..s.host.clone()
            }
        );
        let file_err =
            decode_state(&encode_raw(&s, None, true, FORMAT_VERSION).unwrap()).unwrap_err();
        assert_eq!(file_err.to_string(), "this is not a stored state");
    }

    /// Rewrites the uncompressed form of a file, fixing its checksum.
    fn reseal(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut raw = zstd::stream::decode_all(bytes).unwrap();
        raw.truncate(raw.len() - 32);
        edit(&mut raw);
        let sum = blake3::hash(&raw);
        raw.extend_from_slice(sum.as_bytes());
        zstd::stream::encode_all(&raw[..], 1).unwrap()
    }

    #[test]
    fn newer_format_is_refused_by_name() {
        let bytes = encode(&sample(), None).unwrap();
        let newer = reseal(&bytes, |raw| {
            raw[8..12].copy_from_slice(&7u32.to_le_bytes())
        });
        assert_eq!(
            decode(&newer).unwrap_err().to_string(),
            format!(
                "snapshot format version 7 is newer than this wasnap supports ({FORMAT_VERSION})"
            )
        );
    }

    #[test]
    fn bad_structure_is_refused_even_with_a_good_checksum() {
        let bytes = encode(&sample(), Some(b"module")).unwrap();
        let wrong_module = reseal(&bytes, |raw| {
            let n = raw.len();
            raw[n - 1] ^= 1;
        });
        let err = decode(&wrong_module).unwrap_err().to_string();
        assert!(err.contains("embedded module does not match"), "{err}");
        let trailing = reseal(&bytes, |raw| raw.push(0));
        let err = decode(&trailing).unwrap_err().to_string();
        assert!(err.contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn refuses_invalid_memories_when_encoding() {
        let mut s = sample();
        s.memories[0].pages.edit(|pages| pages.swap(0, 1));
        assert!(encode(&s, None).is_err());
        let mut s = sample();
        s.memories[1].page_count = 0;
        assert!(encode(&s, None).is_err());
        let mut s = sample();
        let short = &s.memories[0].pages[0].data.bytes().unwrap()[..PAGE_SIZE - 1];
        let short = crate::snapshot::PageData::from(short);
        s.memories[0].pages.edit(|pages| pages[0].data = short);
        assert!(encode(&s, None).is_err());
    }

    #[test]
    fn names_the_cause_of_garbage() {
        let err = decode(b"hello").unwrap_err().to_string();
        assert_eq!(
            err,
            "not a wasnap snapshot file (it is not zstd-compressed)"
        );
        let not_ours = zstd::stream::encode_all(&b"some other data entirely"[..], 1).unwrap();
        let err = decode(&not_ours).unwrap_err().to_string();
        assert_eq!(err, "not a wasnap snapshot (bad magic)");
    }

    /// zstd frames of `len` zeros after `prefix`, compressed as a stream
    /// that declares its size or not.
    fn zeros_after(prefix: &[u8], len: u64, declare_size: bool) -> Vec<u8> {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.include_contentsize(declare_size).unwrap();
        if declare_size {
            encoder.set_pledged_src_size(Some(len)).unwrap();
        }
        encoder.write_all(prefix).unwrap();
        let zeros = vec![0u8; 1 << 20];
        let mut left = len - prefix.len() as u64;
        while left > 0 {
            let n = left.min(zeros.len() as u64);
            encoder.write_all(&zeros[..n as usize]).unwrap();
            left -= n;
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn inflating_stops_at_the_magic_the_declared_size_or_the_limit() {
        // A few kilobytes that inflate to 1.5 GB of zeros: refused at the
        // magic, long before.
        let bomb = zeros_after(b"", 1_500_000_000, true);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let error = decode(&bomb).unwrap_err().to_string();
        assert_eq!(error, "not a wasnap snapshot (bad magic)");

        // With a good header, the declared size is checked before anything
        // inflates, and without one inflating stops at the limit.
        let mut header = MAGIC.to_vec();
        header.extend(FORMAT_VERSION.to_le_bytes());
        let declared = zeros_after(&header, 64 << 20, true);
        let error = decode_limited(&declared, 1 << 20).unwrap_err().to_string();
        assert_eq!(
            error,
            "snapshot file declares 67108864 bytes uncompressed, more than the 1048576 it may have"
        );
        let undeclared = zeros_after(&header, 64 << 20, false);
        let error = decode_limited(&undeclared, 1 << 20)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "snapshot file inflates beyond the 1048576 bytes it may have"
        );
        // Within the limit, the same file is read and refused for what it
        // holds.
        let error = decode_limited(&undeclared, 128 << 20)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("snapshot file is corrupt"), "{error}");
    }

    /// Every truncation and many bit flips of a valid file, and random
    /// bytes, are refused with a one-line error and never panic.
    #[test]
    fn truncations_flips_and_noise_are_refused() {
        let s = sample();
        let bytes = encode(&s, Some(b"module")).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).expect_err("a truncated file decoded");
            assert!(!err.to_string().contains('\n'));
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            match decode(&flipped) {
                // A flip in zstd's framing may be harmless (e.g. a reserved
                // header bit); what decodes must then be the original.
                Ok(back) => assert_eq!(back, (s.clone(), Some(b"module".to_vec()))),
                Err(e) => assert!(!e.to_string().contains('\n')),
            }
        }
        for len in [0usize, 1, 4, 13, 100, 4096] {
            let mut noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(decode(&noise).is_err());
            if noise.len() >= 4 {
                noise[..4].copy_from_slice(&ZSTD_MAGIC);
                assert!(decode(&noise).is_err());
            }
            let raw_noise = zstd::stream::encode_all(&noise[..], 1).unwrap();
            assert!(decode(&raw_noise).is_err());
        }
    }
}
