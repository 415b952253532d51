//! The compiled-artifact format: what [`super::Module::serialize`] writes
//! and [`super::Engine::load_with_artifact`] reads back.
//!
//! An artifact is wasmtime's serialized code preceded by the module's
//! instrumentation [`Metadata`], so that loading a cached artifact skips
//! the instrumenter as well as the compiler: for a megabyte-sized module
//! that is a quarter of a second off every `wasnap resume`.
//!
//! ```text
//! "wsnapart" | format version u32 | instrumenter version u32
//! | metadata (length-prefixed) | wasmtime's bytes
//! ```
//!
//! An artifact that does not parse, or comes from another format or
//! instrumenter version, is ignored and the module is instrumented and
//! compiled again, as with no artifact at all.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use wasmparser::ValType;

use crate::instrument::{
    CallSite, FrameLayout, INSTRUMENTER_VERSION, LocalOrigin, Metadata, SavedLocal,
};
use crate::snapshot::codec::{Reader, Writer};

const MAGIC: &[u8; 8] = b"wsnapart";
const FORMAT_VERSION: u32 = 2;

/// The artifact for `metadata` and wasmtime's serialized `code`.
pub(super) fn encode(metadata: &Metadata, code: &[u8]) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    w.raw(MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(INSTRUMENTER_VERSION);
    let mut m = Writer::default();
    write_metadata(&mut m, metadata)?;
    w.bytes(&m.buf)?;
    w.raw(code);
    Ok(w.buf)
}

/// The metadata and wasmtime's bytes of an artifact, or `None` when it is
/// not one this build can use.
pub(super) fn decode(artifact: &[u8]) -> Option<(Metadata, &[u8])> {
    let mut r = Reader::new(artifact);
    if r.raw(MAGIC.len()).ok()? != MAGIC
        || r.u32().ok()? != FORMAT_VERSION
        || r.u32().ok()? != INSTRUMENTER_VERSION
    {
        return None;
    }
    let metadata = r.bytes().ok()?;
    let mut m = Reader::new(&metadata);
    let metadata = read_metadata(&mut m).ok()?;
    m.finish().ok()?;
    let code = r.raw(r.remaining()).ok()?;
    Some((metadata, code))
}

fn write_metadata(w: &mut Writer, m: &Metadata) -> Result<()> {
    w.u32(m.memory_count);
    w.u32(m.global_count);
    w.u32(m.table_count);
    w.u8(m.binaryen as u8);
    w.u8(m.writes_tables as u8);
    write_option(w, m.stack_pointer_global);
    w.len(m.frames.len())?;
    for (&function, layout) in &m.frames {
        w.u32(function);
        w.len(layout.call_sites.len())?;
        for site in &layout.call_sites {
            w.u64(site.code_offset as u64);
            write_option(w, site.callee);
            write_option(w, site.table);
            w.u32(site.size);
            w.len(site.saved.len())?;
            for value in &site.saved {
                w.u32(value.index);
                w.u8(type_code(value.ty)?);
                w.u32(value.offset);
                match value.origin {
                    LocalOrigin::Local(i) => {
                        w.u8(0);
                        w.u32(i);
                    }
                    LocalOrigin::Operand(h) => {
                        w.u8(1);
                        w.u32(h);
                    }
                }
            }
        }
    }
    w.len(m.function_names.len())?;
    for (&function, name) in &m.function_names {
        w.u32(function);
        w.str(name)?;
    }
    w.strings(&m.imported_functions)?;
    w.len(m.exported_functions.len())?;
    for (name, &function) in &m.exported_functions {
        w.str(name)?;
        w.u32(function);
    }
    match &m.table0_functions {
        None => w.u8(0),
        Some(slots) => {
            w.u8(1);
            w.len(slots.len())?;
            for (&slot, &function) in slots {
                w.u32(slot);
                w.u32(function);
            }
        }
    }
    Ok(())
}

fn read_metadata(r: &mut Reader) -> Result<Metadata> {
    let mut m = Metadata {
        memory_count: r.u32()?,
        global_count: r.u32()?,
        table_count: r.u32()?,
        binaryen: r.u8()? != 0,
        writes_tables: r.u8()? != 0,
        stack_pointer_global: read_option(r)?,
        ..Metadata::default()
    };
    for _ in 0..r.count(8)? {
        let function = r.u32()?;
        let mut call_sites = Vec::new();
        for _ in 0..r.count(18)? {
            let code_offset = r.u64()? as usize;
            let callee = read_option(r)?;
            let table = read_option(r)?;
            let size = r.u32()?;
            let mut saved = Vec::new();
            for _ in 0..r.count(14)? {
                let index = r.u32()?;
                let ty = type_of(r.u8()?)?;
                let offset = r.u32()?;
                let origin = match r.u8()? {
                    0 => LocalOrigin::Local(r.u32()?),
                    1 => LocalOrigin::Operand(r.u32()?),
                    other => bail!("unknown local origin {other}"),
                };
                saved.push(SavedLocal {
                    index,
                    ty,
                    offset,
                    origin,
                });
            }
            call_sites.push(CallSite {
                code_offset,
                callee,
                table,
                size,
                saved,
            });
        }
        m.frames.insert(function, FrameLayout { call_sites });
    }
    let mut names = BTreeMap::new();
    for _ in 0..r.count(8)? {
        let function = r.u32()?;
        names.insert(function, r.str()?);
    }
    m.function_names = names;
    m.imported_functions = r.strings()?;
    for _ in 0..r.count(8)? {
        let name = r.str()?;
        m.exported_functions.insert(name, r.u32()?);
    }
    m.table0_functions = match r.u8()? {
        0 => None,
        _ => Some(
            (0..r.count(8)?)
                .map(|_| Ok((r.u32()?, r.u32()?)))
                .collect::<Result<_>>()?,
        ),
    };
    Ok(m)
}

fn write_option(w: &mut Writer, value: Option<u32>) {
    match value {
        Some(v) => {
            w.u8(1);
            w.u32(v);
        }
        None => w.u8(0),
    }
}

fn read_option(r: &mut Reader) -> Result<Option<u32>> {
    Ok(match r.u8()? {
        0 => None,
        _ => Some(r.u32()?),
    })
}

/// Saved values are never references: the instrumenter refuses those.
fn type_code(ty: ValType) -> Result<u8> {
    Ok(match ty {
        ValType::I32 => 0,
        ValType::I64 => 1,
        ValType::F32 => 2,
        ValType::F64 => 3,
        ValType::V128 => 4,
        ValType::Ref(_) => bail!("a saved value of reference type"),
    })
}

fn type_of(code: u8) -> Result<ValType> {
    Ok(match code {
        0 => ValType::I32,
        1 => ValType::I64,
        2 => ValType::F32,
        3 => ValType::F64,
        4 => ValType::V128,
        other => bail!("unknown value type {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument::{Options, instrument};

    #[test]
    fn metadata_round_trips_through_an_artifact() {
        let wasm = wat::parse_str(
            r#"(module
                 (import "wasnap" "yield" (func $yield (param i32 i32) (result i32)))
                 (memory 1)
                 (global $sp (mut i32) (i32.const 1024))
                 (table 4 funcref)
                 (elem (i32.const 1) $step $run)
                 (elem (i32.const 2) funcref (ref.null func))
                 (func $step (param i64 f64) (result i32)
                   (call $yield (i32.const 0) (i32.wrap_i64 (local.get 0))))
                 (func $run (export "run")
                   (drop (i32.add (i32.const 7) (call $step (i64.const 3) (f64.const 1.5))))))"#,
        )
        .unwrap();
        let metadata = instrument(&wasm, &Options::default()).unwrap().metadata;
        assert!(!metadata.frames.is_empty());
        assert_eq!(metadata.imported_functions, ["wasnap.yield"]);
        assert_eq!(metadata.exported_functions.get("run"), Some(&2));
        // The second segment empties slot 2 again.
        assert_eq!(metadata.table0_functions, Some(BTreeMap::from([(1, 1)])));
        let artifact = encode(&metadata, b"code").unwrap();
        let (decoded, code) = decode(&artifact).unwrap();
        assert_eq!(code, b"code");
        assert_eq!(format!("{decoded:?}"), format!("{metadata:?}"));
    }

    #[test]
    fn table0_is_unknown_when_a_segment_offset_is_computed() {
        let wasm = wat::parse_str(
            r#"(module
                 (global $base i32 (i32.const 1))
                 (table 4 funcref)
                 (elem (global.get $base) $run)
                 (func $run (export "run")))"#,
        )
        .unwrap();
        let metadata = instrument(&wasm, &Options::default()).unwrap().metadata;
        assert_eq!(metadata.table0_functions, None);
    }

    #[test]
    fn other_versions_and_garbage_are_ignored() {
        let artifact = encode(&Metadata::default(), b"code").unwrap();
        let mut other_instrumenter = artifact.clone();
        other_instrumenter[12] ^= 1;
        assert!(decode(&other_instrumenter).is_none());
        assert!(decode(&artifact[..10]).is_none());
        assert!(decode(b"not an artifact at all").is_none());
        assert!(decode(&artifact).is_some());
    }
}
