//! WASI preview 1 as wasmtime-wasi provides it, except that a flags
//! argument with bits WASI does not define gets an errno instead of a trap.
//!
//! wasmtime-wasi converts every flags argument with `TryFrom`, and a value
//! with an undefined bit fails the conversion before the call is made;
//! wiggle turns that failure into a trap that ends the workflow. Rights
//! are the case that matters: "all rights" (`u64::MAX`) is how some
//! programs ask `path_open` for whatever the directory allows, and rights
//! are otherwise ignored by wasmtime-wasi but for reading and writing. So
//! wasnap defines the two functions that take rights itself: undefined
//! rights bits are dropped (they name no right), any other flags argument
//! with an undefined bit gets `EINVAL`, as a host call with a bad argument
//! should, and the rest is wasmtime-wasi's own implementation.

use anyhow::Result;
use wasmtime::{AsContextMut as _, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Errno, Fdflags, Lookupflags, Oflags, Rights};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1 as _};

use super::abi::HostState;

const MODULE: &str = "wasi_snapshot_preview1";

/// Defines `path_open` and `fd_fdstat_set_rights` over wasmtime-wasi's,
/// which `linker` must already have.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(MODULE, "path_open", path_open)?;
    linker.func_wrap(MODULE, "fd_fdstat_set_rights", fd_fdstat_set_rights)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Only the rights WASI defines.
fn defined_rights(rights: i64) -> i64 {
    (rights as u64 & Rights::all().bits()) as i64
}

#[allow(clippy::too_many_arguments)]
fn path_open(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    dirflags: i32,
    path: i32,
    path_len: i32,
    oflags: i32,
    rights_base: i64,
    rights_inheriting: i64,
    fdflags: i32,
    opened: i32,
) -> wasmtime::Result<i32> {
    let defined = Lookupflags::from_bits(dirflags as u32).is_some()
        && u16::try_from(oflags).is_ok_and(|f| Oflags::from_bits(f).is_some())
        && u16::try_from(fdflags).is_ok_and(|f| Fdflags::from_bits(f).is_some());
    if !defined {
        return Ok(Errno::Inval as i32);
    }
    with_wasi(&mut caller, |wasi, memory| {
        wasmtime_wasi::runtime::in_tokio(p1::path_open(
            wasi,
            memory,
            fd,
            dirflags,
            path,
            path_len,
            oflags,
            defined_rights(rights_base),
            defined_rights(rights_inheriting),
            fdflags,
            opened,
        ))
    })
}

fn fd_fdstat_set_rights(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    rights_base: i64,
    rights_inheriting: i64,
) -> wasmtime::Result<i32> {
    with_wasi(&mut caller, |wasi, memory| {
        p1::fd_fdstat_set_rights(
            wasi,
            memory,
            fd,
            defined_rights(rights_base),
            defined_rights(rights_inheriting),
        )
    })
}

/// Calls `f` with the WASI context and the guest's memory, as wasmtime-wasi's
/// own functions are called: the memory is the export named `memory`, and
/// the context gets the store's allowance for copying guest data.
fn with_wasi(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(
        &mut wasmtime_wasi::p1::WasiP1Ctx,
        &mut wiggle::GuestMemory<'_>,
    ) -> wasmtime::Result<i32>,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("the module exports no memory named \"memory\" for WASI to use");
    };
    let fuel = caller.as_context_mut().hostcall_fuel();
    let (data, host) = memory.data_and_store_mut(caller);
    host.wasi.set_hostcall_fuel(fuel);
    f(&mut host.wasi, &mut wiggle::GuestMemory::Unshared(data))
}
