//! `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`, which aya does not wrap: one syscall for many
//! entries (≈ 0.4–0.6 µs per entry instead of 1.2–1.5 µs per single update).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

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
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Inserts or replaces `keys[i]` in one syscall. `values` holds one value per key, or, for a
/// per-CPU map, `n` consecutive values per key (one per possible CPU).
pub fn update<K: Copy, V: Copy>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    if !values.len().is_multiple_of(keys.len()) || values.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "batch update: values are not a whole number per key"));
    }
    let mut attr = BatchAttr {
        map_fd: map.as_raw_fd() as u32,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count(keys.len())?,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Deletes `keys` in one syscall. Fails with `NotFound` if a key is absent.
pub fn delete<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        map_fd: map.as_raw_fd() as u32,
        keys: keys.as_ptr() as u64,
        count: count(keys.len())?,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr)
}

fn count(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "batch larger than 2^32 entries"))
}
