//! The sk_lookup link of a network namespace, through the `bpf(2)` commands aya 0.14 does not
//! wrap for it: `BPF_LINK_UPDATE` (aya's `SkLookup` has no `attach_to_link`, and its `FdLink`
//! does not lend its fd) and the link's namespace from `BPF_OBJ_GET_INFO_BY_FD` (aya's
//! `LinkInfo` gives the ids only).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_LINK_TYPE_NETNS`.
const LINK_TYPE_NETNS: u32 = 5;
/// `BPF_SK_LOOKUP`.
const ATTACH_SK_LOOKUP: u32 = 36;

/// The `obj` member of `union bpf_attr` (`BPF_OBJ_GET`).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `info` member of `union bpf_attr` (`BPF_OBJ_GET_INFO_BY_FD`).
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `struct bpf_link_info` up to its `netns` member, then zeroed room for the rest of the union
/// (the kernel copies back at most the size it knows and requires the tail it does not know to
/// be zero).
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    netns_ino: u32,
    attach_type: u32,
    _rest: [u64; 6],
}
const _: () = assert!(std::mem::size_of::<RawLinkInfo>() == 72);

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr member of the size passed; any
    // pointer it carries outlives the call (see callers).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// What the kernel says of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's id.
    pub id: u32,
    /// The program behind it.
    pub prog_id: u32,
    /// Whether it is an sk_lookup link of a network namespace.
    pub sk_lookup: bool,
    /// The inode of its network namespace; 0 once the namespace is gone (the link is defunct).
    pub netns_ino: u32,
}

/// Opens the link pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path with a NUL byte"))?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_OBJ_GET returned an impossible fd"))?;
    // SAFETY: a new fd the kernel just gave us, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel's description of the link `fd`.
pub fn info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut raw = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: &mut raw as *mut RawLinkInfo as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: raw.id,
        prog_id: raw.prog_id,
        sk_lookup: raw.type_ == LINK_TYPE_NETNS && raw.attach_type == ATTACH_SK_LOOKUP,
        netns_ino: raw.netns_ino,
    })
}

/// Replaces the program behind the link `link` with `prog`, atomically (`bpf_link_update`).
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr =
        LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}
